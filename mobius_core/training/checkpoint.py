"""Checkpoints: written atomically, loaded with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_bytes


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or does not fit the model."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to a temporary file beside ``path``, then rename: never half-written."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (tensors and plain Python values only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a MOBIUS checkpoint ({exc}); "
            "use an earlier checkpoint or retrain"
        ) from exc
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path} has no 'model' state; not a MOBIUS checkpoint")
    return state


WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
TEXT_PREFIX = "text_encoder."


def release_state(
    state: dict[str, Any], keep_text_encoder: bool = False, half: bool = False, ema: bool = True
) -> dict[str, Any]:
    """A training checkpoint reduced to what inference needs: the model weights (the EMA
    average where the checkpoint has one, unless ``ema`` is off; without the text
    encoder's, which ship with their own package, unless ``keep_text_encoder``; floating
    tensors stored as float16 with ``half``, restored to the model's dtype on load), the
    config and the prompts. No optimizer, no RNG."""
    from .ema import inference_weights

    model = {
        k: v.half() if half and v.is_floating_point() else v
        for k, v in inference_weights(state, ema).items()
        if keep_text_encoder or not k.startswith(TEXT_PREFIX)
    }
    return {
        "model": model,
        "config": state.get("config", {}),
        "prompts": state.get("prompts", []),
        "step": state.get("step", 0),
        "text_encoder_included": keep_text_encoder,
        "ema": bool(ema and state.get("ema")),
    }


VISUAL_PREFIX = "visual_prompter."


def load_model_weights(model: torch.nn.Module, state: dict[str, Any], source: str) -> None:
    """Load a checkpoint's inference weights (its EMA average where it has one) into
    ``model``; a release checkpoint may lack the text encoder."""
    from .ema import inference_weights

    try:
        result = model.load_state_dict(inference_weights(state), strict=False)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {source} does not fit this model: {str(exc)[:300]}"
        ) from exc
    missing = [k for k in result.missing_keys if not k.startswith(TEXT_PREFIX)]
    if state.get("text_encoder_included", True):
        missing = list(result.missing_keys)
    # weights from before the visual prompter existed: text prompts work, visual ones refuse
    untrained = [k for k in missing if k.startswith(VISUAL_PREFIX)]
    missing = [k for k in missing if not k.startswith(VISUAL_PREFIX)]
    if untrained and hasattr(model, "visual_prompter_trained"):
        model.visual_prompter_trained = False
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"checkpoint {source} does not fit this model: missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )


def has_visual_prompter(state: dict[str, Any]) -> bool:
    """Whether a checkpoint holds visual-prompter weights (older ones do not)."""
    return any(k.startswith(VISUAL_PREFIX) for k in state.get("model", {}))


def recorded_config(state: dict[str, Any], config_name: str):
    """The zoo config ``config_name`` with the model section ``state`` recorded when it was
    trained (e.g. under ``--set model....``); a checkpoint without one gets the zoo's."""
    from ..config import load_config

    model = (state.get("config") or {}).get("model")
    return load_config(config_name, {"model": model} if model else None)


def shipped_checkpoint(config_name: str) -> Path | None:
    """The checkpoint shipped in the package for a zoo config, if there is one."""
    path = WEIGHTS_DIR / f"{config_name}.pt"
    return path if path.is_file() else None
