"""Shared parts of every pixel decoder: projecting backbone maps to the hidden size
(S3..S5 by 1x1 conv, S6 from S5 by a stride-2 3x3 conv, as in DINO) and building the
per-pixel embedding map M = up(source) + S2 used by the mask head (as in MaskDINO)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _conv_gn(in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2),
        nn.GroupNorm(32, out_ch),
    )


class InputProjection(nn.Module):
    """Backbone S3..S5 (+ S6 = stride-2 conv of S5) -> hidden size with GroupNorm.

    ``in_channels`` and ``in_strides`` are those of S3, S4, S5 as read from the backbone.
    """

    def __init__(
        self,
        in_channels: tuple[int, ...],
        in_strides: tuple[int, ...],
        dim: int,
        with_s6: bool = True,
    ) -> None:
        super().__init__()
        self.proj = nn.ModuleList(_conv_gn(c, dim) for c in in_channels)
        self.s6 = _conv_gn(in_channels[-1], dim, kernel=3, stride=2) if with_s6 else None
        self.strides = tuple(in_strides) + ((in_strides[-1] * 2,) if with_s6 else ())

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        """maps: S3, S4, S5 as [B,C_i,H_i,W_i] -> [B,C,H_l,W_l] for S3..S5 (and S6)."""
        out = [proj(x) for proj, x in zip(self.proj, maps)]
        if self.s6 is not None:
            out.append(self.s6(maps[-1]))
        return out


class MaskFeatures(nn.Module):
    """M = conv3x3(up(source) + lateral(S2)): [B,C,H/4,W/4] (the paper's Sec. 3.1).

    ``conv="separable"`` makes the 3x3 conv depthwise followed by a 1x1: at stride 4 the
    full C x C x 9 conv is the largest single cost of a small model (0.94 of shapes_tiny's
    1.68 GFLOPs at 320)."""

    def __init__(self, s2_channels: int, dim: int, conv: str = "full") -> None:
        super().__init__()
        if conv not in ("full", "separable"):
            raise ValueError(f"mask conv {conv!r} is unknown; use 'full' or 'separable'")
        self.lateral = _conv_gn(s2_channels, dim)
        if conv == "full":
            self.output = nn.Sequential(_conv_gn(dim, dim, kernel=3), nn.ReLU(inplace=True))
        else:
            self.output = nn.Sequential(
                nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
                _conv_gn(dim, dim, kernel=1),
                nn.ReLU(inplace=True),
            )

    def forward(self, source: Tensor, s2: Tensor) -> Tensor:
        """source: [B,C,h,w] (e.g. B̂ as a map), s2: [B,C2,H/4,W/4] -> [B,C,H/4,W/4]."""
        lateral = self.lateral(s2)
        up = F.interpolate(source, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        return self.output(lateral + up)


def flatten_maps(maps: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
    """[B,C,H_l,W_l] per level -> tokens [B,sum(H_l*W_l),C] and the (H_l, W_l) list."""
    shapes = [(m.shape[-2], m.shape[-1]) for m in maps]
    tokens = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)  # [B,C,H,W] -> [B,HW,C]
    return tokens, shapes


def unflatten_tokens(tokens: Tensor, shape: tuple[int, int]) -> Tensor:
    """[B,HW,C] -> [B,C,H,W]."""
    b, _, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, shape[0], shape[1])


def reference_points(shapes: list[tuple[int, int]], like: Tensor) -> Tensor:
    """Normalised (x, y) centres of every token of the given levels: [sum(H_l*W_l),2]."""
    pts = []
    for h, w in shapes:
        ys = (torch.arange(h, device=like.device, dtype=like.dtype) + 0.5) / h
        xs = (torch.arange(w, device=like.device, dtype=like.dtype) + 0.5) / w
        # [H],[W] -> [H,W,2] -> [HW,2]
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)
        pts.append(grid)
    return torch.cat(pts, dim=0)
