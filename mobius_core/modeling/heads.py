"""Prediction heads: language-guided classification (Eq. 3), boxes and masks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..box_ops import box_cxcywh_to_xyxy
from .layers.mlp import MLP
from .visual_prompter import prompt_grid

INVALID_LOGIT = -1e4


class TextClassifier(nn.Module):
    """Scores every query against every prompt embedding.

    ``cosine`` (MOBIUS, Eq. 3): exp(s) * cos(W q, z) + b with a learnable scale s
    (clamped at ``logit_scale_max``) -- bounded logits keep training stable.
    ``dot`` (GLEE): (W q . z) / sqrt(C) + b, unbounded; kept for the paper's ablation.
    The bias b starts at the focal-loss prior -log((1-p)/p) so that sigmoid(logit) = p.
    """

    def __init__(
        self,
        dim: int,
        kind: str = "cosine",
        logit_scale_init: float = math.log(1 / 0.07),
        logit_scale_max: float = math.log(100.0),
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        if kind not in ("cosine", "dot"):
            raise ValueError(f"classifier kind {kind!r} is unknown; choose 'cosine' or 'dot'")
        self.kind = kind
        self.proj = nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))
        self.logit_scale_max = float(logit_scale_max)
        self.bias = nn.Parameter(torch.tensor(-math.log((1 - prior_prob) / prior_prob)))

    def forward(self, queries: Tensor, text: Tensor, prompt_valid: Tensor | None = None) -> Tensor:
        """queries: [B,Q,C]; text: [K,C] pooled prompt embeddings shared by the batch, or
        [B,K,C] per image (visual prompts) -> logits [B,Q,K].

        prompt_valid: optional [K] (or [B,K]) bool; padding prompts (False) get logit -1e4
        (score 0), a value float16 engines still represent."""
        q = self.proj(queries)
        spec = "bqc,kc->bqk" if text.dim() == 2 else "bqc,bkc->bqk"
        if self.kind == "cosine":
            scale = self.logit_scale.clamp(max=self.logit_scale_max).exp()
            sim = torch.einsum(spec, F.normalize(q, dim=-1), F.normalize(text, dim=-1))
            logits = scale * sim + self.bias
        else:
            logits = torch.einsum(spec, q, text) / math.sqrt(q.shape[-1]) + self.bias
        if prompt_valid is not None:
            valid = prompt_valid if prompt_valid.dim() == 1 else prompt_valid[:, None, :]
            logits = torch.where(valid, logits, torch.full_like(logits, INVALID_LOGIT))
        return logits


class MaskHead(nn.Module):
    """mask = (MLP(q̂)) · M for every query: [B,Q,C] x [B,C,H/4,W/4] -> [B,Q,H/4,W/4]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.embed = MLP(dim, dim, dim, 3)

    def forward(self, queries: Tensor, mask_features: Tensor) -> Tensor:
        return torch.einsum("bqc,bchw->bqhw", self.embed(queries), mask_features)


class ShapeHead(nn.Module):
    """Shape evidence for classification: each query's own mask (its probabilities, detached)
    sampled on a G x G grid over its box (detached), -> MLP -> [C], added to the query before
    the classifier. A mask outlines its object long before the query embedding tells a
    hexagon from a circle; the last layer starts as a no-op (zero-initialised output)."""

    def __init__(self, dim: int, grid: int = 12) -> None:
        super().__init__()
        if grid < 2:
            raise ValueError(f"the shape head's grid needs >= 2 cells a side, got {grid}")
        self.grid = grid
        self.embed = MLP(grid * grid, dim, dim, 3)
        nn.init.zeros_(self.embed.layers[-1].weight)
        nn.init.zeros_(self.embed.layers[-1].bias)

    def forward(self, masks: Tensor, boxes: Tensor) -> Tensor:
        """masks: [B,Q,H/4,W/4] logits; boxes: [B,Q,4] normalised cxcywh in the same (padded
        input) frame -> [B,Q,C]."""
        b, q, h, w = masks.shape
        points = prompt_grid(box_cxcywh_to_xyxy(boxes.detach()), self.grid)  # [B,Q,G*G,2]
        grid = points.reshape(b * q, 1, -1, 2) * 2.0 - 1.0  # grid_sample's [-1,1] frame
        probs = masks.detach().sigmoid().reshape(b * q, 1, h, w)
        sampled = F.grid_sample(probs, grid.to(probs.dtype), mode="bilinear", align_corners=False)
        return self.embed(sampled.reshape(b, q, -1))


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
