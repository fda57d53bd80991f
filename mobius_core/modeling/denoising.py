"""Training-only extra queries: query denoising (DN) and the one-to-many (hybrid) branch.

Both speed up convergence and both are dropped at inference (paper Sec. 4, "query
denoising and hybrid matching to accelerate convergence").

- **Denoising** (DN-DETR / DINO / MaskDINO): every ground-truth instance enters the decoder
  as an extra query whose content is its (sometimes flipped) prompt embedding and whose
  reference box is its box with noise; the decoder learns to reconstruct label, box and mask.
  The assignment is known, so there is no matching. Several groups, each a copy of all
  instances with fresh noise, are stacked.
- **Hybrid matching** (H-DETR): query selection picks ``hybrid_queries`` more tokens; they
  are matched one-to-many against the ground truth repeated ``k`` times, which gives the
  decoder many more positives per step.

Layout of the decoder's query axis in training: ``[DN groups | one-to-one | one-to-many]``.
The attention mask keeps the parts apart: one-to-one queries see only themselves (so
inference, which has only them, behaves as trained), DN groups do not see each other, and
the one-to-many queries see only themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..types import Target


@dataclass
class DenoisingQueries:
    """DN queries of one batch.

    queries: [B,D,C] content (prompt embedding of the noised label).
    boxes: [B,D,4] noised reference boxes, normalised cxcywh.
    slots: per image, the DN slot of each (group, instance) pair, [G*N_b].
    instances: per image, the instance index of each of those slots, [G*N_b].
    groups: G; group_size: slots per group (the largest instance count of the batch).
    """

    queries: Tensor
    boxes: Tensor
    slots: list[Tensor]
    instances: list[Tensor]
    groups: int
    group_size: int

    @property
    def size(self) -> int:
        return self.groups * self.group_size


def build_denoising_queries(
    targets: list[Target],
    prompt_embeddings: Tensor,
    dn_number: int,
    label_noise: float = 0.2,
    box_noise: float = 0.4,
    generator: torch.Generator | None = None,
) -> DenoisingQueries | None:
    """DN queries for ``targets`` (None when the batch has no instances or ``dn_number`` is 0).

    prompt_embeddings: [K,C] projected prompt embeddings (the classifier's text side), K >= 1.
    dn_number: about how many DN queries per image; groups = max(1, dn_number // N_max).
    label_noise: probability of replacing a label by a random prompt.
    box_noise: centre shift up to ``box_noise * wh / 2`` and size scaling by up to
        ``1 ± box_noise`` (DINO's scheme).
    """
    counts = [len(t) for t in targets]
    n_max = max(counts, default=0)
    if dn_number <= 0 or n_max == 0:
        return None
    if not 0.0 <= label_noise <= 1.0 or box_noise < 0.0:
        raise ValueError(
            f"label_noise must be in [0,1] and box_noise >= 0, got {label_noise}, {box_noise}"
        )
    groups = max(1, dn_number // n_max)
    device, dtype = prompt_embeddings.device, prompt_embeddings.dtype
    num_prompts, dim = prompt_embeddings.shape
    b = len(targets)
    size = groups * n_max
    queries = prompt_embeddings.new_zeros(b, size, dim)
    boxes = torch.tensor([0.5, 0.5, 0.1, 0.1], device=device, dtype=dtype).repeat(b, size, 1)
    slots, instances = [], []
    for i, t in enumerate(targets):
        n = counts[i]
        if n == 0:
            slots.append(torch.zeros(0, dtype=torch.long, device=device))
            instances.append(torch.zeros(0, dtype=torch.long, device=device))
            continue
        inst = torch.arange(n, device=device).repeat(groups)  # [G*n]
        slot = (
            torch.arange(groups, device=device)[:, None] * n_max + torch.arange(n, device=device)
        ).flatten()
        labels = t.labels.to(device)[inst]
        flip = torch.rand(len(inst), generator=generator).to(device) < label_noise
        random_labels = torch.randint(num_prompts, (len(inst),), generator=generator).to(device)
        labels = torch.where(flip, random_labels, labels)
        queries[i, slot] = prompt_embeddings[labels]
        boxes[i, slot] = noise_boxes(
            t.boxes.to(device=device, dtype=dtype)[inst], box_noise, generator
        )
        slots.append(slot)
        instances.append(inst)
    return DenoisingQueries(queries, boxes, slots, instances, groups, n_max)


def noise_boxes(boxes: Tensor, scale: float, generator: torch.Generator | None = None) -> Tensor:
    """boxes [N,4] cxcywh -> jittered copies: centre moves by up to ``scale * wh / 2``,
    width and height scale by a factor in [1 - scale, 1 + scale]; clamped into the image."""
    if scale == 0.0 or len(boxes) == 0:
        return boxes.clone()
    r = (torch.rand(boxes.shape, generator=generator) * 2 - 1).to(boxes)  # [-1,1]
    cxcy = boxes[:, :2] + r[:, :2] * boxes[:, 2:] * scale / 2
    wh = boxes[:, 2:] * (1 + r[:, 2:] * scale)
    return torch.cat([cxcy.clamp(0.0, 1.0), wh.clamp(1e-3, 1.0)], dim=-1)


def training_attention_mask(
    dn_groups: int, dn_group_size: int, num_queries: int, hybrid_queries: int, device=None
) -> Tensor | None:
    """[T,T] bool self-attention mask, True = may not attend, for the query layout
    ``[DN groups | one-to-one | one-to-many]`` (T = DN + Q + H). None when there are
    neither DN nor hybrid queries."""
    dn = dn_groups * dn_group_size
    total = dn + num_queries + hybrid_queries
    if total == num_queries:
        return None
    part = torch.empty(total, dtype=torch.long, device=device)
    if dn:
        part[:dn] = torch.arange(dn_groups, device=device).repeat_interleave(dn_group_size)
    part[dn : dn + num_queries] = -1
    part[dn + num_queries :] = -2
    return part[:, None] != part[None, :]
