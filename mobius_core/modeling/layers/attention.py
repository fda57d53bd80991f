"""Multi-head attention that exports with dynamic sequence lengths.

A drop-in for ``nn.MultiheadAttention(dim, heads, dropout, batch_first=True)``: the same
parameters (``in_proj_weight``, ``in_proj_bias``, ``out_proj``), so checkpoints load
either way, and the same results. Its reshapes use no Python arithmetic on sizes, so a
traced ONNX graph keeps the number of prompts, tokens and kept queries dynamic (PyTorch's
module bakes them in as constants when traced).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MultiheadAttention(nn.Module):
    """Batch-first multi-head attention (``nn.MultiheadAttention``'s parameters and maths)."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.embed_dim, self.num_heads, self.dropout = dim, num_heads, dropout
        self.head_dim = dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, None]:
        """query [B,L,C], key/value [B,S,C]; key_padding_mask [B,S] bool (True = ignore);
        attn_mask [L,S] or [B*nH,L,S] bool (True = may not attend). -> ([B,L,C], None)."""
        if need_weights:
            raise ValueError("attention weights are not returned; call with need_weights=False")
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)
        heads = (self.num_heads, self.head_dim)
        # [B,L,C] -> [B,L,nH,Dh] -> [B,nH,L,Dh]
        q = F.linear(query, wq, bq).unflatten(-1, heads).transpose(1, 2)
        k = F.linear(key, wk, bk).unflatten(-1, heads).transpose(1, 2)
        v = F.linear(value, wv, bv).unflatten(-1, heads).transpose(1, 2)
        blocked = None
        if key_padding_mask is not None:
            blocked = key_padding_mask[:, None, None, :]  # [B,S] -> [B,1,1,S]
        if attn_mask is not None:
            if attn_mask.dtype != torch.bool:
                raise ValueError("attn_mask must be bool (True = may not attend)")
            if attn_mask.dim() == 3:  # [B*nH,L,S] -> [B,nH,L,S]
                attn_mask = attn_mask.unflatten(0, (-1, self.num_heads))
            blocked = attn_mask if blocked is None else blocked | attn_mask
        bias = None
        if blocked is not None:
            bias = torch.zeros(blocked.shape, dtype=q.dtype, device=q.device)
            bias = bias.masked_fill(blocked, float("-inf"))
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        out = out.transpose(1, 2).flatten(2)  # [B,nH,L,Dh] -> [B,L,nH,Dh] -> [B,L,C]
        return self.out_proj(out), None
