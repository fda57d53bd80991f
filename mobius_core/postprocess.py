"""Raw model outputs -> per-image :class:`~mobius_core.types.Instances` (no NMS, DETR-style).

The three tasks of the paper (Fig. 5):

- ``"category"``: multi-label over the K prompts. Every (query, prompt) pair is a candidate
  with score ``sigmoid(logit)``; the ``top_k`` best pairs scoring above ``score_threshold``
  become instances labelled with their prompt index (one query may yield several instances).
- ``"agnostic"``: class-agnostic; a query's score is ``sigmoid(max_k logit)``, label 0 (the
  prompt is e.g. ``"object"``); same threshold and ``top_k``.
- ``"referring"``: one instance per prompt (referring expression): the valid query with the
  highest score for that prompt, with no threshold and no ``top_k``.

Geometry: the network sees each image resized to ``input_sizes[i] = (h, w)`` and padded
(bottom/right) to ``outputs.image_size = (H_pad, W_pad)``. Boxes (normalised cxcywh of the
padded input) are converted to padded-input pixels, scaled by ``orig / input_size`` and clipped
to the original image. Masks (logits at stride 4) are cropped to the un-padded region
``(ceil(h / 4), ceil(w / 4))``, bilinearly resized to the original ``(H, W)`` and thresholded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mobius_core.box_ops import box_cxcywh_to_xyxy
from mobius_core.rle import encode_rle
from mobius_core.types import Instances, ModelOutput

__all__ = ["TASKS", "PostProcessor", "instances_to_coco"]

TASKS: tuple[str, ...] = ("category", "agnostic", "referring")

_MASK_STRIDE = 4


class PostProcessor:
    """Turns :class:`ModelOutput` into :class:`Instances` in original image pixels.

    Args:
        score_threshold: candidates need a class score strictly above this ("category" and
            "agnostic"; ignored by "referring").
        top_k: at most this many instances per image ("category" and "agnostic").
        mask_threshold: a pixel is foreground where the resized mask logit is strictly above
            this (0.0 on logits == probability 0.5).
        score_with_mask: multiply each kept instance's class score by the mean sigmoid mask
            probability inside its binary mask (Mask2Former's mask-quality score). Selection
            (threshold, top_k, referring argmax) uses the class score; the returned instances
            are then re-sorted by the final score (referring keeps prompt order).
        mask_chunk: masks are resized this many at a time to bound peak memory.
    """

    def __init__(
        self,
        score_threshold: float = 0.3,
        top_k: int = 100,
        mask_threshold: float = 0.0,
        score_with_mask: bool = False,
        mask_chunk: int = 16,
    ) -> None:
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        if mask_chunk < 1:
            raise ValueError(f"mask_chunk must be >= 1, got {mask_chunk}")
        self.score_threshold = float(score_threshold)
        self.top_k = int(top_k)
        self.mask_threshold = float(mask_threshold)
        self.score_with_mask = bool(score_with_mask)
        self.mask_chunk = int(mask_chunk)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(score_threshold={self.score_threshold}, top_k={self.top_k}, "
            f"mask_threshold={self.mask_threshold}, score_with_mask={self.score_with_mask})"
        )

    @torch.no_grad()
    def __call__(
        self,
        outputs: ModelOutput,
        task: str,
        image_sizes: Sequence[tuple[int, int]],
        input_sizes: Sequence[tuple[int, int]],
        prompts: Sequence[str],
    ) -> list[Instances]:
        """Post-process a batch.

        Args:
            outputs: logits ``[B,Q',K]``, boxes ``[B,Q',4]`` (normalised cxcywh of the padded
                input), masks ``[B,Q',H_pad/4,W_pad/4]`` logits, query_valid ``[B,Q']`` and
                image_size ``(H_pad, W_pad)`` (if left at ``(0, 0)`` it is taken as 4x the
                mask size).
            task: ``"category"``, ``"agnostic"`` or ``"referring"``.
            image_sizes: original ``(H, W)`` of each image, length B.
            input_sizes: ``(h, w)`` of each resized, un-padded image inside the padded input,
                length B.
            prompts: the K prompt strings (``len(prompts) == K``).

        Returns:
            B :class:`Instances` on the outputs' device: scores ``[N]`` float32, labels ``[N]``
            int64, boxes ``[N,4]`` xyxy float32 original pixels, masks ``[N,H,W]`` bool.

        Raises:
            ValueError: unknown task, or sizes/prompts inconsistent with the outputs.
        """
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        logits, boxes, masks, valid = (
            outputs.logits,
            outputs.boxes,
            outputs.masks,
            outputs.query_valid,
        )
        if logits.dim() != 3:
            raise ValueError(f"outputs.logits must be [B,Q,K], got {tuple(logits.shape)}")
        b, q, k = logits.shape
        if len(image_sizes) != b or len(input_sizes) != b:
            raise ValueError(
                f"got {len(image_sizes)} image_sizes and {len(input_sizes)} input_sizes "
                f"for a batch of {b}"
            )
        if len(prompts) != k:
            raise ValueError(f"got {len(prompts)} prompts but the logits have K={k}")
        if valid is None:
            valid = torch.ones((b, q), dtype=torch.bool, device=logits.device)
        pad_h, pad_w = outputs.image_size
        if pad_h <= 0 or pad_w <= 0:
            pad_h, pad_w = masks.shape[-2] * _MASK_STRIDE, masks.shape[-1] * _MASK_STRIDE

        results = []
        for i in range(b):
            query_idx, labels, scores = self._select(task, logits[i], valid[i].bool())
            results.append(
                self._build(
                    query_idx,
                    labels,
                    scores,
                    boxes[i],
                    masks[i],
                    (int(pad_h), int(pad_w)),
                    tuple(int(v) for v in input_sizes[i]),
                    tuple(int(v) for v in image_sizes[i]),
                    prompts,
                    resort=task != "referring",
                )
            )
        return results

    def _select(self, task: str, logits: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``logits [Q,K]``, ``valid [Q]`` -> (query indices ``[N]``, labels ``[N]``, scores)."""
        q, k = logits.shape
        device = logits.device
        probs = logits.float().sigmoid()
        if task == "referring":
            if q == 0 or not bool(valid.any()):
                empty = torch.zeros(0, dtype=torch.long, device=device)
                return empty, empty.clone(), torch.zeros(0, device=device)
            masked = probs.masked_fill(~valid[:, None], -1.0)  # [Q,K]
            scores, query_idx = masked.max(dim=0)  # [K]
            labels = torch.arange(k, device=device)
            return query_idx, labels, scores
        if task == "category":
            cand_valid = valid[:, None].expand(q, k).flatten()
            cand = probs.flatten()  # [Q*K], index q*K + k
        else:  # agnostic
            cand_valid = valid if k > 0 else torch.zeros_like(valid)
            cand = probs.max(dim=1).values if k > 0 else torch.zeros(q, device=device)  # [Q]
        cand = cand.masked_fill(~cand_valid, -1.0)  # below any sigmoid score
        n = min(self.top_k, cand.numel())
        scores, flat_idx = cand.topk(n, sorted=True)
        keep = (scores > self.score_threshold) & cand_valid[flat_idx]
        scores, flat_idx = scores[keep], flat_idx[keep]
        if task == "category":
            query_idx = torch.div(flat_idx, k, rounding_mode="floor")
            labels = flat_idx % k
        else:
            query_idx = flat_idx
            labels = torch.zeros_like(flat_idx)
        return query_idx, labels, scores

    def _build(
        self,
        query_idx: Tensor,
        labels: Tensor,
        scores: Tensor,
        boxes: Tensor,
        masks: Tensor,
        pad_size: tuple[int, int],
        input_size: tuple[int, int],
        image_size: tuple[int, int],
        prompts: Sequence[str],
        resort: bool,
    ) -> Instances:
        """Gather, rescale and threshold the selected queries of one image."""
        pad_h, pad_w = pad_size
        in_h, in_w = input_size
        img_h, img_w = image_size
        if in_h <= 0 or in_w <= 0:
            raise ValueError(f"input size must be positive, got {input_size}")
        device = boxes.device

        # boxes: normalised cxcywh of the padded input -> xyxy original pixels
        sel_boxes = box_cxcywh_to_xyxy(boxes[query_idx].float())
        scale = torch.tensor(
            [pad_w * img_w / in_w, pad_h * img_h / in_h] * 2, dtype=torch.float32, device=device
        )
        sel_boxes = sel_boxes * scale
        sel_boxes[:, 0::2] = sel_boxes[:, 0::2].clamp(0, img_w)
        sel_boxes[:, 1::2] = sel_boxes[:, 1::2].clamp(0, img_h)

        # masks: crop the un-padded region at stride 4, resize to the original size
        crop_h = min(math.ceil(in_h / _MASK_STRIDE), masks.shape[-2])
        crop_w = min(math.ceil(in_w / _MASK_STRIDE), masks.shape[-1])
        n = int(query_idx.numel())
        out_masks = torch.zeros((n, img_h, img_w), dtype=torch.bool, device=device)
        mask_scores = torch.ones(n, dtype=torch.float32, device=device)
        for start in range(0, n, self.mask_chunk):
            idx = query_idx[start : start + self.mask_chunk]
            m = masks[idx, :crop_h, :crop_w].float()[:, None]  # [n,1,h',w']
            if img_h > 0 and img_w > 0:
                m = F.interpolate(m, size=(img_h, img_w), mode="bilinear", align_corners=False)
            m = m[:, 0]
            binary = m > self.mask_threshold
            out_masks[start : start + idx.numel()] = binary
            if self.score_with_mask:
                area = binary.flatten(1).sum(1).clamp(min=1)
                mask_scores[start : start + idx.numel()] = (m.sigmoid() * binary).flatten(1).sum(
                    1
                ) / area

        scores = scores.float()
        if self.score_with_mask:
            scores = scores * mask_scores
            if resort and n > 1:
                order = scores.argsort(descending=True, stable=True)
                scores, labels = scores[order], labels[order]
                sel_boxes, out_masks = sel_boxes[order], out_masks[order]

        label_list = labels.tolist()
        return Instances(
            scores=scores,
            labels=labels.long(),
            boxes=sel_boxes,
            masks=out_masks,
            label_texts=[prompts[j] for j in label_list],
        )


def instances_to_coco(instances: Instances, image_id: int) -> list[dict[str, Any]]:
    """COCO result dicts for one image's instances.

    Args:
        instances: post-processed instances (boxes xyxy original pixels, masks ``[N,H,W]``).
        image_id: the COCO image id.

    Returns:
        One dict per instance: ``image_id``, ``category_id`` (the prompt index; map it to the
        dataset's category ids before evaluation), ``score`` (float), ``bbox`` ``[x, y, w, h]``
        and ``segmentation`` (compressed RLE with ``counts`` as ``str``).
    """
    n = len(instances)
    if n == 0:
        return []
    scores = instances.scores.detach().float().cpu().tolist()
    labels = instances.labels.detach().cpu().tolist()
    boxes = instances.boxes.detach().float().cpu()
    xywh = torch.cat((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), dim=1).tolist()
    # [N,W,H] C-contiguous: each m[i].T is a Fortran-ordered [H,W] view (no copy in encode_rle)
    masks = np.ascontiguousarray(instances.masks.detach().bool().cpu().numpy().transpose(0, 2, 1))
    return [
        {
            "image_id": int(image_id),
            "category_id": int(labels[i]),
            "score": float(scores[i]),
            "bbox": [float(v) for v in xywh[i]],
            "segmentation": encode_rle(masks[i].T),
        }
        for i in range(n)
    ]
