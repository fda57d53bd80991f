"""Point and box prompts made from ground-truth instances: for training and for evaluation.

Training samples them at random (a point uniformly inside the mask, or the box with a
little jitter); evaluation uses one deterministic prompt per instance: the interior point
farthest from the mask's boundary (the usual "one click" of interactive segmentation
benchmarks) and the ground-truth box. All coordinates are normalised to the padded
network input, as ``Target`` boxes are.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..box_ops import box_cxcywh_to_xyxy
from ..types import Target, VisualPrompts


def _random_point(mask: Tensor | None, box_xyxy: Tensor, rng: np.random.Generator) -> Tensor:
    """A uniformly random pixel centre inside ``mask`` [H,W], normalised (x, y); the box's
    centre when there is no mask or it is empty."""
    if mask is not None:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(ys):
            i = int(rng.integers(len(ys)))
            h, w = mask.shape
            return torch.tensor([(float(xs[i]) + 0.5) / w, (float(ys[i]) + 0.5) / h])
    return (box_xyxy[:2] + box_xyxy[2:]) / 2


def _jitter_box(box: Tensor, rng: np.random.Generator, jitter: float) -> Tensor:
    """Each side moved by up to ``jitter`` of the box's width/height, kept in [0,1]."""
    wh = (box[2:] - box[:2]).repeat(2)
    moved = box + torch.from_numpy(rng.uniform(-jitter, jitter, 4)).to(box.dtype) * wh
    lo = torch.minimum(moved[:2], moved[2:]).clamp(0, 1)
    hi = torch.maximum(moved[:2], moved[2:]).clamp(0, 1)
    return torch.cat([lo, hi])


def sample_visual_prompts(
    targets: list[Target],
    rng: np.random.Generator,
    per_image: int = 4,
    box_prob: float = 0.5,
    jitter: float = 0.1,
) -> tuple[VisualPrompts, list[Target]]:
    """Up to ``per_image`` instances of each image become one prompt each (a box with
    probability ``box_prob``, else a point inside the mask). -> (prompts [B,V,4] scored
    alone, targets whose label j is prompt j). Images without instances get none."""
    chosen: list[Tensor] = []
    new_targets: list[Target] = []
    for t in targets:
        n = len(t)
        pick = torch.from_numpy(rng.permutation(n)[: min(n, per_image)]).long()
        xyxy = box_cxcywh_to_xyxy(t.boxes[pick]).clamp(0, 1)
        prompts = []
        for j, i in enumerate(pick.tolist()):
            if rng.random() < box_prob:
                prompts.append(_jitter_box(xyxy[j], rng, jitter))
            else:
                point = _random_point(None if t.masks is None else t.masks[i], xyxy[j], rng)
                prompts.append(torch.cat([point, point]))
        chosen.append(torch.stack(prompts) if prompts else torch.zeros(0, 4))
        new_targets.append(
            Target(
                torch.arange(len(pick), dtype=torch.long),
                t.boxes[pick],
                None if t.masks is None else t.masks[pick],
            )
        )
    return pad_prompts(chosen), new_targets


def pad_prompts(boxes: list[Tensor], classify_text: bool = False) -> VisualPrompts:
    """Per-image prompt boxes [V_b,4] -> VisualPrompts [B,V,4] (V >= 1, padding invalid)."""
    v = max([len(b) for b in boxes] + [1])
    out = torch.zeros(len(boxes), v, 4)
    valid = torch.zeros(len(boxes), v, dtype=torch.bool)
    for i, b in enumerate(boxes):
        out[i, : len(b)] = b
        valid[i, : len(b)] = True
    return VisualPrompts(out, valid, classify_text)


def center_click(mask: np.ndarray) -> tuple[float, float]:
    """The pixel of a binary mask [H,W] farthest from its boundary (x, y), pixel centres.

    Ties go to the first in row-major order, so the click is deterministic."""
    from scipy.ndimage import distance_transform_edt

    padded = np.pad(mask.astype(bool), 1)  # the image border counts as boundary
    dist = distance_transform_edt(padded)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(x) + 0.5, float(y) + 0.5
