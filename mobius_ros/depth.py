"""Depth and camera_info messages -> arrays for ``mobius_core.geometry3d``, and the 3D
messages back: Detection3DArray, PointCloud2, 3D markers.

The node (``use_depth:=true``) synchronises ``image``, ``depth`` and ``camera_info`` with
``message_filters.ApproximateTimeSynchronizer`` (:class:`FrameSync`) and calls
:func:`frame_3d` on the worker thread after the 2D instances are known. Anything wrong with
the depth or the camera (encoding, size, focal length) is a :class:`DepthError`: the frame's
2D outputs go on, its instances carry no 3D, and the reason is counted in diagnostics.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mobius_core.geometry3d import Instance3D, Intrinsics, depth_to_metres
from mobius_core.geometry3d import instances_3d as _instances_3d

_DEPTH_DTYPES = {"16UC1": np.uint16, "mono16": np.uint16, "32FC1": np.float32}


class DepthError(ValueError):
    """A depth image or camera_info the node cannot use; the text says why and the fix."""


def depth_msg_to_metres(msg: Any) -> np.ndarray:
    """A ``sensor_msgs/Image`` depth (16UC1 millimetres or 32FC1 metres) -> float32 metres,
    NaN where there is no depth."""
    enc = msg.encoding
    if enc not in _DEPTH_DTYPES:
        raise DepthError(
            f"depth encoding {enc!r} is not supported: publish 16UC1 (millimetres) or 32FC1 "
            "(metres) registered to the colour image (e.g. a RealSense's "
            "aligned_depth_to_color/image_raw)"
        )
    h, w, step = msg.height, msg.width, msg.step
    dtype = np.dtype(_DEPTH_DTYPES[enc]).newbyteorder(">" if msg.is_bigendian else "<")
    row = w * dtype.itemsize
    if h <= 0 or w <= 0 or step < row or len(msg.data) < step * (h - 1) + row:
        raise DepthError(
            f"depth image {w}x{h} {enc} with step {step} and {len(msg.data)} bytes is "
            "malformed or truncated"
        )
    buf = np.frombuffer(msg.data, np.uint8)
    if len(buf) < step * h:
        buf = np.concatenate([buf, np.zeros(step * h - len(buf), np.uint8)])
    raw = buf[: step * h].reshape(h, step)[:, :row].copy().view(dtype).reshape(h, w)
    return depth_to_metres(raw, "16UC1" if enc == "mono16" else enc)


def camera_from_info(info: Any, image_hw: tuple[int, int]) -> Intrinsics:
    """The colour camera's intrinsics at the image's size from a ``sensor_msgs/CameraInfo``
    (its ``k``; a camera_info for another resolution of the same camera is scaled)."""
    h, w = image_hw
    iw, ih = int(info.width) or w, int(info.height) or h
    try:
        cam = Intrinsics.from_k(list(info.k), iw, ih)
    except ValueError as exc:
        raise DepthError(f"camera_info: {exc}") from None
    if (iw, ih) != (w, h):
        if abs(iw / w - ih / h) > 1e-3:
            raise DepthError(
                f"camera_info is for {iw}x{ih} but the image is {w}x{h}, another aspect "
                "ratio: publish the camera_info of the colour image"
            )
        cam = cam.scaled(w, h)
    return cam


@dataclass
class Frame3D:
    """The 3D of one frame's instances (None where the frame had a depth error)."""

    results: list[Instance3D] | None
    error: str = ""
    seconds: float = 0.0


def frame_3d(
    masks: np.ndarray, boxes: np.ndarray, depth_msg: Any, info: Any, options: dict[str, Any]
) -> Frame3D:
    """Every instance's 3D from the frame's depth and camera_info; a ``DepthError``
    becomes ``Frame3D(None, reason)``."""
    start = time.perf_counter()
    try:
        depth = depth_msg_to_metres(depth_msg)
        camera = camera_from_info(info, masks.shape[1:] if masks.ndim == 3 else (0, 0))
        results = _instances_3d(masks, boxes, depth, camera, **options)  # checks the size
    except (DepthError, ValueError) as exc:
        return Frame3D(None, str(exc), time.perf_counter() - start)
    return Frame3D(results, "", time.perf_counter() - start)


@dataclass
class DepthStats:
    """What diagnostics report about the 3D step."""

    frames: int = 0
    with_3d: int = 0
    without_3d: Counter = field(default_factory=Counter)  # reason -> instances
    errors: Counter = field(default_factory=Counter)  # reason -> frames
    last_error: str = ""
    seconds: float = 0.0

    def add(self, f: Frame3D, n: int) -> None:
        self.frames += 1
        self.seconds += f.seconds
        if f.results is None:
            self.errors[f.error.split(":")[0][:60]] += 1
            self.last_error = f.error
            self.without_3d["depth error"] += n
            return
        for r in f.results:
            if r.has_3d:
                self.with_3d += 1
            else:
                self.without_3d[r.reason] += 1


