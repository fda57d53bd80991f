"""RT-DETR's hybrid encoder as a GLEE pixel decoder baseline.

AIFI: a standard transformer encoder layer on S5 only, preceded by GLEE's text fusion on
the S5 tokens; CCFM: a top-down then bottom-up path of CSP-RepVGG fusion blocks over
S3..S5. Cheap in FLOPs, but the text only meets the coarsest scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...types import BackboneFeatures, PixelDecoderOutput
from ..feature_projection import InputProjection, MaskFeatures, unflatten_tokens
from ..fusion import TextImageFusion, TextTokens
from ..layers.attention import MultiheadAttention
from ..layers.mlp import FFN
from ..layers.position_encoding import sine_position_embedding


class ConvNormAct(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, act: bool = True):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.SiLU() if act else nn.Identity(),
        )


class RepVggBlock(nn.Module):
    """3x3 and 1x1 conv branches summed, then SiLU (training-time RepVGG form)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv3 = ConvNormAct(dim, dim, 3, act=False)
        self.conv1 = ConvNormAct(dim, dim, 1, act=False)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv3(x) + self.conv1(x))


class CSPRepLayer(nn.Module):
    """CSP block: two 1x1 branches, one through ``num_blocks`` RepVGG blocks, summed."""

    def __init__(self, in_ch: int, out_ch: int, num_blocks: int = 3) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_ch, out_ch, 1)
        self.conv2 = ConvNormAct(in_ch, out_ch, 1)
        self.blocks = nn.Sequential(*(RepVggBlock(out_ch) for _ in range(num_blocks)))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.conv1(x)) + self.conv2(x)


class AIFILayer(nn.Module):
    """Standard post-norm transformer encoder layer (RT-DETR's intra-scale interaction)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(dim, num_heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn_dim, dropout)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        """x, pos: [B,S,C] -> [B,S,C]."""
        q = x + pos
        x = self.norm1(x + self.self_attn(q, q, x, need_weights=False)[0])
        return self.norm2(x + self.ffn(x))


class RTDETRHybridEncoder(nn.Module):
    """RT-DETR hybrid encoder (AIFI on S5 + CCFM) with GLEE's text fusion on S5."""

    def __init__(
        self,
        in_channels: tuple[int, ...],
        in_strides: tuple[int, ...],
        dim: int = 256,
        num_blocks: int = 1,
        num_heads: int = 8,
        ffn_dim: int = 1024,
        dropout: float = 0.0,
        text_fusion: bool = True,
        mask_conv: str = "full",
        csp_blocks: int = 3,
    ) -> None:
        super().__init__()
        self.input_proj = InputProjection(in_channels[1:], in_strides[1:], dim, with_s6=False)
        self.strides = self.input_proj.strides
        self.fusion = (
            TextImageFusion(dim, num_heads, dropout, update_text=False) if text_fusion else None
        )
        self.aifi = nn.ModuleList(
            AIFILayer(dim, num_heads, ffn_dim, dropout) for _ in range(num_blocks)
        )
        n = len(self.strides)
        self.lateral = nn.ModuleList(ConvNormAct(dim, dim, 1) for _ in range(n - 1))
        self.fpn = nn.ModuleList(CSPRepLayer(2 * dim, dim, csp_blocks) for _ in range(n - 1))
        self.down = nn.ModuleList(ConvNormAct(dim, dim, 3, stride=2) for _ in range(n - 1))
        self.pan = nn.ModuleList(CSPRepLayer(2 * dim, dim, csp_blocks) for _ in range(n - 1))
        self.mask_features = MaskFeatures(in_channels[0], dim, mask_conv)

    def forward(self, features: BackboneFeatures, text: TextTokens | None) -> PixelDecoderOutput:
        """features: S2..S5; text: projected tokens [B,KT,C] or None -> fused S3..S5."""
        levels = self.input_proj(features.maps[1:])  # S3, S4, S5
        s5 = levels[-1]
        shape = (s5.shape[-2], s5.shape[-1])
        pos = sine_position_embedding(s5).flatten(2).transpose(1, 2)  # [B,C,h,w] -> [B,S,C]
        x = s5.flatten(2).transpose(1, 2)  # [B,C,h,w] -> [B,S,C]
        if self.fusion is not None and text is not None:
            x, text = self.fusion(x, pos, text)
        for layer in self.aifi:
            x = layer(x, pos)
        levels = levels[:-1] + [unflatten_tokens(x, shape)]
        # CCFM top-down
        inner = [levels[-1]]
        for i in range(len(levels) - 1, 0, -1):
            high = self.lateral[len(levels) - 1 - i](inner[0])
            inner[0] = high
            low = levels[i - 1]
            up = F.interpolate(high, size=low.shape[-2:], mode="nearest")
            inner.insert(0, self.fpn[len(levels) - 1 - i](torch.cat([up, low], dim=1)))
        # CCFM bottom-up
        outs = [inner[0]]
        for i in range(len(levels) - 1):
            down = self.down[i](outs[-1])
            high = inner[i + 1]
            if down.shape[-2:] != high.shape[-2:]:
                down = F.interpolate(down, size=high.shape[-2:], mode="nearest")
            outs.append(self.pan[i](torch.cat([down, high], dim=1)))
        mask_features = self.mask_features(outs[0], features.maps[0])
        return PixelDecoderOutput(outs, self.strides, mask_features)
