"""Sine position embeddings for feature maps and for boxes (DETR / DINO)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _dim_t(num_feats: int, temperature: float, device: torch.device) -> Tensor:
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)


def sine_position_embedding(x: Tensor, temperature: float = 10000.0) -> Tensor:
    """Normalised 2-d sine embedding of a feature map.

    x: [B,C,H,W] (only its shape, device and dtype are used) -> [B,C,H,W].
    """
    b, c, h, w = x.shape
    num_feats = c // 2
    ys = (torch.arange(h, device=x.device, dtype=torch.float32) + 0.5) / h * 2 * math.pi
    xs = (torch.arange(w, device=x.device, dtype=torch.float32) + 0.5) / w * 2 * math.pi
    dim_t = _dim_t(num_feats, temperature, x.device)
    pos_x = xs[:, None] / dim_t  # [W,F]
    pos_y = ys[:, None] / dim_t  # [H,F]
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
    # [H,F] + [W,F] -> [H,W,2F] -> [B,C,H,W]
    pos = torch.cat(
        (pos_y[:, None, :].expand(h, w, num_feats), pos_x[None, :, :].expand(h, w, num_feats)),
        dim=-1,
    )
    return pos.permute(2, 0, 1).unsqueeze(0).expand(b, -1, -1, -1).to(x.dtype)


def box_sine_embedding(boxes: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of normalised boxes, ``dim`` features per coordinate (DINO).

    boxes: [B,Q,4] cxcywh in [0,1] -> [B,Q,4*dim].
    """
    scale = 2 * math.pi
    dim_t = _dim_t(dim, temperature, boxes.device)
    pos = boxes[..., None] * scale / dim_t  # [B,Q,4,dim]
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)
    # order (y, x, w, h) as DINO does, so the first half matches the 2-d point embedding
    cx, cy, w, h = pos.unbind(dim=2)
    return torch.cat((cy, cx, w, h), dim=-1).to(boxes.dtype)
