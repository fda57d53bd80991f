"""Referring segmentation metrics: precision at IoU 0.5 and overall IoU (percent)."""

from __future__ import annotations

import numpy as np


def refer_metrics(pairs: list[tuple[np.ndarray | None, np.ndarray]]) -> dict[str, float]:
    """pairs: (predicted mask [H,W] bool or None when nothing was predicted, GT mask [H,W]).

    ``refer_p50``: % of expressions whose mask IoU > 0.5; ``refer_miou``: mean IoU;
    ``refer_oiou``: sum of intersections / sum of unions over all expressions (percent).
    """
    if not pairs:
        return {"refer_p50": 0.0, "refer_miou": 0.0, "refer_oiou": 0.0}
    inter_total = union_total = 0
    ious = []
    for pred, gt in pairs:
        gt = gt.astype(bool)
        pred = np.zeros_like(gt) if pred is None else pred.astype(bool)
        inter = int(np.logical_and(pred, gt).sum())
        union = int(np.logical_or(pred, gt).sum())
        inter_total += inter
        union_total += union
        ious.append(inter / union if union else 0.0)
    ious_arr = np.asarray(ious)
    return {
        "refer_p50": 100.0 * float((ious_arr > 0.5).mean()),
        "refer_miou": 100.0 * float(ious_arr.mean()),
        "refer_oiou": 100.0 * inter_total / union_total if union_total else 0.0,
    }
