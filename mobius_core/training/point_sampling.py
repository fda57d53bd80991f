"""Sampling mask logits and targets at the same points (bounded memory for mask losses)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(maps: Tensor, coords: Tensor) -> Tensor:
    """Bilinear values of ``maps`` at normalised points.

    maps: [N,H,W] (any resolution); coords: [N,P,2] (x, y) in [0,1] -> [N,P].
    """
    grid = 2 * coords[:, :, None, :] - 1  # [N,P,2] -> [N,P,1,2] in [-1,1]
    # [N,H,W] -> [N,1,H,W] -> sample -> [N,1,P,1] -> [N,P]
    out = F.grid_sample(maps[:, None].float(), grid, mode="bilinear", align_corners=False)
    return out[:, 0, :, 0]


def random_points(n: int, num_points: int, device: torch.device, generator=None) -> Tensor:
    """[n,num_points,2] uniform random (x, y) in [0,1]."""
    return torch.rand(n, num_points, 2, device=device, generator=generator)
