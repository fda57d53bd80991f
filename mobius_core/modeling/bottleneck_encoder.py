"""The MOBIUS bottleneck encoder (paper Sec. 3.2, Eq. 1a-1e).

One feature scale B = S_i (stride 8, 16 or 32) is the representational bottleneck. Each
of the M blocks fuses the text tokens into it (bidirectional cross-attention), enhances it
with deformable self-attention on its own scale, gathers the multi-scale maps S3..S6 with
multi-scale deformable cross-attention, and applies an FFN; GroupNorm follows every step.
All attention runs at the bottleneck's token count, which is what makes it cheap.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..types import BackboneFeatures, PixelDecoderOutput
from .feature_projection import (
    InputProjection,
    MaskFeatures,
    flatten_maps,
    reference_points,
    unflatten_tokens,
)
from .fusion import TextImageFusion, TextTokens
from .layers.mlp import FFN, TokenGroupNorm
from .layers.ms_deform_attn import MSDeformAttn
from .layers.position_encoding import sine_position_embedding


class BottleneckBlock(nn.Module):
    """One block of Eq. 1: fusion (1a-1b), DeformSA (1c), MSDeformCA (1d), FFN (1e)."""

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
        self.self_attn = MSDeformAttn(dim, n_levels=1, n_heads=num_heads, n_points=num_points)
        self.self_norm = TokenGroupNorm(32, dim)
        self.cross_attn = MSDeformAttn(
            dim, n_levels=num_levels, n_heads=num_heads, n_points=num_points
        )
        self.cross_norm = TokenGroupNorm(32, dim)
        self.ffn = FFN(dim, ffn_dim, dropout)
        self.ffn_norm = TokenGroupNorm(32, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        pos: Tensor,
        shape: tuple[int, int],
        ref: Tensor,
        value: Tensor,
        value_shapes: list[tuple[int, int]],
        text: TextTokens | None,
    ) -> tuple[Tensor, TextTokens | None]:
        """x, pos: [B,S,C] bottleneck tokens; ref: [B,S,2]; value: [B,S_ms,C] levels S3..S6.

        Returns the enhanced bottleneck [B,S,C] and the updated text tokens.
        """
        if self.fusion is not None and text is not None:
            x, text = self.fusion(x, pos, text)  # Eq. 1a-1b
        num_levels = len(value_shapes)
        sa = self.self_attn(x + pos, ref[:, :, None, :], x, [shape])
        x = self.self_norm(x + self.dropout(sa))  # Eq. 1c
        ca_ref = ref[:, :, None, :].expand(-1, -1, num_levels, -1)  # [B,S,2] -> [B,S,L,2]
        ca = self.cross_attn(x + pos, ca_ref, value, value_shapes)
        x = self.cross_norm(x + self.dropout(ca))  # Eq. 1d
        x = self.ffn_norm(x + self.dropout(self.ffn(x)))  # Eq. 1e
        return x, text


class BottleneckEncoder(nn.Module):
    """MOBIUS pixel decoder: M bottleneck blocks on the stride-``bottleneck_stride`` scale.

    ``in_channels``/``in_strides`` are the backbone's S2..S5, read from the backbone.
    """

    def __init__(
        self,
        in_channels: tuple[int, ...],
        in_strides: tuple[int, ...],
        dim: int = 256,
        num_blocks: int = 6,
        num_heads: int = 8,
        num_points: int = 4,
        ffn_dim: int = 2048,
        bottleneck_stride: int = 16,
        dropout: float = 0.0,
        text_fusion: bool = True,
        mask_conv: str = "full",
    ) -> None:
        super().__init__()
        self.input_proj = InputProjection(in_channels[1:], in_strides[1:], dim)
        self.strides = self.input_proj.strides
        if bottleneck_stride not in self.strides:
            raise ValueError(
                f"bottleneck_stride={bottleneck_stride} is not a level of this backbone; "
                f"available strides: {self.strides}"
            )
        self.bottleneck_level = self.strides.index(bottleneck_stride)
        self.blocks = nn.ModuleList(
            BottleneckBlock(
                dim,
                num_heads,
                num_points,
                len(self.strides),
                ffn_dim,
                dropout,
                text_fusion,
                update_text=i < num_blocks - 1,
            )
            for i in range(num_blocks)
        )
        self.mask_features = MaskFeatures(in_channels[0], dim, mask_conv)

    def forward(self, features: BackboneFeatures, text: TextTokens | None) -> PixelDecoderOutput:
        """features: S2..S5; text: projected tokens [B,KT,C] or None -> levels with B̂."""
        levels = self.input_proj(features.maps[1:])  # S3..S6, each [B,C,H_l,W_l]
        value, value_shapes = flatten_maps(levels)  # [B,S_ms,C]
        bottleneck = levels[self.bottleneck_level]
        shape = (bottleneck.shape[-2], bottleneck.shape[-1])
        pos = sine_position_embedding(bottleneck).flatten(2).transpose(1, 2)  # [B,C,h,w]->[B,S,C]
        x = bottleneck.flatten(2).transpose(1, 2)  # [B,C,h,w] -> [B,S,C]
        ref = reference_points([shape], x)[None].expand(x.shape[0], -1, -1)  # [B,S,2]
        for block in self.blocks:
            x, text = block(x, pos, shape, ref, value, value_shapes, text)
        enhanced = unflatten_tokens(x, shape)  # [B,S,C] -> [B,C,h,w]
        out_levels = list(levels)
        out_levels[self.bottleneck_level] = enhanced
        mask_features = self.mask_features(enhanced, features.maps[0])
        return PixelDecoderOutput(out_levels, self.strides, mask_features)
