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
