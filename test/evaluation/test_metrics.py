"""COCO AP, referring metrics and calibration error on hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest

from mobius_core.evaluation.calibration import expected_calibration_error
from mobius_core.evaluation.coco import evaluate_coco
from mobius_core.evaluation.refer import refer_metrics
from mobius_core.rle import encode_rle


def _gt():
    m1 = np.zeros((50, 60), dtype=bool)
    m1[5:25, 5:30] = True
    m2 = np.zeros((50, 60), dtype=bool)
    m2[30:45, 35:55] = True
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [5, 5, 25, 20], "area": 500,
         "iscrowd": 0, "segmentation": encode_rle(m1)},
        {"id": 2, "image_id": 1, "category_id": 4, "bbox": [35, 30, 20, 15], "area": 300,
         "iscrowd": 0, "segmentation": encode_rle(m2)},
    ]  # fmt: skip
    gt = {
        "images": [{"id": 1, "height": 50, "width": 60, "file_name": "a.png"}],
        "annotations": anns,
        "categories": [{"id": 3, "name": "a"}, {"id": 4, "name": "b"}],
    }
    return gt, (m1, m2)


def test_perfect_predictions_score_100_and_none_score_0():
    gt, masks = _gt()
    results = [
        {"image_id": 1, "category_id": a["category_id"], "score": 0.9, "bbox": a["bbox"],
         "segmentation": encode_rle(m)}
        for a, m in zip(gt["annotations"], masks)
    ]  # fmt: skip
    perfect = evaluate_coco(gt, results)
    assert perfect["box_ap"] == pytest.approx(100.0) and perfect["mask_ap"] == pytest.approx(100.0)
    assert evaluate_coco(gt, [])["mask_ap"] == 0.0
    wrong_label = [dict(r, category_id=7 - r["category_id"]) for r in results]
    assert evaluate_coco(gt, wrong_label)["mask_ap"] == 0.0
    half = evaluate_coco(gt, results[:1])
    assert 0 < half["mask_ap"] < 100


def test_refer_metrics_by_hand():
    gt = np.zeros((10, 10), dtype=bool)
    gt[:, :5] = True  # 50 px
    good = gt.copy()
    poor = np.zeros_like(gt)
    poor[:, 4:6] = True  # IoU 10/60
    m = refer_metrics([(good, gt), (poor, gt), (None, gt)])
    assert m["refer_p50"] == pytest.approx(100 / 3)
    assert m["refer_miou"] == pytest.approx(100 * (1 + 10 / 60 + 0) / 3)
    assert m["refer_oiou"] == pytest.approx(100 * (50 + 10 + 0) / (50 + 60 + 50))


def test_ece_by_hand():
    assert expected_calibration_error(np.array([0.9, 0.1]), np.array([0.9, 0.1])) == 0.0
    ece = expected_calibration_error(np.array([0.95, 0.95]), np.array([0.5, 0.7]))
    assert ece == pytest.approx(100 * 0.35)
    with pytest.raises(ValueError, match="one value each"):
        expected_calibration_error(np.zeros(2), np.zeros(3))
