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
