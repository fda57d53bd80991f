"""Instance masks + a registered depth image + pinhole intrinsics -> each instance in 3D.

No ROS here: the node converts ``sensor_msgs`` to the arrays below (``mobius_ros.depth``).

Frames and units: the optical frame of the colour camera (x right, y down, z forward),
metres. A depth image registered to the colour image gives, for a colour pixel (u, v) with
depth z, the point ((u - cx) z / fx, (v - cy) z / fy, z) (pixel centres at integer u, v: the
ROS/OpenCV convention).

Per instance (``instance_3d``):

1. the mask is eroded by ``erode`` pixels, so edge pixels whose depth falls on the
   background (depth edges rarely line up with colour edges) do not pull the estimate;
2. depth values that are zero, NaN or outside ``depth_range`` are ignored;
3. the points whose depth lies within ``gate`` robust deviations (MAD) of the median depth
   are the inliers (what is left of the background or of an occluder goes);
4. the extent is the axis-aligned box (in the optical frame) from the ``trim`` and
   ``100 - trim`` percentiles of the inliers' x, y and z: noise at the rim does not widen it;
5. ``extent="completed"`` (the default): a camera sees only the front of a solid, so the
   inliers' z spread is the depth of the visible surface, not of the object (a cube seen
   face-on has none). The box is then extended away from the camera until its depth is at
   least the smaller of its width and height: the prior that objects are about as deep as
   they are wide. ``extent="visible"`` reports the visible surface's box as it is; the A/B
   is in benchmarks/RESULTS.md.

The centre is the box's centre. Fewer than ``min_points`` valid pixels: no 3D, with the
reason (``NO_DEPTH`` reasons, counted by the node's diagnostics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

EXTENTS = ("completed", "visible")

# why an instance has no 3D (the node counts each in its diagnostics)
TOO_FEW = "too few pixels with valid depth"
NO_DEPTH_REASONS = (TOO_FEW,)


@dataclass(frozen=True)
class Intrinsics:
    """A pinhole camera: focal lengths and principal point in pixels of a ``width`` x
    ``height`` image."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        values = (self.fx, self.fy, self.cx, self.cy)
        if not all(np.isfinite(values)) or self.fx <= 0 or self.fy <= 0:
            raise ValueError(
                f"camera intrinsics fx={self.fx}, fy={self.fy}, cx={self.cx}, cy={self.cy}: "
                "the focal lengths must be finite and positive (is the camera calibrated? "
                "camera_info K = [fx 0 cx; 0 fy cy; 0 0 1])"
            )
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera size {self.width}x{self.height} must be positive")

    @classmethod
    def from_k(cls, k, width: int, height: int) -> Intrinsics:
        """From a row-major 3x3 camera matrix (``CameraInfo.k``)."""
        k = [float(v) for v in k]
        if len(k) != 9:
            raise ValueError(f"a camera matrix has 9 values, got {len(k)}")
        return cls(k[0], k[4], k[2], k[5], int(width), int(height))

    def scaled(self, width: int, height: int) -> Intrinsics:
        """The same camera at another image size (a binned or resized stream)."""
        if (width, height) == (self.width, self.height):
            return self
        sx, sy = width / self.width, height / self.height
        # pixel centres: u' + 0.5 = (u + 0.5) * s
        return Intrinsics(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5,
                          (self.cy + 0.5) * sy - 0.5, int(width), int(height))  # fmt: skip


@dataclass
class Instance3D:
    """One instance in 3D (metres, optical frame). ``reason`` says why it has none."""

    has_3d: bool
    center: np.ndarray  # (3,)
    size: np.ndarray  # (3,) extent of the axis-aligned box
    points: int  # valid depth pixels used (inliers; counted on the grid when sampled)
    reason: str = ""
    cloud: np.ndarray | None = None  # [P, 3] inlier points (with ``keep_points``)


def depth_to_metres(depth: np.ndarray, encoding: str) -> np.ndarray:
    """A depth image (``16UC1`` millimetres, ``32FC1`` metres) -> float32 metres with NaN
    where there is no depth (0 or not finite)."""
    if encoding in ("16UC1", "mono16"):
        out = np.asarray(depth, dtype=np.float32) * np.float32(1e-3)
        out[depth == 0] = np.nan
        return out
    if encoding == "32FC1":
        out = np.array(depth, dtype=np.float32)
        out[~(out > 0) | ~np.isfinite(out)] = np.nan
        return out
    raise ValueError(
        f"depth encoding {encoding!r} is not supported: give 16UC1 (millimetres) or 32FC1 "
        "(metres), registered to the colour image"
    )


