"""GLEE's pixel decoder baseline: a MaskDINO (Deformable-DETR) transformer encoder.

Deformable self-attention runs over the concatenation of all scales S3..S6, and the text
tokens are fused into the tokens of every scale in every layer (GLEE's early fusion).
This is the expensive design that the bottleneck encoder replaces.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...types import BackboneFeatures, PixelDecoderOutput
from ..feature_projection import InputProjection, MaskFeatures, flatten_maps, reference_points
from ..fusion import TextImageFusion, TextTokens
from ..layers.mlp import FFN
from ..layers.ms_deform_attn import MSDeformAttn
from ..layers.position_encoding import sine_position_embedding


class MaskDINOEncoderLayer(nn.Module):
    """Text fusion over all tokens, multi-scale deformable self-attention, FFN (post-norm)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_points: int,
        num_levels: int,
        ffn_dim: int,
        dropout: float,
        text_fusion: bool,
        update_text: bool = True,
    ) -> None:
        super().__init__()
        self.fusion = TextImageFusion(dim, num_heads, dropout, update_text) if text_fusion else None
        self.self_attn = MSDeformAttn(
            dim, n_levels=num_levels, n_heads=num_heads, n_points=num_points
        )
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn_dim, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        pos: Tensor,
        ref: Tensor,
        shapes: list[tuple[int, int]],
        text: TextTokens | None,
    ) -> tuple[Tensor, TextTokens | None]:
        """x, pos: [B,S_ms,C] all levels; ref: [B,S_ms,L,2] -> ([B,S_ms,C], text)."""
        if self.fusion is not None and text is not None:
            x, text = self.fusion(x, pos, text)
        x = self.norm1(x + self.dropout(self.self_attn(x + pos, ref, x, shapes)))
        x = self.norm2(x + self.dropout(self.ffn(x)))
        return x, text


class MaskDINOEncoder(nn.Module):
    """MaskDINO-style multi-scale encoder with GLEE text fusion at every scale."""

    def __init__(
        self,
        in_channels: tuple[int, ...],
        in_strides: tuple[int, ...],
        dim: int = 256,
        num_blocks: int = 6,
        num_heads: int = 8,
        num_points: int = 4,
        ffn_dim: int = 2048,
        dropout: float = 0.0,
        text_fusion: bool = True,
        mask_conv: str = "full",
    ) -> None:
        super().__init__()
        self.input_proj = InputProjection(in_channels[1:], in_strides[1:], dim)
        self.strides = self.input_proj.strides
        num_levels = len(self.strides)
        self.level_embed = nn.Parameter(torch.empty(num_levels, dim).normal_())
        self.layers = nn.ModuleList(
            MaskDINOEncoderLayer(
                dim,
                num_heads,
                num_points,
                num_levels,
                ffn_dim,
                dropout,
                text_fusion,
                update_text=i < num_blocks - 1,
            )
            for i in range(num_blocks)
        )
        self.mask_features = MaskFeatures(in_channels[0], dim, mask_conv)

    def forward(self, features: BackboneFeatures, text: TextTokens | None) -> PixelDecoderOutput:
        """features: S2..S5; text: projected tokens [B,KT,C] or None -> enhanced S3..S6."""
        levels = self.input_proj(features.maps[1:])
        x, shapes = flatten_maps(levels)  # [B,S_ms,C]
        pos = torch.cat(
            [
                sine_position_embedding(m).flatten(2).transpose(1, 2) + self.level_embed[i]
                for i, m in enumerate(levels)
            ],
            dim=1,
        )  # [B,C,H_l,W_l] -> [B,S_ms,C]
        ref = reference_points(shapes, x)  # [S_ms,2]
        ref = ref[None, :, None, :].expand(x.shape[0], -1, len(shapes), -1)  # -> [B,S_ms,L,2]
        for layer in self.layers:
            x, text = layer(x, pos, ref, shapes, text)
        out_levels = [
            chunk.transpose(1, 2).reshape(chunk.shape[0], -1, h, w)  # [B,HW,C] -> [B,C,H,W]
            for chunk, (h, w) in zip(x.split([h * w for h, w in shapes], dim=1), shapes)
        ]
        mask_features = self.mask_features(out_levels[0], features.maps[0])
        return PixelDecoderOutput(out_levels, self.strides, mask_features)
