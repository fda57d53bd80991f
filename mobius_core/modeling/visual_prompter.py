"""Visual prompter: point and box prompts -> prompt embeddings (GLEE-style).

A visual prompt is a box in the padded network input, normalised xyxy; a point is a box of
zero size (x0 = x1, y0 = y1). Its embedding samples the enhanced bottleneck B̂ and the
per-pixel map M on a G x G grid inside the box (all G² samples fall on the point for a point
prompt; RoI average pooling for a box), appends the box's width and height (zero for a
point, which is how the prompter tells the two apart) and projects the result with an MLP
into the space of the projected text embeddings ``z_text``. Query selection, the decoder,
pruning and the class head then treat it like one more prompt, scored per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers.mlp import MLP


def prompt_grid(boxes: Tensor, grid: int) -> Tensor:
    """boxes: [B,V,4] normalised xyxy -> sample points [B,V,G*G,2] (x, y) in [0,1].

    Cell centres of a G x G grid over each box: a zero-size box gives its point G² times."""
    steps = (torch.arange(grid, device=boxes.device, dtype=boxes.dtype) + 0.5) / grid  # [G]
    gy, gx = torch.meshgrid(steps, steps, indexing="ij")
    frac = torch.stack([gx.flatten(), gy.flatten()], dim=-1)  # [G*G,2]
    lo, hi = boxes[..., None, :2], boxes[..., None, 2:]  # [B,V,1,2]
    return lo + (hi - lo) * frac  # [B,V,G*G,2]


def sample_mean(feature: Tensor, points: Tensor) -> Tensor:
    """feature: [B,C,H,W]; points: [B,V,P,2] normalised (x, y) -> mean sample [B,V,C]."""
    grid = points * 2.0 - 1.0  # grid_sample's [-1,1] frame (align_corners=False)
    sampled = F.grid_sample(feature, grid, mode="bilinear", align_corners=False)  # [B,C,V,P]
    return sampled.mean(dim=-1).transpose(1, 2)  # [B,C,V] -> [B,V,C]


class VisualPrompter(nn.Module):
    """Point/box prompts -> embeddings [B,V,C] comparable with projected text embeddings."""

    def __init__(self, dim: int, grid: int = 4) -> None:
        super().__init__()
        self.grid = grid
        self.embed = MLP(2 * dim + 2, dim, dim, 3)

    def forward(self, bottleneck: Tensor, mask_features: Tensor, boxes: Tensor) -> Tensor:
        """bottleneck: B̂ [B,C,h,w]; mask_features: M [B,C,H/4,W/4]; boxes: [B,V,4]
        normalised xyxy (points: zero size) -> prompt embeddings [B,V,C]."""
        boxes = boxes.to(bottleneck.dtype)
        points = prompt_grid(boxes, self.grid)  # [B,V,G*G,2]
        size = boxes[..., 2:] - boxes[..., :2]  # [B,V,2]
        feats = torch.cat(
            [sample_mean(bottleneck, points), sample_mean(mask_features, points), size], dim=-1
        )  # [B,V,2C+2]
        return self.embed(feats)


def point_boxes(points: Tensor) -> Tensor:
    """points [...,2] normalised (x, y) -> zero-size boxes [...,4] xyxy (point prompts)."""
    return torch.cat([points, points], dim=-1)
