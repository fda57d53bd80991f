"""Run a model over a COCO-format dataset and compute every metric in one pass.

The same resize, padding and post-processing as deployment; boxes and masks are mapped
back to each image's original pixels before scoring.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..box_ops import box_iou
from ..data.coco import CocoDataset
from ..data.transforms import ResizeFlip, collate
from ..modeling.mobius import Mobius
from ..modeling.pruning import PruneSchedule
from ..postprocess import PostProcessor, instances_to_coco
from .calibration import expected_calibration_error
from .coco import evaluate_coco


@dataclass
class EvalResult:
    metrics: dict[str, float]
    results: list[dict[str, Any]]


@torch.no_grad()
def evaluate_dataset(
    model: Mobius,
    dataset: CocoDataset,
    short_side: int = 800,
    max_size: int = 1333,
    batch_size: int = 1,
    prune: PruneSchedule | None = None,
    score_threshold: float = 0.05,
    top_k: int = 100,
    progress: bool = False,
) -> EvalResult:
    """Category-guided instance segmentation over ``dataset`` with its category names as
    prompts. Metrics: box/mask AP (0-100), ``ece`` (percent), ``kept_mean`` (mean kept
    queries after the last decoder layer) and ``images``."""
    model.eval()
    text = model.encode_text(dataset.prompts)
    transform = ResizeFlip((short_side,), max_size, 0.0)
    post = PostProcessor(score_threshold=score_threshold, top_k=top_k)
    results: list[dict[str, Any]] = []
    scores, ious, kept = [], [], []
    indices = range(0, len(dataset), batch_size)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="eval", unit="batch")
    for start in indices:
        samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        items = [transform(s) for s in samples]
        images, _, sizes = collate(items)
        out = model(model.normalize(images), text, prune=prune)
        kept.extend(out.kept[:, -1].tolist())
        instances = post(
            out,
            "category",
            [s.image.shape[:2] for s in samples],
            sizes,
            tuple(dataset.prompts),
        )
        for sample, inst in zip(samples, instances):
            for r in instances_to_coco(inst, sample.image_id):
                r["category_id"] = dataset.labels.ids[int(r["category_id"])]
                results.append(r)
            scores.extend(inst.scores.tolist())
            ious.extend(_best_ious(inst, sample))
    metrics = evaluate_coco(_gt_json(dataset), results)
    metrics["ece"] = expected_calibration_error(np.asarray(scores), np.asarray(ious))
    metrics["kept_mean"] = float(np.mean(kept)) if kept else 0.0
    metrics["images"] = float(len(dataset))
    return EvalResult(metrics, results)


def _best_ious(inst, sample) -> list[float]:
    """Each predicted box's best IoU with a ground-truth box of the same label."""
    if len(inst) == 0:
        return []
    gt_boxes = torch.from_numpy(sample.boxes)
    gt_labels = torch.from_numpy(sample.labels)
    if len(gt_boxes) == 0:
        return [0.0] * len(inst)
    iou, _ = box_iou(inst.boxes.float(), gt_boxes)
    same = inst.labels[:, None] == gt_labels[None, :]
    return (iou * same).max(dim=1).values.tolist()


def _gt_json(dataset: CocoDataset) -> dict[str, Any]:
    return json.loads(dataset.ann_file.read_text())
