"""Modality fusion: bidirectional cross-attention between image tokens and text tokens.

One ``TextImageFusion`` implements Eq. 1a-1b of the paper: image tokens attend to the
text tokens (image <- text), then the text tokens attend to the updated image tokens
(text <- image) and are carried to the next block, so the two modalities refine each
other block after block. The last fusion of a stack has no reader for updated text
tokens, so it is built with ``update_text=False`` and computes none. MOBIUS applies it to
the bottleneck tokens only; the GLEE baselines apply it to the tokens of every scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .layers.attention import MultiheadAttention
from .layers.mlp import TokenGroupNorm


@dataclass
class TextTokens:
    """Projected text tokens shared by the image tokens of one batch.

    tokens: [B,KT,C] (the K prompts' T tokens flattened); mask: [B,KT] bool, True = real.
    """

    tokens: Tensor
    mask: Tensor


def flatten_text_tokens(tokens: Tensor, mask: Tensor, batch: int) -> TextTokens:
    """tokens [K,T,C], mask [K,T] -> TextTokens with a batch axis ([B,K*T,C], [B,K*T])."""
    flat = tokens.flatten(0, 1)[None].expand(batch, -1, -1)  # [K,T,C] -> [B,KT,C]
    flat_mask = mask.flatten()[None].expand(batch, -1)  # [K,T] -> [B,KT]
    return TextTokens(flat, flat_mask)


class TextImageFusion(nn.Module):
    """Bidirectional cross-attention (Eq. 1a-1b) with GroupNorm on the image side."""

    def __init__(
        self, dim: int, num_heads: int, dropout: float = 0.0, update_text: bool = True
    ) -> None:
        super().__init__()
        self.image_from_text = MultiheadAttention(dim, num_heads, dropout)
        self.image_norm = TokenGroupNorm(32, dim)
        self.text_from_image = MultiheadAttention(dim, num_heads, dropout) if update_text else None
        self.text_norm = nn.LayerNorm(dim) if update_text else None

    def forward(
        self, image: Tensor, image_pos: Tensor, text: TextTokens
    ) -> tuple[Tensor, TextTokens]:
        """image: [B,S,C], image_pos: [B,S,C], text tokens [B,KT,C] -> ([B,S,C], TextTokens)."""
        ignore = ~text.mask
        # A batch whose text has no real token attends to nothing; keep one key open so the
        # softmax stays finite (its value is a zero-padded token).
        ignore = ignore & ~(ignore.all(dim=1, keepdim=True) & _first_column(ignore))
        attended, _ = self.image_from_text(
            image + image_pos, text.tokens, text.tokens, key_padding_mask=ignore, need_weights=False
        )
        image = self.image_norm(image + attended)  # Eq. 1a
        if self.text_from_image is None or self.text_norm is None:
            return image, text
        keys = image + image_pos
        attended_text, _ = self.text_from_image(text.tokens, keys, image, need_weights=False)
        tokens = self.text_norm(text.tokens + attended_text)  # Eq. 1b: text <- image
        tokens = tokens * text.mask[..., None].to(tokens.dtype)
        return image, TextTokens(tokens, text.mask)


def _first_column(x: Tensor) -> Tensor:
    col = torch.zeros_like(x)
    col[:, 0] = True
    return col
