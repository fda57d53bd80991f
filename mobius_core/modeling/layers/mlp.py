"""Small feed-forward building blocks."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (DETR's box/mask MLP)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., in_dim] -> [..., out_dim]."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class FFN(nn.Module):
    """Transformer feed-forward block: Linear -> ReLU -> dropout -> Linear."""

    def __init__(self, dim: int, ffn_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., C] -> [..., C]."""
        return self.linear2(self.dropout(F.relu(self.linear1(x))))


class TokenGroupNorm(nn.GroupNorm):
    """GroupNorm over the channel axis of a token sequence [B,S,C] (Eq. 1 normalisation)."""

    def forward(self, x: Tensor) -> Tensor:
        # [B,S,C] -> [B,C,S] -> norm -> [B,S,C]
        return super().forward(x.transpose(1, 2)).transpose(1, 2)
