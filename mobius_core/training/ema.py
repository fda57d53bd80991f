"""Exponential moving average of the model weights (optional, ``train.ema_decay``).

The average is what a release ships when a checkpoint has one: it is smoother than the
last step's weights, which matters most for short runs with noisy small batches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class ModelEma:
    """Shadow copy of ``model.state_dict()``; floating tensors move toward the model with
    ``decay`` (ramped up as ``(1 + n) / (10 + n)`` over the first updates, so the average
    does not drag the random initialisation along), others are copied.

    skip_prefix: keys not averaged (and not stored), e.g. a frozen text encoder's.
    """

    def __init__(self, model: nn.Module, decay: float, skip_prefix: str | None = None) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), e.g. 0.999; got {decay}")
        self.decay = decay
        self.skip_prefix = skip_prefix
        self.updates = 0
        self.shadow: dict[str, Tensor] = {
            k: v.detach().clone() for k, v in self._tracked(model).items()
        }

    def _tracked(self, model: nn.Module) -> dict[str, Tensor]:
        state = model.state_dict()
        if self.skip_prefix:
            return {k: v for k, v in state.items() if not k.startswith(self.skip_prefix)}
        return dict(state)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step toward ``model``'s current weights."""
        self.updates += 1
        d = self.current_decay()
        for key, value in self._tracked(model).items():
            shadow = self.shadow[key]
            if shadow.is_floating_point():
                shadow.mul_(d).add_(value.detach().to(shadow.dtype), alpha=1.0 - d)
            else:
                shadow.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": self.shadow, "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state lacks {sorted(missing)[:3]}; it is from another model")
        self.shadow = {  # on the device the model trains on (checkpoints load on the CPU)
            k: state["shadow"][k].to(self.shadow[k].device).clone() for k in self.shadow
        }
        self.updates = int(state["updates"])


def inference_weights(state: dict[str, Any], use_ema: bool = True) -> dict[str, Tensor]:
    """The weights to run from a checkpoint: the EMA average where there is one (and
    ``use_ema``), completed by the raw weights for keys it does not track."""
    weights = dict(state["model"])
    ema = state.get("ema") if use_ema else None
    if isinstance(ema, dict):  # a training checkpoint's EMA state (a release has averaged)
        weights.update(ema["shadow"])
    return weights