def depth_factor(depth_hw: tuple[int, int], colour_hw: tuple[int, int]) -> tuple[int, int]:
    """(down, up): the depth image is the colour size divided by ``down`` or multiplied by
    ``up`` (one of them is 1); ValueError when the sizes are not related by a whole factor."""
    (dh, dw), (ch, cw) = depth_hw, colour_hw
    if dh and dw and ch % dh == 0 and cw % dw == 0 and ch // dh == cw // dw:
        return ch // dh, 1
    if ch and cw and dh % ch == 0 and dw % cw == 0 and dh // ch == dw // cw:
        return 1, dh // ch
    raise ValueError(
        f"the depth image is {dw}x{dh} and the colour image {cw}x{ch}: one must be a whole "
        "multiple of the other (register the depth to the colour camera, e.g. "
        "align_depth:=true on a RealSense)"
    )


def erode(mask: np.ndarray, r: int) -> np.ndarray:
    """``mask`` (bool [h, w]) eroded ``r`` times by the 4-neighbourhood (outside is False)."""
    m = mask
    for _ in range(r):
        e = m.copy()
        e[1:] &= m[:-1]
        e[:-1] &= m[1:]
        e[:, 1:] &= m[:, :-1]
        e[:, :-1] &= m[:, 1:]
        e[0, :] = e[-1, :] = False
        e[:, 0] = e[:, -1] = False
        m = e
    return m


def _quantiles(a: np.ndarray, qs) -> np.ndarray:
    """Nearest-rank quantiles (percent) of ``a`` along axis 0: one partition, no sort."""
    k = np.clip(np.rint(np.asarray(qs, float) / 100.0 * (len(a) - 1)).astype(int), 0, len(a) - 1)
    return np.partition(a, k, axis=0)[k]


