"""Calibration of confidence against localisation quality (the paper's Sec. 3.3).

A well-calibrated detector's score equals the IoU of its box with the object it found;
the expected calibration error (ECE) measures the gap, in bins of score.
"""

from __future__ import annotations

import numpy as np


def expected_calibration_error(scores: np.ndarray, ious: np.ndarray, num_bins: int = 10) -> float:
    """ECE (percent) = sum over score bins of (n_b / N) * |mean score - mean IoU|.

    scores, ious: [N] in [0,1]; ious is each prediction's best IoU with a ground-truth
    instance of its label (0 when it found nothing).
    """
    scores = np.asarray(scores, dtype=np.float64)
    ious = np.asarray(ious, dtype=np.float64)
    if scores.shape != ious.shape:
        raise ValueError(f"scores {scores.shape} and ious {ious.shape} must have one value each")
    if scores.size == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    which = np.clip(np.digitize(scores, edges[1:-1]), 0, num_bins - 1)
    total = 0.0
    for b in range(num_bins):
        sel = which == b
        if sel.any():
            total += sel.mean() * abs(scores[sel].mean() - ious[sel].mean())
    return 100.0 * total
