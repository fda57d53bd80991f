"""Inference-time query pruning (paper Sec. 3.3, Eq. 5-8).

After decoder layer l, a query whose calibrated confidence (max over prompts of the
sigmoid of its scaled-cosine logit) is below the threshold tau(l) is dropped, but every
image always keeps at least ``min_keep`` queries (its most confident ones). The schedule's
numbers are tensors passed per call, so they can be inputs of an exported graph: a robot
can change them every frame without rebuilding anything.

A dropped query gets no more cross-attention, feed-forward, heads or mask; by default
(``context=True``) it stays, frozen as it left, among the keys and values of the later
layers' self-attention. The survivors were trained beside it (duplicate suppression between
queries happens there), and removing it from their context is what cost accuracy: on the
shipped shapes_tiny, keeping 10 queries from the first layer on lost 3.3 mask AP without the
context and 0.2 with it (benchmarks/RESULTS.md). The context costs the key and value
projections of the dropped queries, a fraction of a full query's layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

SCHEDULES = ("sigmoid", "exponential", "logarithmic", "fixed")


@dataclass
class PruneSchedule:
    """One pruning schedule.

    kind: ``sigmoid`` (Eq. 5/8), ``exponential`` (Eq. 6), ``logarithmic`` (Eq. 7), or
        ``fixed`` (keep exactly ``counts[l]`` queries after layer l; for budgets and FLOPs).
    low, high: 0-d tensors, the threshold's bounds b_low <= b_high.
    beta: 0-d tensor, steepness (beta of Eq. 5, alpha of Eq. 6-7).
    min_keep: 0-d int64 tensor, the least number of queries an image keeps.
    counts: [L] int64 tensor, only for ``fixed``.
    context: dropped queries stay as frozen self-attention keys/values of the later layers
        (default); False removes them entirely (the ablation in benchmarks/RESULTS.md).
    """

    kind: str
    low: Tensor
    high: Tensor
    beta: Tensor
    min_keep: Tensor
    counts: Tensor | None = None
    context: bool = True

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(
                f"pruning schedule {self.kind!r} is unknown; choose one of {SCHEDULES}"
            )
        if self.kind == "fixed" and self.counts is None:
            raise ValueError("a 'fixed' pruning schedule needs counts (one per decoder layer)")

    @classmethod
    def create(
        cls,
        kind: str = "sigmoid",
        low: float = 0.05,
        high: float = 0.2,
        beta: float = 1.0,
        min_keep: int = 100,
        counts: list[int] | None = None,
        context: bool = True,
    ) -> PruneSchedule:
        """Build a schedule from plain numbers (checked: 0 <= low <= high <= 1, min_keep >= 1)."""
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(
                f"pruning bounds need 0 <= low <= high <= 1, got low={low}, high={high}"
            )
        if min_keep < 1:
            raise ValueError(f"min_keep must be >= 1, got {min_keep}")
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        return cls(
            kind,
            torch.tensor(float(low)),
            torch.tensor(float(high)),
            torch.tensor(float(beta)),
            torch.tensor(int(min_keep)),
            None if counts is None else torch.tensor(counts, dtype=torch.int64),
            bool(context),
        )

    @classmethod
    def fixed(cls, counts: list[int], context: bool = True) -> PruneSchedule:
        """Keep exactly ``counts[l]`` queries (or all, if fewer) after decoder layer l."""
        return cls.create("fixed", 1.0, 1.0, 1.0, 1, counts, context)

    def to(self, device: torch.device | str) -> PruneSchedule:
        """The same schedule with its tensors on ``device`` (that of the decoder's queries)."""
        move = [t.to(device) for t in (self.low, self.high, self.beta, self.min_keep)]
        counts = None if self.counts is None else self.counts.to(device)
        return PruneSchedule(self.kind, *move, counts=counts, context=self.context)

    def thresholds(self, num_layers: int) -> Tensor:
        """tau(l) for l = 0..L-1: [L]."""
        return layer_thresholds(self.kind, self.low, self.high, self.beta, num_layers)

    def keep_floor(self, layer: int) -> Tensor:
        """The least number of queries kept after ``layer`` (0-d int64)."""
        if self.kind == "fixed":
            assert self.counts is not None
            return self.counts[layer]
        return self.min_keep


def layer_thresholds(kind: str, low: Tensor, high: Tensor, beta: Tensor, num_layers: int) -> Tensor:
    """Threshold per decoder layer, l = 0..L-1: [L] (Eq. 5-7).

    sigmoid:     low + (high-low) / (1 + exp(-(10 beta / L) (l - L/2)))
    exponential: low + (high-low) (exp(beta l/(L-1)) - 1) / (exp(beta) - 1)
    logarithmic: low + (high-low) log(1 + beta l/(L-1)) / log(1 + beta)
    fixed:       2 (above any confidence: only the per-layer counts decide)
    """
    layers = torch.arange(num_layers, dtype=torch.float32, device=low.device)
    span = high - low
    t = layers / max(num_layers - 1, 1)
    if kind == "sigmoid":
        return low + span / (1 + torch.exp(-(10 * beta / num_layers) * (layers - num_layers / 2)))
    if kind == "exponential":
        return low + span * torch.expm1(beta * t) / torch.expm1(beta)
    if kind == "logarithmic":
        return low + span * torch.log1p(beta * t) / torch.log1p(beta)
    if kind == "fixed":
        return torch.full((num_layers,), 2.0, device=low.device)
    raise ValueError(f"pruning schedule {kind!r} is unknown; choose one of {SCHEDULES}")


def select_kept(
    confidence: Tensor,
    valid: Tensor,
    threshold: Tensor,
    min_keep: Tensor,
    with_dropped: bool = False,
):
    """Decide which queries survive one layer.

    confidence: [B,Q] in [0,1]; valid: [B,Q] bool (False = already dropped / padding);
    threshold: 0-d; min_keep: 0-d int64.
    Returns (index [B,Q'], valid [B,Q'], kept [B]): the indices of the surviving queries in
    their original order (padded with dropped ones where an image keeps fewer than Q'),
    which of those slots are real, and how many each image kept.
    A query survives if its confidence >= threshold or it is among the image's
    ``min_keep`` most confident valid queries. Q' is the largest count in the batch.
    with_dropped: also return (dropped_index [B,D], dropped_valid [B,D]), the queries valid
    before and dropped now (D = Q minus the smallest count in the batch, at least 1; padding
    slots False).
    """
    num_q = confidence.shape[1]
    conf = confidence.masked_fill(~valid, -1.0)
    ranked = conf.sort(dim=1, descending=True).values  # [B,Q]
    k = (min_keep.clamp(min=1) - 1).clamp(max=num_q - 1).to(torch.int64)
    floor_value = ranked.gather(1, k.reshape(1, 1).expand(conf.shape[0], 1))  # [B,1]
    keep = ((conf >= threshold) | (conf >= floor_value)) & valid
    kept = keep.sum(dim=1)  # [B]
    # kept queries first, each group in original order: key = keep * 2Q + (Q - index)
    order_key = keep.to(torch.int64) * (2 * num_q) + (
        num_q - torch.arange(num_q, device=conf.device)
    )
    order = order_key.argsort(dim=1, descending=True)
    num_out = kept.max()
    index = order[:, :num_out]
    new_valid = keep.gather(1, index)
    if not with_dropped:
        return index, new_valid, kept
    # at least one slot (a padding one if nothing was dropped): exported graphs cannot
    # reshape empty tensors with inferred dimensions
    dropped = order[:, kept.min().clamp(max=num_q - 1) :]
    dropped_valid = (valid & ~keep).gather(1, dropped)
    return index, new_valid, kept, dropped, dropped_valid


def gather_queries(x: Tensor, index: Tensor) -> Tensor:
    """x: [B,Q,...], index: [B,Q'] -> [B,Q',...]."""
    shape = index.shape + x.shape[2:]
    expanded = index.reshape(index.shape + (1,) * (x.dim() - 2)).expand(shape)
    return x.gather(1, expanded)
