"""Raw model outputs -> per-image :class:`Instances` (no NMS, DETR-style), in NumPy.

The same code post-processes the eager model, onnxruntime and TensorRT (it imports no
torch, so a deployed node can run without it). The three tasks of the paper (Fig. 5):

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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mobius_core.imageops import threshold_resized
from mobius_core.rle import encode_rle

__all__ = ["TASKS", "Instances", "PostProcessor", "RawOutputs", "instances_to_coco"]

TASKS: tuple[str, ...] = ("category", "agnostic", "referring")

_MASK_STRIDE = 4


@dataclass
class RawOutputs:
    """What every backend returns (the ``io_spec`` outputs), as NumPy arrays.

    prompt_scores: [B,Q',K] sigmoid class scores; boxes: [B,Q',4] normalised cxcywh of the
    padded input; masks: [B,Q',H_pad/4,W_pad/4] logits; query_valid: [B,Q'] bool;
    kept: [B,L] kept queries per decoder layer; image_size: (H_pad, W_pad).
    """

    prompt_scores: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray
    query_valid: np.ndarray
    kept: np.ndarray
    image_size: tuple[int, int] = (0, 0)

    @classmethod
    def from_model_output(cls, out: Any) -> RawOutputs:
        """From the eager model's ``ModelOutput`` (torch tensors, any device)."""
        return cls(
            prompt_scores=out.logits.detach().float().sigmoid().cpu().numpy(),
            boxes=out.boxes.detach().float().cpu().numpy(),
            masks=out.masks.detach().float().cpu().numpy(),
            query_valid=out.query_valid.detach().cpu().numpy().astype(bool),
            kept=out.kept.detach().cpu().numpy(),
            image_size=tuple(int(v) for v in out.image_size),
        )


@dataclass
class Instances:
    """Final instances of one image after post-processing, in original image pixels.

    scores: [N] float32; labels: [N] int64 prompt indices; boxes: [N,4] float32 xyxy pixels;
    masks: [N,H,W] bool; label_texts: the prompt text of each instance.
    """

    scores: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray
    label_texts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def select(self, index: np.ndarray | list[int]) -> Instances:
        """The instances at ``index`` (in that order)."""
        index = np.asarray(index, dtype=np.int64)
        texts = [self.label_texts[i] for i in index] if self.label_texts else []
        return Instances(
            self.scores[index], self.labels[index], self.boxes[index], self.masks[index], texts
        )

    def concat(self, other: Instances, label_offset: int = 0) -> Instances:
        """These instances followed by ``other``'s (its labels shifted by ``label_offset``)."""
        texts = (
            self.label_texts + other.label_texts if self.label_texts or other.label_texts else []
        )
        return Instances(
            np.concatenate([self.scores, other.scores]),
            np.concatenate([self.labels, other.labels + label_offset]),
            np.concatenate([self.boxes, other.boxes]),
            np.concatenate([self.masks, other.masks]),
            texts,
        )


