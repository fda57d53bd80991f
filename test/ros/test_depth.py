"""mobius_ros.depth without a node: depth and camera_info messages to arrays, the 3D step's
errors and counts, PointCloud2 layout, and the clear refusal without message_filters."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg", reason="the ROS 2 message wheels are missing")

from mobius_core.geometry3d import Instance3D, Intrinsics
from mobius_ros.depth import (
    DepthError,
    DepthStats,
    FrameSync,
    camera_from_info,
    camera_info_msg,
    depth_image_msg,
    depth_msg_to_metres,
    frame_3d,
    points_cloud,
)

CAM = Intrinsics(525.0, 525.0, 319.5, 239.5, 640, 480)


def test_depth_messages_round_trip_with_padding_and_byte_order():
    mm = np.arange(12, dtype=np.uint16).reshape(3, 4) * 500
    msg = depth_image_msg(mm)
    assert msg.encoding == "16UC1" and msg.step == 8
    got = depth_msg_to_metres(msg)
    assert np.isnan(got[0, 0]) and got[2, 3] == pytest.approx(5.5)
    # rows padded to 10 bytes, big-endian: the same metres
    padded = b"".join(r.astype(">u2").tobytes() + b"\0\0" for r in mm)
    msg.step, msg.is_bigendian, msg.data = 10, 1, padded
    np.testing.assert_array_equal(depth_msg_to_metres(msg), got)
    m = depth_msg_to_metres(depth_image_msg(mm.astype(np.float32) / 1000))
    np.testing.assert_allclose(m[1:], got[1:], rtol=1e-6)
    msg.data = padded[:-12]  # truncated
    with pytest.raises(DepthError, match="malformed or truncated"):
        depth_msg_to_metres(msg)
    msg.encoding = "rgb8"
    with pytest.raises(DepthError, match=r"16UC1.*32FC1"):
        depth_msg_to_metres(msg)


def test_camera_info_is_checked_and_scaled_to_the_image():
    info = camera_info_msg(CAM)
    assert camera_from_info(info, (480, 640)) == CAM
    assert camera_from_info(info, (240, 320)) == CAM.scaled(320, 240)
    with pytest.raises(DepthError, match="another aspect ratio"):
        camera_from_info(info, (480, 480))
    info.k = [0.0] * 9
    with pytest.raises(DepthError, match=r"camera_info: .*focal lengths"):
        camera_from_info(info, (480, 640))


def test_a_bad_frame_is_a_reason_not_an_exception_and_is_counted():
    masks = np.zeros((2, 480, 640), bool)
    masks[0, 100:200, 100:200] = True
    masks[1, 300:302, 300:302] = True  # 4 pixels: too few
    boxes = np.array([[100, 100, 199, 199], [300, 300, 301, 301]], np.float32)
    depth = depth_image_msg(np.full((480, 640), 2000, np.uint16))
    stats = DepthStats()
    f = frame_3d(masks, boxes, depth, camera_info_msg(CAM), {})
    stats.add(f, 2)
    assert [r.has_3d for r in f.results] == [True, False] and f.error == ""
    r = f.results[0]  # a flat patch at 2 m, 0.38 m wide: its box starts at the patch
    assert r.center[2] - r.size[2] / 2 == pytest.approx(2.0, abs=1e-3)
    assert r.size[0] == pytest.approx(100 * 2.0 / 525, rel=0.05) == r.size[2]
    bad = depth_image_msg(np.full((300, 400), 2000, np.uint16))
    g = frame_3d(masks, boxes, bad, camera_info_msg(CAM), {})
    stats.add(g, 2)
    assert g.results is None and "whole multiple" in g.error
    assert stats.frames == 2 and stats.with_3d == 1
    assert stats.without_3d == {"too few pixels with valid depth": 1, "depth error": 2}
    assert sum(stats.errors.values()) == 1 and "whole multiple" in stats.last_error


def test_point_cloud_layout():
    from std_msgs.msg import Header

    pts = np.array([[0.1, 0.2, 1.0], [0.3, 0.4, 2.0]], np.float32)
    results = [Instance3D(True, np.zeros(3), np.zeros(3), 2, "", pts), None,
               Instance3D(True, np.zeros(3), np.zeros(3), 1, "", pts[:1])]  # fmt: skip
    msg = points_cloud(Header(frame_id="camera"), results, [7, 8, 9])
    assert msg.width == 3 and msg.height == 1 and msg.row_step == 48
    rec = np.frombuffer(bytes(msg.data), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                                ("id", "<u4")])  # fmt: skip
    assert rec["id"].tolist() == [7, 7, 9] and rec["z"].tolist() == [1.0, 2.0, 1.0]
    assert [(f.name, f.offset) for f in msg.fields] == [("x", 0), ("y", 4), ("z", 8), ("id", 12)]


def test_use_depth_without_message_filters_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "message_filters", None)  # import fails
    with pytest.raises(RuntimeError, match="use_depth needs message_filters"):
        FrameSync(None, object, "image", "depth", "camera_info", None, 10, 0.05, print)
