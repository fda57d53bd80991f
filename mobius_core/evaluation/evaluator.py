"""Run a model over a COCO-format dataset and compute every metric in one pass.

The same resize, padding and post-processing as deployment; boxes and masks are mapped
back to each image's original pixels before scoring.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
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
    referring: bool = True,
    task: str = "category",
) -> EvalResult:
    """Instance segmentation over ``dataset`` with its category names as prompts.

    task: ``"category"`` (category-guided AP), ``"agnostic"`` (every instance is an
    "object": AP ignores the labels, a query scores by its best prompt) or ``"referring"``
    (only the referring metrics; needs the dataset folder's refs.json).
    Metrics: box/mask AP (0-100), ``ece`` (percent), ``kept_mean`` (mean kept queries after
    the last decoder layer), ``images``, ``decoder_gflops`` and, when the dataset folder has
    a refs.json and ``referring`` is on, ``refer_p50``/``refer_oiou``."""
    if task not in ("category", "agnostic", "referring"):
        raise ValueError(f"unknown task {task!r}; use category, agnostic or referring")
    model.eval()
    refs = dataset.ann_file.parent / "refs.json"
    if task == "referring":
        if not refs.is_file():
            raise FileNotFoundError(
                f"--task referring needs a RefCOCO-style refs file at {refs} (one expression "
                "-> one annotation id); none is there"
            )
        metrics = evaluate_referring(model, dataset, refs, short_side, max_size, prune)
        metrics["images"] = float(len(dataset))
        return EvalResult(metrics, [])
    text = model.encode_text(dataset.prompts)
    transform = ResizeFlip((short_side,), max_size, 0.0)
    post = PostProcessor(score_threshold=score_threshold, top_k=top_k)
    results: list[dict[str, Any]] = []
    scores, ious, kept = [], [], []
    kept_layers: list[list[int]] = []
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
        kept_layers.extend(out.kept.tolist())
        instances = post(
            out,
            task,
            [s.image.shape[:2] for s in samples],
            sizes,
            tuple(dataset.prompts),
        )
        for sample, inst in zip(samples, instances):
            for r in instances_to_coco(inst, sample.image_id):
                r["category_id"] = (
                    AGNOSTIC_ID if task == "agnostic" else dataset.labels.ids[int(r["category_id"])]
                )
                results.append(r)
            scores.extend(inst.scores.tolist())
            ious.extend(_best_ious(inst, sample, same_label=task == "category"))
    gt = _gt_json(dataset)
    metrics = evaluate_coco(agnostic_gt(gt) if task == "agnostic" else gt, results)
    metrics["ece"] = expected_calibration_error(np.asarray(scores), np.asarray(ious))
    metrics["kept_mean"] = float(np.mean(kept)) if kept else 0.0
    metrics["images"] = float(len(dataset))
    metrics["decoder_gflops"] = _decoder_gflops(model, short_side, dataset, kept_layers, prune)
    if referring and refs.is_file():
        metrics.update(evaluate_referring(model, dataset, refs, short_side, max_size, prune))
    return EvalResult(metrics, results)


AGNOSTIC_ID = 1


def agnostic_gt(gt: dict[str, Any]) -> dict[str, Any]:
    """A COCO ground truth with every category merged into one, "object" (id 1)."""
    out = dict(gt)
    out["categories"] = [{"id": AGNOSTIC_ID, "name": "object"}]
    out["annotations"] = [{**a, "category_id": AGNOSTIC_ID} for a in gt["annotations"]]
    return out


def _decoder_gflops(
    model: Mobius,
    size: int,
    dataset: CocoDataset,
    kept: list[list[int]],
    prune: PruneSchedule | None,
) -> float:
    """Decoder cost at ``size``: unpruned, or for the mean kept-query trajectory seen in
    evaluation (with the schedule's choice of keeping pruned queries as context)."""
    from ..flops import count_flops

    if not kept:
        return 0.0
    side = -(-size // 32) * 32
    text = model.encode_text(dataset.prompts)
    if prune is None:
        return float(count_flops(model, (side, side), text=text)["decoder"])
    trajectory = [max(1, round(v)) for v in np.mean(np.asarray(kept, dtype=np.float64), axis=0)]
    for i in range(1, len(trajectory)):  # rounding must keep it non-increasing
        trajectory[i] = min(trajectory[i], trajectory[i - 1])
    flops = count_flops(model, (side, side), kept=trajectory, text=text, context=prune.context)
    return float(flops["decoder"])


@torch.no_grad()
def evaluate_referring(
    model: Mobius,
    dataset: CocoDataset,
    refs_file,
    short_side: int,
    max_size: int = 1333,
    prune: PruneSchedule | None = None,
) -> dict[str, float]:
    """Referring segmentation on a RefCOCO-style refs file (one expression -> one instance):
    each sentence is its own prompt, the best query's mask is compared with the referent.
    With ``prune``, the decoder prunes as in deployment (at least one query survives)."""
    from ..rle import decode_rle
    from .refer import refer_metrics

    refs = json.loads(Path(refs_file).read_text())
    by_image = {info["id"]: i for i, info in enumerate(dataset.images)}
    anns = {a["id"]: a for lst in dataset.anns.values() for a in lst}
    transform = ResizeFlip((short_side,), max_size, 0.0)
    post = PostProcessor()
    pairs = []
    for ref in refs:
        if ref["image_id"] not in by_image or ref["ann_id"] not in anns:
            continue
        sample = dataset[by_image[ref["image_id"]]]
        images, _, sizes = collate([transform(sample)])
        gt = decode_rle(anns[ref["ann_id"]]["segmentation"])
        sentences = tuple(s["sent"] for s in ref["sentences"])
        out = model(model.normalize(images), model.encode_text(list(sentences)), prune=prune)
        (inst,) = post(out, "referring", [sample.image.shape[:2]], sizes, sentences)
        for k in range(len(sentences)):
            hit = (inst.labels == k).nonzero()
            pred = inst.masks[int(hit[0][0])] if len(hit[0]) else None
            pairs.append((pred, gt))
    return refer_metrics(pairs) if pairs else {}


def _best_ious(inst, sample, same_label: bool = True) -> list[float]:
    """Each predicted box's best IoU with a ground-truth box (of the same label, unless
    ``same_label`` is off)."""
    if len(inst) == 0:
        return []
    gt_boxes = torch.from_numpy(sample.boxes)
    gt_labels = torch.from_numpy(sample.labels)
    if len(gt_boxes) == 0:
        return [0.0] * len(inst)
    iou, _ = box_iou(torch.from_numpy(inst.boxes), gt_boxes)
    if not same_label:
        return iou.max(dim=1).values.tolist()
    same = torch.from_numpy(inst.labels)[:, None] == gt_labels[None, :]
    return (iou * same).max(dim=1).values.tolist()


def _gt_json(dataset: CocoDataset) -> dict[str, Any]:
    return json.loads(dataset.ann_file.read_text())