def _crop(mask: np.ndarray, box) -> tuple[int, int, int, int]:
    """Integer bounds (y0, y1, x0, x1) holding the mask: its box when given, else its
    non-zero rows and columns."""
    h, w = mask.shape
    if box is not None:
        x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
        x1, y1 = min(w, int(np.ceil(box[2])) + 1), min(h, int(np.ceil(box[3])) + 1)
        if x1 > x0 and y1 > y0:
            return y0, y1, x0, x1
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return 0, 0, 0, 0
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def instance_3d(
    mask: np.ndarray,
    depth: np.ndarray,
    camera: Intrinsics,
    box=None,
    erode_px: int = 2,
    min_points: int = 30,
    depth_range: tuple[float, float] = (0.1, 20.0),
    gate: float = 3.0,
    trim: float = 0.2,
    extent: str = "completed",
    keep_points: bool = False,
    max_points: int = 1500,
) -> Instance3D:
    """One instance's 3D (see the module notes). ``mask``: bool [H, W] at the colour
    resolution ``camera`` describes; ``depth``: float metres, NaN where none, at that size
    or a whole factor of it (``depth_factor``); ``box``: its xyxy box in pixels (a crop);
    ``max_points``: masks with more pixels are sampled on a regular grid (0: every pixel)."""
    if extent not in EXTENTS:
        raise ValueError(f"extent must be one of {EXTENTS}, got {extent!r}")
    down, up = depth_factor(depth.shape[:2], mask.shape)
    y0, y1, x0, x1 = _crop(mask, box)
    m = mask[y0:y1, x0:x1]
    eroded_by = 0
    if m.size and erode_px:
        pad = np.zeros((m.shape[0] + 2, m.shape[1] + 2), bool)  # the image edge is no edge
        pad[1:-1, 1:-1] = m
        eroded = erode(pad, erode_px)[1:-1, 1:-1]
        if np.count_nonzero(eroded) >= min_points:  # a thin object keeps its whole mask
            m, eroded_by = eroded, erode_px
    step = max(1, int(np.ceil(np.sqrt(np.count_nonzero(m) / max_points)))) if max_points else 1
    vs, us = np.nonzero(m[::step, ::step])  # a big mask: a grid of about max_points pixels
    vs, us = vs * step + y0, us * step + x0
    if down > 1:  # depth at a lower resolution: the depth pixel each colour pixel lies in
        z = depth[vs // down, us // down]
    elif up > 1:  # a finer depth image: the one at each colour pixel's centre
        z = depth[vs * up + up // 2, us * up + up // 2]
    else:
        z = depth[vs, us]
    lo, hi = depth_range
    ok = (z >= lo) & (z <= hi)  # NaN compares False
    z, us, vs = z[ok], us[ok], vs[ok]
    none = Instance3D(False, np.zeros(3), np.zeros(3), len(z), TOO_FEW)
    if len(z) < min_points:
        return none
    med = float(_quantiles(z, [50])[0])
    mad = 1.4826 * float(_quantiles(np.abs(z - med), [50])[0])
    # a curved or slanted surface spreads its depths by up to its size: no point closer to
    # the median than the mask's width (at the median depth) is an outlier
    width = min(np.ptp(us) / camera.fx, np.ptp(vs) / camera.fy) * med
    inl = np.abs(z - med) <= max(gate * mad, width, 0.005 * med)
    if np.count_nonzero(inl) < min_points:
        return none
    z, us, vs = z[inl], us[inl].astype(np.float32), vs[inl].astype(np.float32)
    pts = np.stack([(us - camera.cx) * z / camera.fx, (vs - camera.cy) * z / camera.fy, z], 1)
    lo3, hi3 = _quantiles(pts, [trim, 100.0 - trim]).astype(np.float64)
    if eroded_by:  # give back the pixels the erosion took from each side
        grow = eroded_by * med / np.array([camera.fx, camera.fy])
        lo3[:2] -= grow
        hi3[:2] += grow
    if extent == "completed":
        hi3[2] = max(hi3[2], lo3[2] + min(hi3[0] - lo3[0], hi3[1] - lo3[1]))
    return Instance3D(True, (lo3 + hi3) / 2, hi3 - lo3, len(z) * step * step, "",
                      pts.astype(np.float32) if keep_points else None)  # fmt: skip


def iou_3d(center, size, box3d) -> float:
    """IoU of the axis-aligned boxes ``center +- size/2`` and ``box3d`` ((2, 3): min, max)."""
    center, size, box3d = (np.asarray(a, float) for a in (center, size, box3d))
    lo, hi = center - size / 2, center + size / 2
    inter = np.prod(np.clip(np.minimum(hi, box3d[1]) - np.maximum(lo, box3d[0]), 0, None))
    union = np.prod(size) + np.prod(box3d[1] - box3d[0]) - inter
    return float(inter / union) if union > 0 else 0.0


def summarise_3d(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and shares of rows, one per ground-truth object (``matched``, ``has_3d`` and,
    with 3D, ``error`` m, ``rel_error`` share of the distance, ``iou3d``; as
    ``mobius_ros.replay.match_3d`` makes them); centre error median / p90 (m and as a share
    of the distance) and the median 3D IoU over the matched ones with 3D (None where there
    are none)."""
    matched = [r for r in rows if r["matched"]]
    got = [r for r in matched if r["has_3d"]]

    def pct(key: str, q: float) -> float | None:
        return float(np.percentile([r[key] for r in got], q)) if got else None

    return {
        "gt_objects": len(rows), "matched": len(matched),
        "matched_share": len(matched) / len(rows) if rows else None,
        "with_3d": len(got), "with_3d_share": len(got) / len(matched) if matched else None,
        "centre_error_m_median": pct("error", 50), "centre_error_m_p90": pct("error", 90),
        "centre_error_rel_median": pct("rel_error", 50),
        "centre_error_rel_p90": pct("rel_error", 90), "iou3d_median": pct("iou3d", 50),
    }  # fmt: skip


def instances_3d(masks, boxes, depth, camera: Intrinsics, **options) -> list[Instance3D]:
    """``instance_3d`` of every mask in ``masks`` [N, H, W] with its box in ``boxes``."""
    boxes = [None] * len(masks) if boxes is None else boxes
    return [instance_3d(m, depth, camera, b, **options) for m, b in zip(masks, boxes)]
