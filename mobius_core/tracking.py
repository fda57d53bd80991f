"""Persistent instance ids across frames: mask IoU and label, Hungarian association.

A robot's planner needs an object to keep its id from frame to frame. ``InstanceTracker``
takes each frame's instance masks and labels and returns one id per instance:

- every live track predicts its mask in the new frame by shifting its last mask by its
  smoothed centroid velocity (times the frames since it was last seen);
- a detection and a track may pair with a mask IoU of at least ``iou_gate``; among those
  pairs, the Hungarian algorithm maximises the total IoU, less ``label_penalty`` for a
  pair whose labels differ (an open-vocabulary model's label for one object can flip
  between close prompts from frame to frame, "red circle" / "orange circle": on the
  synthetic sequences a hard same-label rule turned that into 306 id switches in 300
  frames, against 12 with the penalty; ``same_label=True`` restores the hard rule);
- an unpaired detection starts a track with a new id (ids are never reused); a track that
  finds no detection waits ``max_age`` frames (a miss, an occlusion) before it is dropped;
- a detection much smaller than its track (partly hidden) moves the track's last full
  shape by the motion model instead of replacing it, and leaves the velocity alone.

Masks are compared on a ``stride``-subsampled grid, so the cost does not grow with the
camera resolution. A change of image size (another camera) clears the tracks.
Pure NumPy and SciPy: no ROS, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# a detection below this fraction of its track's area is taken as partly hidden
OCCLUDED = 0.8
# the velocity learns only from steps whose area changed by less than this factor
STABLE = 0.9


@dataclass
class Track:
    """One object being followed: its id, label, last mask (subsampled), velocity, age."""

    id: int
    label: str
    mask: np.ndarray  # bool [h, w] on the subsampled grid, as last seen
    centre: np.ndarray  # (y, x) on the subsampled grid, as last seen
    velocity: np.ndarray  # (dy, dx) grid cells per frame, smoothed
    age: int = 0  # frames since it was last seen (0 = seen in the latest frame)
    hits: int = 1  # frames it was seen in


def shift_mask(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``mask`` moved by (dy, dx) cells; what leaves the grid is lost, new cells are False."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    src_y = slice(max(0, -dy), h - max(0, dy))
    dst_y = slice(max(0, dy), h - max(0, -dy))
    src_x = slice(max(0, -dx), w - max(0, dx))
    dst_x = slice(max(0, dx), w - max(0, -dx))
    out[dst_y, dst_x] = mask[src_y, src_x]
    return out


def mask_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every mask in ``a`` [N,...] with every mask in ``b`` [M,...] (bool) -> [N,M]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float64)
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0).astype(np.float64)


def suppress_duplicates(
    masks: np.ndarray,
    scores: np.ndarray,
    boxes: np.ndarray | None = None,
    iou: float = 0.8,
    stride: int = 2,
) -> np.ndarray:
    """Indices (ascending) of the instances to keep when several describe one object.

    One query can pass the score threshold for two prompts ("red circle", "orange
    circle"): two instances with the same mask. Going from the best score down, an instance
    is dropped when its mask overlaps a kept one by ``iou`` or more (on a ``stride`` grid).
    With ``boxes`` (xyxy), masks are compared only where the boxes intersect: separate
    objects cost nothing.
    """
    n = len(scores)
    if n < 2:
        return np.arange(n)
    if boxes is not None:
        b = np.asarray(boxes, dtype=np.float64)
        w = np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0])
        h = np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1])
        touching = (w > 0) & (h > 0)
    else:
        touching = np.ones((n, n), bool)
    np.fill_diagonal(touching, False)
    masks = np.asarray(masks)
    kept: list[int] = []
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        duplicate = False
        for k in (k for k in kept if touching[i, k]):
            window = (slice(None, None, stride), slice(None, None, stride))
            if boxes is not None:  # only the two boxes' union can hold either mask
                x0, y0 = np.floor(np.minimum(b[i, :2], b[k, :2])).astype(int).clip(0)
                x1, y1 = np.ceil(np.maximum(b[i, 2:], b[k, 2:])).astype(int)
                window = (slice(y0, y1, stride), slice(x0, x1, stride))
            if mask_iou_matrix(masks[i][window][None], masks[k][window][None])[0, 0] >= iou:
                duplicate = True
                break
        if not duplicate:
            kept.append(int(i))
    return np.sort(np.asarray(kept, dtype=np.int64))


def _centre(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return np.zeros(2)
    return np.array([ys.mean(), xs.mean()])


class InstanceTracker:
    """Assigns persistent ids (1, 2, ...) to instance masks, frame by frame.

    iou_gate: the least mask IoU (against the track's predicted mask) to continue a track.
    max_age: frames a track survives without a detection (then its id is retired).
    stride: masks are compared every ``stride`` pixels in both directions; 0 (default)
        picks it from the image size so the grid's long side is about 80 cells (320 px: 4,
        640x480: 8), which keeps the cost per frame independent of the camera.
    same_label: pair only detections and tracks with the same label.
    label_penalty: added to a pair's cost (1 - IoU) when the labels differ.
    smoothing: weight of the newest displacement in the velocity estimate (0..1].
    motion: predict masks by the velocity (False: a track waits where it was last seen;
        the ablation in benchmarks/RESULTS.md).
    """

    def __init__(
        self,
        iou_gate: float = 0.3,
        max_age: int = 15,
        stride: int = 0,
        same_label: bool = False,
        label_penalty: float = 0.1,
        smoothing: float = 0.6,
        motion: bool = True,
    ) -> None:
        if not 0.0 < iou_gate <= 1.0:
            raise ValueError(f"iou_gate must be in (0, 1], got {iou_gate}")
        if max_age < 0:
            raise ValueError(f"max_age must be >= 0, got {max_age}")
        if stride < 0:
            raise ValueError(f"stride must be >= 0 (0 = automatic), got {stride}")
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self.iou_gate, self.max_age, self.stride = float(iou_gate), int(max_age), int(stride)
        self.same_label, self.smoothing = bool(same_label), float(smoothing)
        self.label_penalty = float(label_penalty)
        self.motion = bool(motion)
        self.tracks: list[Track] = []
        self.next_id = 1
        self.frame_shape: tuple[int, int] | None = None

    def reset(self) -> None:
        """Forget every track (ids keep counting up, so an old id never comes back)."""
        self.tracks = []
        self.frame_shape = None

    def predicted(self, track: Track) -> np.ndarray:
        """The track's mask moved by its velocity over the frames since it was seen."""
        if not self.motion:
            return track.mask
        dy, dx = np.rint(track.velocity * (track.age + 1)).astype(int)
        return shift_mask(track.mask, int(dy), int(dx))

    def update(self, masks: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        """One frame: ``masks`` bool [N,H,W] and their ``labels`` -> ids int64 [N]."""
        masks = np.asarray(masks)
        if masks.ndim != 3 and not (masks.ndim == 1 and masks.size == 0):
            raise ValueError(f"masks must be [N,H,W], got shape {masks.shape}")
        n = 0 if masks.size == 0 and masks.ndim != 3 else masks.shape[0]
        if len(labels) != n:
            raise ValueError(f"{n} masks but {len(labels)} labels")
        if n and masks.shape[1:] != self.frame_shape:
            if self.frame_shape is not None:
                self.reset()
            self.frame_shape = masks.shape[1:]
        s = self.stride or max(1, max(masks.shape[1:]) // 80) if n else 1
        small = np.ascontiguousarray(masks[:, ::s, ::s], dtype=bool) if n else masks
        ids = np.zeros(n, np.int64)
        matched_tracks: set[int] = set()
        if n and self.tracks:
            pred = np.stack([self.predicted(t) for t in self.tracks])
            iou = mask_iou_matrix(small, pred)  # [N,T]
            ok = iou >= self.iou_gate
            track_labels = np.asarray([t.label for t in self.tracks])
            differ = np.asarray(labels)[:, None] != track_labels[None]
            if self.same_label:
                ok &= ~differ
            cost = np.where(ok, 1.0 - iou + self.label_penalty * differ, 1e6)
            from scipy.optimize import linear_sum_assignment  # ~0.6 s to import: not at start

            rows, cols = linear_sum_assignment(cost)
            for d, k in zip(rows, cols):
                if not ok[d, k]:
                    continue
                self._continue(self.tracks[k], small[d], str(labels[d]))
                ids[d] = self.tracks[k].id
                matched_tracks.add(k)
        for d in np.flatnonzero(ids == 0):
            track = Track(self.next_id, str(labels[d]), small[d], _centre(small[d]), np.zeros(2))
            self.next_id += 1
            self.tracks.append(track)
            matched_tracks.add(len(self.tracks) - 1)
            ids[d] = track.id
        survivors = []
        for k, track in enumerate(self.tracks):
            if k not in matched_tracks:
                track.age += 1
                if track.age > self.max_age:
                    continue
            survivors.append(track)
        self.tracks = survivors
        return ids

    def _continue(self, track: Track, mask: np.ndarray, label: str) -> None:
        """Update ``track`` with its new ``mask``. A mask much smaller than the track's
        (a partly hidden object: its visible part's centroid says little about where the
        object is) keeps the track's shape, moved by the motion model, and its velocity."""
        area, before = float(mask.sum()), float(track.mask.sum())
        if before > 0 and area < OCCLUDED * before:
            shift = track.velocity * (track.age + 1) if self.motion else np.zeros(2)
            dy, dx = np.rint(shift).astype(int)
            track.mask = shift_mask(track.mask, int(dy), int(dx))
            track.centre = track.centre + shift
        else:
            centre = _centre(mask)
            if before > 0 and STABLE * before <= area <= before / STABLE:  # a clean step
                step = (centre - track.centre) / (track.age + 1)
                a = self.smoothing if track.hits > 1 else 1.0
                track.velocity = a * step + (1.0 - a) * track.velocity
            track.mask, track.centre = mask, centre
        track.label = label
        track.age = 0
        track.hits += 1
