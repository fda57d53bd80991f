"""Resizing, flipping, padding and batching: one preprocessing for training and inference
(the image resize is :func:`mobius_core.imageops.resize_image`, which runtimes use too).

A sample is resized so its short side is one of ``short_sides`` (long side at most
``max_size``), optionally flipped, and batched by padding to a multiple of 32 at the
bottom/right. Targets are expressed in the padded frame (boxes normalised cxcywh),
which is what the model predicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..box_ops import box_xyxy_to_cxcywh
from ..imageops import resize_image, resized_size
from ..types import Target
from .coco import Sample


@dataclass
class Resized:
    """A sample after resizing: image [3,h,w] float in [0,1], boxes [N,4] xyxy pixels."""

    image: Tensor
    boxes: Tensor
    labels: Tensor
    masks: Tensor | None
    orig_size: tuple[int, int]
    flipped: bool


class ResizeFlip:
    """Random short side from ``short_sides`` and horizontal flip with ``flip_prob``."""

    def __init__(
        self, short_sides: Sequence[int] = (800,), max_size: int = 1333, flip_prob: float = 0.0
    ) -> None:
        if not short_sides:
            raise ValueError("short_sides needs at least one size, e.g. (384, 416, ..., 800)")
        self.short_sides, self.max_size, self.flip_prob = tuple(short_sides), max_size, flip_prob

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Resized:
        rng = rng if rng is not None else np.random.default_rng()
        h, w = sample.image.shape[:2]
        short = (
            int(rng.choice(self.short_sides)) if len(self.short_sides) > 1 else self.short_sides[0]
        )
        nh, nw = resized_size(h, w, short, self.max_size)
        image = torch.from_numpy(resize_image(sample.image, (nh, nw)))  # the deployed resize
        scale = torch.tensor([nw / w, nh / h, nw / w, nh / h])
        keep = ~torch.from_numpy(sample.iscrowd)
        boxes = torch.from_numpy(sample.boxes)[keep] * scale
        labels = torch.from_numpy(sample.labels)[keep]
        masks = None
        if sample.masks is not None:
            m = torch.from_numpy(sample.masks)[keep].float()
            if len(m):
                masks = F.interpolate(m[None], size=(nh, nw), mode="bilinear")[0] > 0.5
            else:
                masks = torch.zeros(0, nh, nw, dtype=torch.bool)
        flipped = bool(rng.random() < self.flip_prob)
        if flipped:
            image = image.flip(-1)
            boxes = torch.stack([nw - boxes[:, 2], boxes[:, 1], nw - boxes[:, 0], boxes[:, 3]], 1)
            masks = masks.flip(-1) if masks is not None else None
        return Resized(image, boxes, labels, masks, (h, w), flipped)


def collate(
    items: list[Resized], size_divisor: int = 32
) -> tuple[Tensor, list[Target], list[tuple[int, int]]]:
    """Pad to a common size (multiple of ``size_divisor``) -> images [B,3,H,W] in [0,1],
    targets in the padded frame, and each image's un-padded (h, w)."""
    hmax = max(it.image.shape[1] for it in items)
    wmax = max(it.image.shape[2] for it in items)
    hp = -(-hmax // size_divisor) * size_divisor
    wp = -(-wmax // size_divisor) * size_divisor
    images = torch.zeros(len(items), 3, hp, wp)
    targets, sizes = [], []
    norm = torch.tensor([wp, hp, wp, hp], dtype=torch.float32)
    for i, it in enumerate(items):
        _, h, w = it.image.shape
        images[i, :, :h, :w] = it.image
        b = it.boxes / norm
        cxcywh = box_xyxy_to_cxcywh(b)
        masks = None
        if it.masks is not None:
            masks = torch.zeros(len(it.masks), hp, wp, dtype=torch.bool)
            masks[:, :h, :w] = it.masks
        targets.append(Target(it.labels, cxcywh, masks))
        sizes.append((h, w))
    return images, targets, sizes


def mosaic(
    samples: Sequence[Sample],
    rng: np.random.Generator,
    min_scale: float = 1.0,
    min_visible: float = 0.25,
    min_pixels: int = 16,
    fill: int = 114,
) -> Sample:
    """Four samples on a 2x2 canvas at their own scale; a window of the first one's size
    divided by a random scale in [``min_scale``, 1] (0.5: up to the whole canvas) is cut
    around a random centre and resized to the first one's size.

    Instances keep their labels (the four must share one label space); an instance is kept
    if at least ``min_visible`` of it (and ``min_pixels`` canvas pixels; for box-only
    samples, of its box area) is inside the window, its box then fits what is visible.
    More instances per image, and objects cut by the border, for nothing in the model.

    Raises:
        ValueError: not four samples, some with masks and some without, or a bad scale.
    """
    if len(samples) != 4:
        raise ValueError(f"a mosaic needs 4 samples, got {len(samples)}")
    if not 0.5 <= min_scale <= 1.0:
        raise ValueError(f"mosaic min_scale must be in [0.5, 1], got {min_scale}")
    with_masks = {s.masks is not None for s in samples}
    if len(with_masks) != 1:
        raise ValueError("a mosaic needs all four samples with masks or all without")
    h, w = samples[0].image.shape[:2]
    scale = float(rng.uniform(min_scale, 1.0))
    wh, ww = min(round(h / scale), 2 * h), min(round(w / scale), 2 * w)  # the window
    # window [cy, cy+wh) x [cx, cx+ww) on the 2h x 2w canvas, kept near the centre so each
    # quarter shows; quarter k's image is pasted at (k // 2 * h, k % 2 * w)
    lo_y, lo_x = max(h - wh + h // 4, 0), max(w - ww + w // 4, 0)
    cy = int(rng.integers(lo_y, max(min(h - h // 4, 2 * h - wh), lo_y) + 1))
    cx = int(rng.integers(lo_x, max(min(w - w // 4, 2 * w - ww), lo_x) + 1))
    image = np.full((wh, ww, 3), fill, dtype=np.uint8)
    boxes, labels, masks, crowd, ann_ids = [], [], [], [], []
    has_ids = all(s.ann_ids is not None for s in samples)
    for k, s in enumerate(samples):
        oy, ox = (k // 2) * h, (k % 2) * w
        sh, sw = min(s.image.shape[0], h), min(s.image.shape[1], w)
        # overlap of the pasted image [oy, oy+sh) x [ox, ox+sw) with the window, canvas frame
        y0, y1 = max(oy, cy), min(oy + sh, cy + wh)
        x0, x1 = max(ox, cx), min(ox + sw, cx + ww)
        if y1 <= y0 or x1 <= x0:
            continue
        src = (slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox))
        dst = (slice(y0 - cy, y1 - cy), slice(x0 - cx, x1 - cx))
        image[dst] = s.image[src]
        for j in range(len(s.labels)):
            if s.masks is not None:
                full = s.masks[j]
                part = full[src]
                area, seen = int(full.sum()), int(part.sum())
                if seen < min_pixels or seen < min_visible * area:
                    continue
                m = np.zeros((wh, ww), dtype=bool)
                m[dst] = part
                masks.append(m)
                box = [0.0, 0.0, 0.0, 0.0]  # from the resized mask below
            else:
                bx0, by0, bx1, by1 = (float(v) for v in s.boxes[j])
                area = max(bx1 - bx0, 0.0) * max(by1 - by0, 0.0)
                vx0, vy0 = max(bx0 + ox, x0), max(by0 + oy, y0)  # visible part, canvas frame
                vx1, vy1 = min(bx1 + ox, x1), min(by1 + oy, y1)
                seen = max(vx1 - vx0, 0.0) * max(vy1 - vy0, 0.0)
                if seen < min_pixels or seen < min_visible * area:
                    continue
                fx, fy = w / ww, h / wh
                box = [(vx0 - cx) * fx, (vy0 - cy) * fy, (vx1 - cx) * fx, (vy1 - cy) * fy]
            boxes.append(box)
            labels.append(s.labels[j])
            crowd.append(s.iscrowd[j])
            if has_ids:
                ann_ids.append(s.ann_ids[j])
    if (wh, ww) != (h, w):
        from PIL import Image

        image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        if masks:
            m = torch.from_numpy(np.stack(masks)).float()
            masks = list((F.interpolate(m[None], size=(h, w), mode="bilinear")[0] > 0.5).numpy())
    if masks:  # boxes fit the (resized) masks; one that vanished in the resize is dropped
        keep = [j for j, m in enumerate(masks) if m.any()]
        for j in keep:
            ys, xs = np.nonzero(masks[j])
            boxes[j] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        masks, boxes = [masks[j] for j in keep], [boxes[j] for j in keep]
        labels, crowd = [labels[j] for j in keep], [crowd[j] for j in keep]
        ann_ids = [ann_ids[j] for j in keep] if has_ids else ann_ids
    n = len(labels)
    return Sample(
        image=image,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(n, 4),
        labels=np.asarray(labels, dtype=np.int64).reshape(n),
        masks=(np.stack(masks) if masks else np.zeros((0, h, w), bool))
        if samples[0].masks is not None
        else None,
        iscrowd=np.asarray(crowd, dtype=bool).reshape(n),
        image_id=samples[0].image_id,
        file_name=samples[0].file_name,
        ann_ids=np.asarray(ann_ids, dtype=np.int64).reshape(n) if has_ids else None,
    )
