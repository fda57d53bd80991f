"""Deformable transformer decoder with iterative box refinement and query pruning.

Single-scale decoding attends to the enhanced bottleneck B̂ only; multi-scale decoding
(the baselines' way) attends to every level. After each layer the shared heads predict
classes (against the prompts), boxes (refining the reference box) and, in training or
at the last layer, masks; with a pruning schedule, unconfident queries are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..types import LayerPrediction
from .heads import MaskHead, ShapeHead, TextClassifier, inverse_sigmoid
from .layers.attention import MultiheadAttention
from .layers.mlp import FFN, MLP
from .layers.ms_deform_attn import MSDeformAttn
from .layers.position_encoding import box_sine_embedding
from .pruning import PruneSchedule, gather_queries, select_kept


class DecoderLayer(nn.Module):
    """Self-attention among queries, deformable cross-attention to memory, FFN (post-norm)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_points: int,
        num_levels: int,
        ffn_dim: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(dim, num_heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = MSDeformAttn(
            dim, n_levels=num_levels, n_heads=num_heads, n_points=num_points
        )
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn_dim, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        ref_boxes: Tensor,
        memory: Tensor,
        shapes: list[tuple[int, int]],
        valid: Tensor,
        attn_mask: Tensor | None = None,
        context: PrunedContext | None = None,
    ) -> Tensor:
        """tgt, query_pos: [B,Q,C]; ref_boxes: [B,Q,4]; memory: [B,S,C]; valid: [B,Q] -> [B,Q,C].

        attn_mask: optional [B*nH,Q,Q] or [Q,Q] bool, True = may not attend (denoising groups).
        context: queries pruned earlier, appended to the self-attention keys and values.
        """
        q = tgt + query_pos
        keys, values, ignore = q, tgt, ~valid
        if context is not None:
            keys = torch.cat([q, context.keys], dim=1)
            values = torch.cat([tgt, context.values], dim=1)
            ignore = torch.cat([ignore, ~context.valid], dim=1)
        sa = self.self_attn(
            q, keys, values, key_padding_mask=ignore, attn_mask=attn_mask, need_weights=False
        )[0]
        tgt = self.norm1(tgt + self.dropout(sa))
        ref = ref_boxes[:, :, None, :].expand(-1, -1, len(shapes), -1)  # [B,Q,4] -> [B,Q,L,4]
        ca = self.cross_attn(tgt + query_pos, ref, memory, shapes)
        tgt = self.norm2(tgt + self.dropout(ca))
        return self.norm3(tgt + self.dropout(self.ffn(tgt)))


@dataclass
class PrunedContext:
    """Queries dropped by pruning, frozen as they left: self-attention inputs of later layers.

    keys: [B,D,C] content + position (the position of the box they would have refined to);
    values: [B,D,C] content; valid: [B,D] bool (False = padding)."""

    keys: Tensor
    values: Tensor
    valid: Tensor

    def extend(self, other: PrunedContext) -> PrunedContext:
        return PrunedContext(
            torch.cat([self.keys, other.keys], dim=1),
            torch.cat([self.values, other.values], dim=1),
            torch.cat([self.valid, other.valid], dim=1),
        )


@dataclass
class DecoderResult:
    """Final-layer predictions, per-layer kept counts and auxiliary predictions."""

    logits: Tensor
    boxes: Tensor
    masks: Tensor
    valid: Tensor
    kept: Tensor
    aux: list[LayerPrediction]


