"""Checkpoints: written atomically with a SHA-256 of their content, loaded with
``torch.load(weights_only=True)`` and checked against it.

The hash (``content_sha256`` in the saved dict) covers every tensor's dtype, shape and
bytes and every other value, so a file damaged after it was written (a bad disk, copy or
download) is refused instead of loading wrong weights. A file without one (written before
checkpoints carried it) loads with one warning; ``python -m mobius_core.training.checkpoint
FILE...`` adds it, keeping every tensor bit for bit.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_bytes

log = logging.getLogger(__name__)

HASH_KEY = "content_sha256"
_warned_unhashed: set[str] = set()  # files already warned about, once each


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or does not fit the model."""


def content_sha256(state: dict[str, Any]) -> str:
    """SHA-256 of ``state`` without its own ``content_sha256``: each tensor's dtype, shape
    and bytes and each other value's type and repr, in order, keys included."""
    return _digest({k: v for k, v in state.items() if k != HASH_KEY})


def _digest(value: Any) -> str:
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"tensor {flat.dtype} {tuple(value.shape)};".encode())
        if flat.numel():
            digest.update(flat.view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)};".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__} {len(value)};".encode())
        for item in value:
            _feed(digest, item)
    else:
        text = repr(value)
        digest.update(f"{type(value).__name__} {len(text)} {text};".encode())


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` and its content hash to a temporary file beside ``path``, then
    rename: never half-written. ``state`` itself is not changed."""
    state = {**state, HASH_KEY: content_sha256(state)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def _read(path: Path) -> tuple[dict[str, Any], str | None]:
    """The state in ``path`` and the content hash it records (None: none), checked."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes): it was truncated, e.g. by an interrupted "
            "copy or download or a full disk; copy it again, use an earlier checkpoint or retrain"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message suggests loading it without weights_only, which would run what
        # the file holds: never repeated here, nor chained (from None)
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found:
            raise CheckpointError(
                f"checkpoint {path} holds code or Python objects other than tensors and plain "
                f"values (it calls or builds {found.group(1)}): it is refused, since loading it "
                "could run that code. A MOBIUS checkpoint holds only tensors and plain values: "
                "use one written by `mobius train` or `mobius release`"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a MOBIUS checkpoint: its pickled data does "
            "not read as tensors and plain values; copy it again, use an earlier checkpoint "
            "or retrain"
        ) from None
    except Exception as exc:
        detail = str(exc) or type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated, or not a MOBIUS checkpoint ({detail}); "
            "copy it again, use an earlier checkpoint or retrain"
        ) from exc
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path} has no 'model' state; not a MOBIUS checkpoint")
    recorded = state.pop(HASH_KEY, None)
    if recorded is not None and recorded != content_sha256(state):
        fix = "copy it again, use an earlier checkpoint or retrain"
        if path.resolve().parent == WEIGHTS_DIR:
            fix = "reinstall the package (or restore the file from its git repository)"
        raise CheckpointError(
            f"checkpoint {path} is damaged: its content does not match the SHA-256 recorded "
            f"when it was saved, so the file changed after it was written (a bad disk, copy or "
            f"download); {fix}"
        )
    return state, recorded


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (tensors and plain Python values only) and check its content
    hash; a file without one loads with one warning (per file and process)."""
    path = Path(path)
    state, recorded = _read(path)
    if recorded is None and str(path.resolve()) not in _warned_unhashed:
        _warned_unhashed.add(str(path.resolve()))
        log.warning(
            "checkpoint %s has no content hash (it was written before MOBIUS checkpoints "
            "carried one), so damage to it cannot be detected; "
            "`python -m mobius_core.training.checkpoint %s` adds one",
            path,
            path,
        )
    return state


def add_content_hash(path: str | Path) -> bool:
    """Write the checkpoint ``path`` again (atomically) with a content hash, every tensor
    and value unchanged, which it then checks by reading the file back; False if it had a
    (valid) hash already."""
    path = Path(path)
    state, recorded = _read(path)
    if recorded is not None:
        return False
    save_checkpoint(path, state)
    _, recorded = _read(path)  # checks what the file holds against the hash recorded in it
    if recorded != content_sha256(state):  # so the file holds exactly ``state``
        raise CheckpointError(f"{path} changed when written again with a content hash")
    return True


def same_content(a: Any, b: Any) -> bool:
    """Whether two states hold the same values, tensors bit for bit (dtype, shape, bytes):
    the walk of the content hash, over each."""
    return _digest(a) == _digest(b)


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
        # whether "model" holds the EMA average (the average itself is not kept beside it)
        "ema_averaged": bool(ema and state.get("ema")),
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


def main(argv: list[str] | None = None) -> int:
    """``python -m mobius_core.training.checkpoint FILE...``: add a content hash to each."""
    files = sys.argv[1:] if argv is None else argv
    if not files:
        print("usage: python -m mobius_core.training.checkpoint CHECKPOINT...", file=sys.stderr)
        return 2
    for name in files:
        try:
            added = add_content_hash(name)
        except CheckpointError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{name}: {'content hash added' if added else 'has a valid content hash already'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
