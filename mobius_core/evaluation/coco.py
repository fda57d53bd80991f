"""Box and mask AP with the COCO protocol (pycocotools), in COCO's 0-100 scale."""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any


def _coco_api():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:  # pragma: no cover - pycocotools is a requirement
        raise ImportError("evaluation needs pycocotools (pip install pycocotools)") from exc
    return COCO, COCOeval


METRICS = {"ap": 0, "ap50": 1, "ap75": 2, "ap_small": 3, "ap_medium": 4, "ap_large": 5}


def evaluate_coco(
    gt: dict[str, Any], results: list[dict[str, Any]], iou_types: tuple[str, ...] = ("bbox", "segm")
) -> dict[str, float]:
    """COCO AP of ``results`` (COCO result dicts: image_id, category_id, score, bbox, and
    segmentation for masks) against the ground-truth json dict ``gt``.

    Returns ``box_ap``, ``box_ap50``, ``box_ap75``, ... and ``mask_ap``, ... (0-100); with no
    detections every AP is 0. Only images listed in ``gt`` are evaluated.
    """
    COCO, COCOeval = _coco_api()
    prefix = {"bbox": "box", "segm": "mask"}
    out: dict[str, float] = {}
    if not results:
        return {f"{prefix[t]}_{m}": 0.0 for t in iou_types for m in METRICS}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.dataset.setdefault("info", {})
        coco_gt.dataset.setdefault("licenses", [])
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        for t in iou_types:
            ev = COCOeval(coco_gt, coco_dt, t)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            for name, i in METRICS.items():
                value = float(ev.stats[i])
                out[f"{prefix[t]}_{name}"] = 100.0 * max(value, 0.0)  # -1 = no such objects
    return out