class TransformerDecoder(nn.Module):
    """L deformable decoder layers with shared class/box/mask heads and optional pruning."""

    def __init__(
        self,
        dim: int,
        num_layers: int,
        num_heads: int,
        num_points: int,
        num_levels: int,
        ffn_dim: int,
        classifier: TextClassifier,
        dropout: float = 0.0,
        shape_grid: int = 0,
        shape_kind: str = "grid",
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(dim, num_heads, num_points, num_levels, ffn_dim, dropout)
            for _ in range(num_layers)
        )
        self.ref_point_head = MLP(2 * dim, dim, dim, 2)
        self.norm = nn.LayerNorm(dim)
        self.classifier = classifier
        self.box_head = MLP(dim, dim, 4, 3)
        self.mask_head = MaskHead(dim)
        # the last layer classifies with its masks' shapes too (shape_grid > 0)
        self.shape_head = ShapeHead(dim, shape_grid, shape_kind) if shape_grid > 0 else None
        nn.init.zeros_(self.box_head.layers[-1].weight)
        nn.init.zeros_(self.box_head.layers[-1].bias)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(
        self,
        queries: Tensor,
        ref_boxes: Tensor,
        memory: Tensor,
        shapes: list[tuple[int, int]],
        text: Tensor,
        mask_features: Tensor,
        prune: PruneSchedule | None = None,
        with_aux: bool = False,
        attn_mask: Tensor | None = None,
        prompt_valid: Tensor | None = None,
    ) -> DecoderResult:
        """queries: [B,Q,C]; ref_boxes: [B,Q,4] cxcywh; memory: [B,S,C]; text: [K,C];
        mask_features: [B,C,H/4,W/4].

        Returns final logits [B,Q',K], boxes [B,Q',4], masks [B,Q',H/4,W/4], valid [B,Q'],
        kept [B,L] and, with ``with_aux``, the predictions of layers 0..L-2.
        Pruning needs ``attn_mask`` to be None (denoising is a training-only path).
        prompt_valid: optional [K] bool, False for padding prompts (never scored).
        """
        if prune is not None and attn_mask is not None:
            raise ValueError("query pruning cannot be combined with an attention mask")
        tgt = queries
        ref = ref_boxes
        valid = torch.ones(queries.shape[:2], dtype=torch.bool, device=queries.device)
        if prune is not None:
            prune = prune.to(queries.device)
        thresholds = prune.thresholds(self.num_layers) if prune is not None else None
        kept: list[Tensor] = []
        aux: list[LayerPrediction] = []
        context: PrunedContext | None = None
        half = tgt.shape[-1] // 2
        for i, layer in enumerate(self.layers):
            last = i == self.num_layers - 1
            query_pos = self.ref_point_head(box_sine_embedding(ref, half))  # [B,Q,4] -> [B,Q,C]
            tgt = layer(tgt, query_pos, ref, memory, shapes, valid, attn_mask, context)
            out = self.norm(tgt)
            new_ref = (self.box_head(out) + inverse_sigmoid(ref)).sigmoid()
            masks = None
            if last and self.shape_head is not None:
                masks = self.mask_head(out, mask_features)
                shaped = out + self.shape_head(masks, new_ref)
                logits = self.classifier(shaped, text, prompt_valid)
            else:
                logits = self.classifier(out, text, prompt_valid)
            if prune is not None and thresholds is not None:
                confidence = logits.sigmoid().max(dim=-1).values  # [B,Q]
                index, new_valid, count, dropped, dropped_valid = select_kept(
                    confidence, valid, thresholds[i], prune.keep_floor(i), with_dropped=True
                )
                if prune.context and not last:
                    leaving = gather_queries(tgt, dropped)
                    pos = self.ref_point_head(
                        box_sine_embedding(gather_queries(new_ref.detach(), dropped), half)
                    )
                    piece = PrunedContext(leaving + pos, leaving, dropped_valid)
                    context = piece if context is None else context.extend(piece)
                valid = new_valid
                tgt, out, new_ref, logits = (
                    gather_queries(t, index) for t in (tgt, out, new_ref, logits)
                )
                if masks is not None:
                    masks = gather_queries(masks, index)
                kept.append(count)
            else:
                kept.append(valid.sum(dim=1))
            if with_aux and not last:
                aux.append(LayerPrediction(logits, new_ref, self.mask_head(out, mask_features)))
            if last:
                if masks is None:
                    masks = self.mask_head(out, mask_features)
                return DecoderResult(logits, new_ref, masks, valid, torch.stack(kept, dim=1), aux)
            ref = new_ref.detach()
        raise RuntimeError("the decoder has no layers")  # pragma: no cover
