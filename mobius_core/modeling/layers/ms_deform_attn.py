"""Multi-scale deformable attention (Deformable-DETR) in pure PyTorch.

The core samples each level with ``F.grid_sample`` (bilinear, zeros outside the map,
``align_corners=False``), so it runs on any device and exports to ONNX. It is the
reference path: any faster kernel must match it (test/modeling/test_ms_deform_attn.py).

Level sizes are Python (or symbolic) ints, never turned into tensors: building a tensor
from them would freeze dynamic H/W in the ONNX dynamo exporter.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _is_symbolic(*sizes: object) -> bool:
    """True when any size is a SymInt (torch.export / dynamo tracing with dynamic shapes)."""
    return any(isinstance(s, torch.SymInt) for s in sizes)


def ms_deform_attn_core(
    value: Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Bilinearly sample every level at the given points, weight and sum the samples.

    Args:
        value: [B,S,nH,Dh], levels concatenated finest first, each row-major,
            S = sum(H_l*W_l).
        spatial_shapes: (H_l, W_l) per level, Python ints (SymInts while exporting).
        sampling_locations: [B,Q,nH,L,P,2] normalised (x, y); 0 and 1 are the outer
            edges of the map (``align_corners=False``), points outside read zeros.
        attention_weights: [B,Q,nH,L,P], already softmaxed over L*P.

    Returns:
        [B,Q,nH*Dh].
    """
    b, _, n_heads, head_dim = value.shape
    _, q, _, n_levels, n_points, _ = sampling_locations.shape
    values = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1  # [0,1] -> [-1,1], grid_sample's convention
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        # [B,H*W,nH,Dh] -> [B,nH,Dh,H*W] -> [B*nH,Dh,H,W]
        v = values[lvl].permute(0, 2, 3, 1).reshape(b * n_heads, head_dim, h, w)
        # [B,Q,nH,P,2] -> [B,nH,Q,P,2] -> [B*nH,Q,P,2]
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(b * n_heads, q, n_points, 2)
        sampled.append(
            F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # [B*nH,Dh,Q,P]
    # [B,Q,nH,L,P] -> [B,nH,Q,L,P] -> [B*nH,1,Q,L*P]
    weights = attention_weights.transpose(1, 2).reshape(b * n_heads, 1, q, n_levels * n_points)
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # [B*nH,Dh,Q,L,P] -> [B*nH,Dh,Q,L*P]
    out = (stacked * weights).sum(-1)  # [B*nH,Dh,Q]
    # [B*nH,Dh,Q] -> [B,nH*Dh,Q] -> [B,Q,nH*Dh]
    return out.reshape(b, n_heads * head_dim, q).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module (Deformable-DETR's ``MSDeformAttn``).

    Each query samples ``n_points`` points per head and level around its reference point
    and mixes them with learned, softmaxed weights; cost is linear in the number of queries.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(
                f"d_model={d_model} must be divisible by n_heads={n_heads} (e.g. 256 and 8)"
            )
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Deformable-DETR's init: offsets start on a ring of head directions, uniform weights."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)  # [nH,2] one direction per head
        grid = grid / grid.abs().max(-1, keepdim=True).values  # onto the unit square
        # [nH,2] -> [nH,1,1,2] -> [nH,L,P,2]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid[:, :, i, :] *= i + 1  # point i lies i+1 pixels out
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())  # [nH,L,P,2] -> [nH*L*P*2]
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: list[tuple[int, int]],
        value_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Attend from each query to points around its reference on every level.

        Args:
            query: [B,Q,C].
            reference_points: [B,Q,L,2] normalised (x, y): offsets are in pixels of each
                level; or [B,Q,L,4] (cx, cy, w, h): offsets scale with the box,
                ``wh / n_points * 0.5``.
            value: [B,S,C], levels concatenated finest first, S = sum(H_l*W_l).
            spatial_shapes: (H_l, W_l) per level, Python ints (SymInts while exporting).
            value_padding_mask: [B,S] bool, True = padding (those values are zeroed), or None.

        Returns:
            [B,Q,C].
        """
        if len(spatial_shapes) != self.n_levels:
            raise ValueError(
                f"MSDeformAttn was built for n_levels={self.n_levels} but got "
                f"{len(spatial_shapes)} spatial shapes {list(spatial_shapes)}"
            )
        b, q, _ = query.shape
        s = value.shape[1]
        sizes = [x for hw in spatial_shapes for x in hw]
        if not torch.jit.is_tracing() and not _is_symbolic(s, *sizes):
            expected = sum(h * w for h, w in spatial_shapes)
            if s != expected:
                raise ValueError(
                    f"value has {s} tokens but the spatial shapes {list(spatial_shapes)} "
                    f"need sum(H*W) = {expected}"
                )
        if reference_points.shape[-1] not in (2, 4):
            raise ValueError(
                "reference_points must end in 2 (x, y) or 4 (cx, cy, w, h), "
                f"got shape {tuple(reference_points.shape)}"
            )
        v = self.value_proj(value)
        if value_padding_mask is not None:
            v = v.masked_fill(value_padding_mask[..., None], 0.0)
        head_dim = self.d_model // self.n_heads
        v = v.reshape(b, s, self.n_heads, head_dim)  # [B,S,C] -> [B,S,nH,Dh]
        # [B,Q,nH*L*P*2] -> [B,Q,nH,L,P,2]
        offsets = self.sampling_offsets(query).reshape(
            b, q, self.n_heads, self.n_levels, self.n_points, 2
        )
        # [B,Q,nH*L*P] -> [B,Q,nH,L*P]
        logits = self.attention_weights(query).reshape(
            b, q, self.n_heads, self.n_levels * self.n_points
        )
        # [B,Q,nH,L*P] -> [B,Q,nH,L,P]
        weights = logits.softmax(-1).reshape(b, q, self.n_heads, self.n_levels, self.n_points)
        locations = []
        for lvl, (h, w) in enumerate(spatial_shapes):
            off = offsets[:, :, :, lvl]  # [B,Q,nH,P,2]
            ref = reference_points[:, :, None, lvl, None, :]  # [B,Q,L,2|4] -> [B,Q,1,1,2|4]
            if reference_points.shape[-1] == 2:
                # pixel offsets of this level -> normalised: x / W_l, y / H_l
                step = torch.stack([off[..., 0] / w, off[..., 1] / h], dim=-1)  # [B,Q,nH,P,2]
                locations.append(ref + step)
            else:
                locations.append(ref[..., :2] + off / self.n_points * ref[..., 2:] * 0.5)
        sampling_locations = torch.stack(locations, dim=3)  # L x [B,Q,nH,P,2] -> [B,Q,nH,L,P,2]
        out = ms_deform_attn_core(v, spatial_shapes, sampling_locations, weights)  # [B,Q,C]
        return self.output_proj(out)