class FrameSync:
    """image (or its compressed transport), depth and camera_info through
    ``message_filters.ApproximateTimeSynchronizer``: ``callback(image, depth, info)`` for
    each matched triple. It remembers the newest stamp of each stream so the node can say
    how far apart they are when nothing matches (:meth:`out_of_sync`); while nothing has
    matched for ``fallback_after`` seconds, each image goes on alone as
    ``callback(image, None, None)`` (2D only) until the streams match again."""

    def __init__(
        self, node: Any, image_type: type, image_topic: str, depth_topic: str,
        info_topic: str, qos: Any, queue: int, slop: float, callback: Callable,
        fallback_after: float = 5.0,
    ) -> None:  # fmt: skip
        try:
            import message_filters
        except ImportError:
            raise RuntimeError(
                "use_depth needs message_filters (every ROS 2 install has it: "
                "ros-<distro>-message-filters); install it or set use_depth:=false"
            ) from None
        from sensor_msgs.msg import CameraInfo, Image

        self.node = node
        self.subs = [
            message_filters.Subscriber(node, image_type, image_topic, qos_profile=qos),
            message_filters.Subscriber(node, Image, depth_topic, qos_profile=qos),
            message_filters.Subscriber(node, CameraInfo, info_topic, qos_profile=qos),
        ]
        self.newest: list[float | None] = [None, None, None]
        for i, s in enumerate(self.subs):
            s.registerCallback(self._saw, i)
        self.sync = message_filters.ApproximateTimeSynchronizer(self.subs, queue, slop)
        self.sync.registerCallback(self._matched)
        self.callback, self.fallback_after = callback, fallback_after
        self.last_match = time.monotonic()
        self.matched = self.alone = 0

    def _saw(self, msg: Any, i: int) -> None:
        self.newest[i] = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        if i == 0 and time.monotonic() - self.last_match >= self.fallback_after:
            self.alone += 1  # out of sync for a while: the 2D outputs go on
            self.callback(msg, None, None)

    def _matched(self, image: Any, depth: Any, info: Any) -> None:
        self.matched += 1
        self.last_match = time.monotonic()
        self.callback(image, depth, info)

    def out_of_sync(self, after: float) -> str | None:
        """A warning when images arrived but no triple matched for ``after`` seconds."""
        if self.newest[0] is None or time.monotonic() - self.last_match < after:
            return None
        names = ("image", "depth", "camera_info")
        missing = [n for n, t in zip(names, self.newest) if t is None]
        if missing:
            return (f"no {' or '.join(missing)} message in {after:.0f} s while images arrive: "
                    f"check the topics ({', '.join(s.topic for s in self.subs)})")  # fmt: skip
        img = self.newest[0]
        offsets = ", ".join(f"{n} {t - img:+.3f} s" for n, t in zip(names[1:], self.newest[1:]))
        return (
            f"image, depth and camera_info have not matched within sync_slop for {after:.0f} s; "
            f"newest stamps relative to the image: {offsets}: raise sync_slop or fix the "
            "clocks / stamps of the depth camera"
        )

    def destroy(self) -> None:
        for s in self.subs:
            self.node.destroy_subscription(s.sub)
        self.subs = []


def points_cloud(header: Any, results: Sequence[Instance3D | None], ids: Sequence[int]) -> Any:
    """sensor_msgs/PointCloud2 of the instances' inlier points: float32 x, y, z and uint32
    id (the instance id), little-endian, unorganised."""
    from sensor_msgs.msg import PointCloud2, PointField

    parts = [(r.cloud, i) for r, i in zip(results, ids) if r is not None and r.cloud is not None]
    n = sum(len(c) for c, _ in parts)
    rec = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("id", "<u4")])
    k = 0
    for c, i in parts:
        rec["x"][k : k + len(c)], rec["y"][k : k + len(c)], rec["z"][k : k + len(c)] = c.T
        rec["id"][k : k + len(c)] = i
        k += len(c)
    fields = [PointField(name=name, offset=4 * j, datatype=dt, count=1)
              for j, (name, dt) in enumerate((("x", PointField.FLOAT32),
                                              ("y", PointField.FLOAT32),
                                              ("z", PointField.FLOAT32),
                                              ("id", PointField.UINT32)))]  # fmt: skip
    return PointCloud2(header=header, height=1, width=n, fields=fields, is_bigendian=False,
                       point_step=16, row_step=16 * n, data=rec.tobytes(),
                       is_dense=True)  # fmt: skip


def depth_image_msg(depth: np.ndarray, header: Any = None) -> Any:
    """A ``sensor_msgs/Image`` of a depth array: uint16 -> 16UC1 (millimetres), float32 ->
    32FC1 (metres), little-endian."""
    from sensor_msgs.msg import Image

    depth = np.ascontiguousarray(depth)
    encoding = {np.dtype(np.uint16): "16UC1", np.dtype(np.float32): "32FC1"}.get(depth.dtype)
    if encoding is None or depth.ndim != 2:
        raise ValueError(f"a depth image is uint16 mm or float32 m [H, W], got {depth.dtype} "
                         f"{depth.shape}")  # fmt: skip
    h, w = depth.shape
    data = depth.astype(depth.dtype.newbyteorder("<")).tobytes()
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=0,
                step=w * depth.itemsize, data=data)  # fmt: skip
    if header is not None:
        msg.header = header
    return msg


def camera_info_msg(camera: Intrinsics, header: Any = None) -> Any:
    """A ``sensor_msgs/CameraInfo`` of an undistorted pinhole camera."""
    from sensor_msgs.msg import CameraInfo

    k = [camera.fx, 0.0, camera.cx, 0.0, camera.fy, camera.cy, 0.0, 0.0, 1.0]
    p = [camera.fx, 0.0, camera.cx, 0.0, 0.0, camera.fy, camera.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg = CameraInfo(width=camera.width, height=camera.height, distortion_model="plumb_bob",
                     d=[0.0] * 5, k=k, p=p, r=r)  # fmt: skip
    if header is not None:
        msg.header = header
    return msg
