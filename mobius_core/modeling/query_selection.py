"""Language-guided query selection (paper Sec. 3.3, Eq. 2-3).

Every memory token is scored against every prompt with the scaled cosine of Eq. 3; its
confidence is the best score over prompts (Eq. 2a); the top-K tokens become the decoder's
queries (Eq. 2c), each with a predicted box (Eq. 2b, computed for those K tokens only).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..types import QuerySelection
from .feature_projection import reference_points
from .heads import TextClassifier, inverse_sigmoid
from .layers.mlp import MLP
from .pruning import gather_queries


def anchor_boxes(shapes: list[tuple[int, int]], like: Tensor) -> Tensor:
    """Per-token anchors: cell centre, size 0.05 * 2**level (DINO). -> [S,4] cxcywh."""
    centres = reference_points(shapes, like)  # [S,2]
    sizes = torch.cat(
        [
            torch.full((h * w, 2), 0.05 * 2.0**lvl, device=like.device, dtype=like.dtype)
            for lvl, (h, w) in enumerate(shapes)
        ]
    )
    return torch.cat([centres, sizes], dim=-1)


class LanguageGuidedQuerySelection(nn.Module):
    """Pick the ``num_queries`` memory tokens most similar to any prompt."""

    def __init__(self, dim: int, num_queries: int, classifier: TextClassifier) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.enc_output = nn.Linear(dim, dim)
        self.enc_norm = nn.LayerNorm(dim)
        self.classifier = classifier
        self.box_head = MLP(dim, dim, 4, 3)

    def forward(
        self,
        memory: Tensor,
        shapes: list[tuple[int, int]],
        text: Tensor,
        extra: int = 0,
        prompt_valid: Tensor | None = None,
    ) -> QuerySelection:
        """memory: [B,S,C] tokens of the decoded levels; text: [K,C] -> QuerySelection (Q = K_top).

        Q = min(num_queries + extra, S); ``extra`` tokens (the training-only one-to-many
        queries) come after the ``num_queries`` best, which are what inference selects.
        """
        feats = self.enc_norm(self.enc_output(memory))  # [B,S,C]
        logits = self.classifier(feats, text, prompt_valid)  # [B,S,K]  (Eq. 3)
        confidence = logits.max(dim=-1).values  # [B,S]   (Eq. 2a, before the sigmoid)
        k = min(self.num_queries + extra, memory.shape[1])
        index = confidence.topk(k, dim=1).indices  # [B,Q]  (Eq. 2c)
        chosen_feats = gather_queries(feats, index)
        # Eq. 2b, only for the chosen tokens: the box head is per token, so this equals
        # predicting every token's box and gathering, at Q/S of the cost (at 320 px the
        # all-token version was about half of shapes_tiny's decoder FLOPs).
        anchors = inverse_sigmoid(anchor_boxes(shapes, memory)).expand(memory.shape[0], -1, -1)
        chosen_boxes = self.box_head(chosen_feats) + gather_queries(anchors, index)  # [B,Q,4]
        return QuerySelection(
            queries=chosen_feats.detach(),
            boxes=chosen_boxes.sigmoid().detach(),
            logits=gather_queries(logits, index),
            box_logits=chosen_boxes,
            indices=index,
        )
