"""Tracking metrics on hand-computed cases, and the synthetic sequence generator."""

from __future__ import annotations

import numpy as np
import pytest

from mobius_core.data.sequences import render_sequence
from mobius_core.evaluation.tracking import tracking_metrics

H, W = 40, 60


def box(x: int, y: int = 10, s: int = 10) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y : y + s, x : x + s] = True
    return m


def test_perfect_tracking():
    gt = [[(7, box(2 * t)), (9, box(40, 25))] for t in range(5)]
    m = tracking_metrics(gt, gt)
    assert m["mota"] == 100.0 and m["idf1"] == 100.0
    assert m["id_switches"] == m["fragmentations"] == m["fp"] == m["fn"] == 0
    assert m["gt"] == 10 and m["frames"] == 5


def test_an_id_switch_halves_idf1():
    gt = [[(1, box(2 * t))] for t in range(4)]
    hyp = [[(5 if t < 2 else 6, box(2 * t))] for t in range(4)]
    m = tracking_metrics(gt, hyp)
    assert m["id_switches"] == 1 and m["id_switches_per_100_frames"] == 25.0
    assert m["mota"] == pytest.approx(100 * (1 - 1 / 4))
    assert m["idf1"] == pytest.approx(50.0)  # IDTP 2 of 4 + 4


def test_misses_false_positives_and_a_fragmentation():
    gt = [[(1, box(2 * t))] for t in range(5)]
    hyp = [[(3, box(2 * t))] for t in range(5)]
    hyp[2] = [(3, box(45, 25))]  # frame 2: the object is missed, something else is reported
    m = tracking_metrics(gt, hyp)
    assert m["fn"] == 1 and m["fp"] == 1 and m["fragmentations"] == 1
    assert m["id_switches"] == 0
    assert m["mota"] == pytest.approx(100 * (1 - 2 / 5))
    assert m["idf1"] == pytest.approx(100 * 2 * 4 / 10)


def test_low_overlap_does_not_count():
    gt = [[(1, box(10))]]
    assert tracking_metrics(gt, [[(1, box(16))]])["fn"] == 1  # IoU 40/160 < 0.5
    with pytest.raises(ValueError, match="duplicate hypothesis ids"):
        tracking_metrics(gt, [[(1, box(10)), (1, box(30))]])
    with pytest.raises(ValueError, match="1 ground-truth frames but 2"):
        tracking_metrics(gt, gt + gt)


def test_sequences_are_deterministic_with_persistent_ids():
    a = render_sequence(3, num_frames=40, size=(128, 160))
    b = render_sequence(3, num_frames=40, size=(128, 160))
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    names: dict[int, str] = {}
    ids_per_frame = []
    for f in a:
        assert f.image.shape == (128, 160, 3) and f.image.dtype == np.uint8
        union = np.zeros((128, 160), int)
        for inst in f.instances:
            assert names.setdefault(inst["track_id"], inst["name"]) == inst["name"]
            assert inst["mask"].sum() >= 80
            union += inst["mask"]
        assert union.max() <= 1  # visible masks never overlap
        ids_per_frame.append({inst["track_id"] for inst in f.instances})
    assert len(set().union(*ids_per_frame)) > len(ids_per_frame[0])  # something entered
    other = render_sequence(4, num_frames=2, size=(128, 160))
    assert not np.array_equal(other[0].image, a[0].image)
