"""Persistent ids: the tracker on hand-built sequences (crossing, misses, re-entry, gates)."""

from __future__ import annotations

import numpy as np
import pytest

from mobius_core.tracking import InstanceTracker, mask_iou_matrix, shift_mask, suppress_duplicates

H, W = 96, 160


def square(cy: float, cx: float, r: int = 8) -> np.ndarray:
    m = np.zeros((H, W), bool)
    y0, x0 = round(cy) - r, round(cx) - r
    m[max(0, y0) : max(0, y0 + 2 * r), max(0, x0) : max(0, x0 + 2 * r)] = True
    return m


def frame(*masks: np.ndarray) -> np.ndarray:
    return np.stack(masks) if masks else np.zeros((0, H, W), bool)


def test_shift_and_iou_helpers():
    m = square(20, 20, 4)
    moved = shift_mask(m, 3, -5)
    assert moved.sum() == m.sum() and np.argwhere(moved).min(0).tolist() == [19, 11]
    assert not shift_mask(m, 0, W).any()  # moved off the grid
    iou = mask_iou_matrix(frame(m, square(20, 24, 4)), frame(m))
    assert iou[0, 0] == 1.0 and iou[1, 0] == pytest.approx(32 / 96)


def test_crossing_objects_keep_their_ids():
    """Two objects of one label cross on the same line; the front one hides the other for a
    few frames (detected only while more than a quarter of it shows). The hidden one re-emerges on
    the far side, where only the velocity prediction expects it."""
    tracker = InstanceTracker(iou_gate=0.2, stride=1)
    seen = []
    for t in range(30):
        a = square(40, 20 + 4 * t)  # moving right, drawn in front
        b = square(40, 136 - 4 * t) & ~a  # moving left, behind a while they cross
        masks, labels = [a], ["red square"]
        if b.sum() > 64:
            masks.append(b)
            labels.append("red square")
        seen.append(tracker.update(frame(*masks), labels).tolist())
    hidden = [t for t, ids in enumerate(seen) if len(ids) == 1]
    assert hidden and hidden[0] > 0 and hidden[-1] < 29  # b was lost and came back
    first = seen[0]
    assert first[0] != first[1]
    assert all(ids == first[: len(ids)] for ids in seen)


def test_a_missed_frame_and_an_occlusion_keep_the_id():
    tracker = InstanceTracker(max_age=5, stride=2)
    ids = []
    for t in range(20):
        hidden = t == 5 or 10 <= t < 14  # one missed detection, then 4 frames behind something
        masks = frame() if hidden else frame(square(50, 20 + 5 * t))
        out = tracker.update(masks, [] if hidden else ["cube"])
        ids.extend(out.tolist())
    assert set(ids) == {1}
    assert len(ids) == 15


def test_a_track_older_than_max_age_is_retired():
    tracker = InstanceTracker(max_age=2)
    assert tracker.update(frame(square(40, 40)), ["cup"]).tolist() == [1]
    for _ in range(3):
        tracker.update(frame(), [])
    assert tracker.update(frame(square(40, 40)), ["cup"]).tolist() == [2]  # a new id, never 1


def test_labels_prefer_but_do_not_require_a_match():
    # default: a flipped label on the same mask keeps the id ("red circle" -> "orange circle")
    loose = InstanceTracker()
    loose.update(frame(square(40, 40)), ["cup"])
    assert loose.update(frame(square(40, 41)), ["mug"]).tolist() == [1]
    assert loose.tracks[0].label == "mug"
    # two overlapping candidates: the one with the track's label wins a near tie
    tied = InstanceTracker(iou_gate=0.1, stride=1)
    tied.update(frame(square(40, 40, 16)), ["cup"])
    out = tied.update(frame(square(40, 41, 16), square(40, 40, 16)), ["cup", "mug"])
    assert out.tolist() == [1, 2]  # IoU 0.94 with the same label beats 1.0 with another
    # hard rule: same place, other label is another object; a second cup appears elsewhere
    strict = InstanceTracker(same_label=True)
    assert strict.update(frame(square(40, 40)), ["cup"]).tolist() == [1]
    out = strict.update(frame(square(40, 40), square(40, 120)), ["bowl", "cup"])
    assert out.tolist() == [2, 3]


def test_every_id_is_unique_within_a_frame():
    tracker = InstanceTracker(iou_gate=0.1)
    tracker.update(frame(square(40, 40)), ["cup"])
    # two detections overlap the one track: only one may continue it
    out = tracker.update(frame(square(40, 41), square(40, 43)), ["cup", "cup"])
    assert sorted(out.tolist()) == [1, 2]


def test_image_size_change_clears_the_tracks():
    tracker = InstanceTracker()
    tracker.update(frame(square(40, 40)), ["cup"])
    big = np.zeros((1, 2 * H, 2 * W), bool)
    big[0, 72:88, 72:88] = True
    assert tracker.update(big, ["cup"]).tolist() == [2]


def test_bad_input_is_a_clear_error():
    tracker = InstanceTracker()
    with pytest.raises(ValueError, match="2 masks but 1 labels"):
        tracker.update(frame(square(10, 10), square(30, 30)), ["cup"])
    with pytest.raises(ValueError, match=r"\[N,H,W\]"):
        tracker.update(np.zeros((H, W), bool), ["cup"])
    with pytest.raises(ValueError, match="iou_gate"):
        InstanceTracker(iou_gate=0.0)


def test_suppress_duplicates_keeps_the_best_of_one_mask():
    a, b = square(40, 40), square(40, 100)
    masks = frame(a, b, a.copy(), square(40, 42))
    scores = np.array([0.5, 0.9, 0.7, 0.6])
    # 0 and 2 are the same mask (2 scores higher); 3 overlaps them by 0.78 (< 0.8): kept
    assert suppress_duplicates(masks, scores).tolist() == [1, 2, 3]
    assert suppress_duplicates(masks, scores, iou=0.7).tolist() == [1, 2]
    assert suppress_duplicates(frame(a), np.array([0.3])).tolist() == [0]
    # with boxes the answer is the same (only touching boxes are compared)
    boxes = np.array([[32, 32, 48, 48], [92, 32, 108, 48], [32, 32, 48, 48], [34, 32, 50, 48]])
    assert suppress_duplicates(masks, scores, boxes).tolist() == [1, 2, 3]
    assert suppress_duplicates(masks, scores, boxes, iou=0.7).tolist() == [1, 2]