class PostProcessor:
    """Turns :class:`RawOutputs` (or a ``ModelOutput``) into :class:`Instances` in original
    image pixels.

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
    """

    def __init__(
        self,
        score_threshold: float = 0.3,
        top_k: int = 100,
        mask_threshold: float = 0.0,
        score_with_mask: bool = False,
    ) -> None:
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        self.score_threshold = float(score_threshold)
        self.top_k = int(top_k)
        self.mask_threshold = float(mask_threshold)
        self.score_with_mask = bool(score_with_mask)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(score_threshold={self.score_threshold}, top_k={self.top_k}, "
            f"mask_threshold={self.mask_threshold}, score_with_mask={self.score_with_mask})"
        )

    def __call__(
        self,
        outputs: RawOutputs | Any,
        task: str,
        image_sizes: Sequence[tuple[int, int]],
        input_sizes: Sequence[tuple[int, int]],
        prompts: Sequence[str],
    ) -> list[Instances]:
        """Post-process a batch.

        Args:
            outputs: :class:`RawOutputs` (or a ``ModelOutput``, converted): scores
                ``[B,Q',K]``, boxes ``[B,Q',4]``, masks ``[B,Q',H_pad/4,W_pad/4]`` logits,
                query_valid ``[B,Q']`` and image_size ``(H_pad, W_pad)`` (if left at
                ``(0, 0)`` it is taken as 4x the mask size).
            task: ``"category"``, ``"agnostic"`` or ``"referring"``.
            image_sizes: original ``(H, W)`` of each image, length B.
            input_sizes: ``(h, w)`` of each resized, un-padded image inside the padded input,
                length B.
            prompts: the K prompt strings (``len(prompts) == K``).

        Returns:
            B :class:`Instances`: scores ``[N]`` float32, labels ``[N]`` int64, boxes
            ``[N,4]`` xyxy float32 original pixels, masks ``[N,H,W]`` bool.

        Raises:
            ValueError: unknown task, or sizes/prompts inconsistent with the outputs.
        """
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        if not isinstance(outputs, RawOutputs):
            outputs = RawOutputs.from_model_output(outputs)
        probs, boxes, masks, valid = (
            np.asarray(outputs.prompt_scores, dtype=np.float32),
            np.asarray(outputs.boxes, dtype=np.float32),
            outputs.masks,
            outputs.query_valid,
        )
        if probs.ndim != 3:
            raise ValueError(f"prompt scores must be [B,Q,K], got {probs.shape}")
        b, q, k = probs.shape
        if len(image_sizes) != b or len(input_sizes) != b:
            raise ValueError(
                f"got {len(image_sizes)} image_sizes and {len(input_sizes)} input_sizes "
                f"for a batch of {b}"
            )
        if len(prompts) != k:
            raise ValueError(f"got {len(prompts)} prompts but the scores have K={k}")
        valid = np.ones((b, q), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
        pad_h, pad_w = outputs.image_size
        if pad_h <= 0 or pad_w <= 0:
            pad_h, pad_w = masks.shape[-2] * _MASK_STRIDE, masks.shape[-1] * _MASK_STRIDE

        results = []
        for i in range(b):
            query_idx, labels, scores = self._select(task, probs[i], valid[i])
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

    def _select(
        self, task: str, probs: np.ndarray, valid: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``probs [Q,K]``, ``valid [Q]`` -> (query indices ``[N]``, labels ``[N]``, scores)."""
        q, k = probs.shape
        if task == "referring":
            if q == 0 or k == 0 or not valid.any():
                empty = np.zeros(0, dtype=np.int64)
                return empty, empty.copy(), np.zeros(0, dtype=np.float32)
            masked = np.where(valid[:, None], probs, -1.0)  # [Q,K]
            query_idx = masked.argmax(axis=0).astype(np.int64)  # [K], first best on ties
            scores = masked[query_idx, np.arange(k)].astype(np.float32)
            return query_idx, np.arange(k, dtype=np.int64), scores
        if task == "category":
            cand_valid = np.repeat(valid, k)
            cand = probs.reshape(-1)  # [Q*K], index q*K + k
        else:  # agnostic
            cand_valid = valid if k > 0 else np.zeros_like(valid)
            cand = probs.max(axis=1) if k > 0 else np.zeros(q, dtype=np.float32)  # [Q]
        cand = np.where(cand_valid, cand, -1.0)  # below any sigmoid score
        n = min(self.top_k, cand.size)
        order = np.argsort(-cand, kind="stable")[:n]  # best first, lower index on ties
        scores = cand[order]
        keep = (scores > self.score_threshold) & cand_valid[order]
        scores, flat_idx = scores[keep].astype(np.float32), order[keep].astype(np.int64)
        if task == "category":
            return flat_idx // k, flat_idx % k, scores
        return flat_idx, np.zeros_like(flat_idx), scores

    def _build(
        self,
        query_idx: np.ndarray,
        labels: np.ndarray,
        scores: np.ndarray,
        boxes: np.ndarray,
        masks: np.ndarray,
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

        # boxes: normalised cxcywh of the padded input -> xyxy original pixels
        cx, cy, w, h = np.moveaxis(boxes[query_idx].astype(np.float32), -1, 0)
        sel_boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)
        scale = np.array([pad_w * img_w / in_w, pad_h * img_h / in_h] * 2, dtype=np.float32)
        sel_boxes = (sel_boxes * scale).reshape(-1, 4)
        sel_boxes[:, 0::2] = sel_boxes[:, 0::2].clip(0, img_w)
        sel_boxes[:, 1::2] = sel_boxes[:, 1::2].clip(0, img_h)

        # masks: crop the un-padded region at stride 4, resize to the original size
        crop_h = min(math.ceil(in_h / _MASK_STRIDE), masks.shape[-2])
        crop_w = min(math.ceil(in_w / _MASK_STRIDE), masks.shape[-1])
        n = int(query_idx.size)
        out_masks = np.zeros((n, img_h, img_w), dtype=bool)
        mask_scores = np.ones(n, dtype=np.float32)
        for k, q in enumerate(query_idx.tolist()):
            m = masks[q, :crop_h, :crop_w]  # [h',w'] logits
            if img_h <= 0 or img_w <= 0:
                continue
            # written in place: only the object's window is touched (no [H,W] temporary)
            binary, values, win = threshold_resized(
                m, (img_h, img_w), self.mask_threshold, out=out_masks[k]
            )
            if self.score_with_mask:
                inside = binary[win]
                area = max(int(inside.sum()), 1)
                # sigmoid as 0.5 (1 + tanh(x / 2)): no overflow for very negative logits
                prob = 0.5 * (1.0 + np.tanh(0.5 * values)) if values is not None else 0.0
                mask_scores[k] = float((prob * inside).sum()) / area

        scores = scores.astype(np.float32)
        if self.score_with_mask:
            scores = scores * mask_scores
            if resort and n > 1:
                order = np.argsort(-scores, kind="stable")
                scores, labels = scores[order], labels[order]
                sel_boxes, out_masks = sel_boxes[order], out_masks[order]

        return Instances(
            scores=scores,
            labels=labels.astype(np.int64),
            boxes=sel_boxes.astype(np.float32),
            masks=out_masks,
            label_texts=[prompts[j] for j in labels.tolist()],
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
    scores = np.asarray(instances.scores, dtype=np.float32).tolist()
    labels = np.asarray(instances.labels).tolist()
    boxes = np.asarray(instances.boxes, dtype=np.float32)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist()
    # [N,W,H] C-contiguous: each m[i].T is a Fortran-ordered [H,W] view (no copy in encode_rle)
    masks = np.ascontiguousarray(np.asarray(instances.masks, dtype=bool).transpose(0, 2, 1))
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
