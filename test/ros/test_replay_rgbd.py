"""RGB-D bags and replay with depth: ``make_bag(rgbd=True)`` writes image, registered depth
and the scenes' camera_info at equal stamps with 3D ground truth; replaying such a bag runs
the node with use_depth and the report gains a "3d" section, whose matching and metrics are
checked exactly on hand-made inputs. Traffic stays on this machine (LOCALHOST, a
ROS_DOMAIN_ID of its own)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from mobius_core.data.rgbd import RGBD_CATEGORIES
from mobius_core.geometry3d import iou_3d, summarise_3d
from mobius_ros.bags import (
    DEPTH_TOPIC,
    IMAGE_TOPIC,
    INFO_TOPIC,
    ReadReport,
    bag_topics,
    make_bag,
    read_messages,
)
from mobius_ros.replay import (
    StampMatcher,
    depth_topics,
    match_3d,
    section_3d_table,
)

DOMAIN = 20 + (os.getpid() + 50) % 60


@pytest.fixture(scope="module")
def rgbd_bag(tmp_path_factory):
    return make_bag(tmp_path_factory.mktemp("rgbd"), frames=3, seed=0, rgbd=True)


def test_make_bag_rgbd_writes_image_depth_and_camera_info_at_equal_stamps(rgbd_bag):
    from mobius_core.data.rgbd import rgbd_scenes

    bag, gt_path = rgbd_bag
    assert bag_topics(bag) == {IMAGE_TOPIC: "sensor_msgs/msg/Image",
                               DEPTH_TOPIC: "sensor_msgs/msg/Image",
                               INFO_TOPIC: "sensor_msgs/msg/CameraInfo"}  # fmt: skip
    msgs = {t: list(read_messages(bag, t, ReadReport())) for t in (IMAGE_TOPIC, DEPTH_TOPIC,
                                                                   INFO_TOPIC)}  # fmt: skip
    stamps = {t: [m.stamp_ns for m in ms] for t, ms in msgs.items()}
    assert len(stamps[IMAGE_TOPIC]) == 3
    assert stamps[IMAGE_TOPIC] == stamps[DEPTH_TOPIC] == stamps[INFO_TOPIC]
    gt = json.loads(gt_path.read_text())
    assert [im["timestamp_ns"] for im in gt["images"]] == stamps[IMAGE_TOPIC]
    assert [c["name"] for c in gt["categories"]] == list(RGBD_CATEGORIES)
    scenes = list(rgbd_scenes(3, 0))
    for scene, image, depth, info in zip(scenes, *msgs.values()):
        cam = scene.camera
        assert (image.msg.width, image.msg.height, image.msg.encoding) == (640, 480, "rgb8")
        assert (depth.msg.encoding, depth.msg.step) == ("16UC1", 2 * 640)
        got = np.frombuffer(np.asarray(depth.msg.data).tobytes(), "<u2").reshape(480, 640)
        np.testing.assert_array_equal(got, scene.depth_mm)  # registered: pixel for pixel
        np.testing.assert_allclose(info.msg.k, [cam.fx, 0, cam.cx, 0, cam.fy, cam.cy, 0, 0, 1])
    anns = gt["annotations"]
    want = sum(1 for s in scenes for o in s.objects if o.area > 0)
    assert len(anns) == want > 0
    first = next(o for o in scenes[0].objects if o.area > 0)
    a = anns[0]
    assert gt["categories"][a["category_id"] - 1]["name"] == first.name
    assert isinstance(a["segmentation"]["counts"], str)  # COCO compressed RLE
    np.testing.assert_allclose(a["center_3d"], first.center, atol=1e-6)
    np.testing.assert_allclose(a["box3d"], first.box3d, atol=1e-6)
    assert a["distance"] == pytest.approx(first.distance, abs=1e-6)
    assert a["visible_fraction"] == pytest.approx(first.visible_fraction, abs=1e-6)


def test_depth_topics_default_to_the_bags_depth_and_name_what_is_missing(rgbd_bag, tmp_path):
    bag, _ = rgbd_bag
    assert depth_topics(bag) == (DEPTH_TOPIC, INFO_TOPIC)
    assert depth_topics(bag, "none") is None
    with pytest.raises(ValueError, match="not in the bag"):
        depth_topics(bag, "/aligned_depth")
    with pytest.raises(ValueError, match="--camera-info-topic"):
        depth_topics(bag, DEPTH_TOPIC, "/other/camera_info")
    with pytest.raises(ValueError, match="is sensor_msgs/msg/CameraInfo"):
        depth_topics(bag, INFO_TOPIC)
    plain, _ = make_bag(tmp_path, frames=1, size=(32, 32))
    assert depth_topics(plain) is None  # no depth: 2D replay as before


def test_stamp_matcher_takes_the_nearest_within_the_offset():
    from types import SimpleNamespace

    stream = [SimpleNamespace(stamp_ns=s) for s in (0, 100, 200, 400)]
    m = StampMatcher(iter(stream), max_offset_ns=30)
    assert m.take(0).stamp_ns == 0
    assert m.take(110).stamp_ns == 100
    assert m.take(300) is None  # 200 and 400 are 100 away
    assert m.take(395).stamp_ns == 400
    assert m.take(1000) is None
    anything = StampMatcher(iter(stream))  # no limit (a camera_info recorded seldom)
    assert anything.take(10_000).stamp_ns == 400


def _box_mask(x0, y0, x1, y1, shape=(20, 20)):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_match_3d_and_summary_on_hand_made_objects():
    assert iou_3d([0, 0, 0], [2, 2, 2], [[0, 0, 0], [2, 2, 2]]) == pytest.approx(1 / 15)
    gts = [
        # matched (IoU 0.8 against the 10x10 square), 3D off by (0.03, 0, 0.04) at distance 2.5
        {"label": "red cube", "mask": _box_mask(0, 0, 10, 10), "center_3d": [0, 0, 2.5],
         "box3d": [[-0.5, -0.5, 2.0], [0.5, 0.5, 3.0]], "distance": 2.5,
         "visible_fraction": 1.0},
        # the instance with the same mask has another label; the one of its label overlaps
        # too little (IoU 0.25)
        {"label": "blue cone", "mask": _box_mask(10, 10, 20, 20), "center_3d": [1, 1, 4],
         "box3d": [[0.5, 0.5, 3.5], [1.5, 1.5, 4.5]], "distance": math.sqrt(18),
         "visible_fraction": 0.95},
        # matched but without 3D; partly hidden
        {"label": "green sphere", "mask": _box_mask(0, 10, 10, 20), "center_3d": [0, 1, 3],
         "box3d": [[-0.2, 0.8, 2.8], [0.2, 1.2, 3.2]], "distance": math.sqrt(10),
         "visible_fraction": 0.5},
    ]  # fmt: skip
    insts = [
        {"label": "red cube", "mask": _box_mask(0, 0, 10, 8), "has_3d": True,
         "center": [0.03, 0, 2.54], "size": [1, 1, 1]},
        {"label": "red cube", "mask": _box_mask(0, 0, 4, 4), "has_3d": True,
         "center": [9, 9, 9], "size": [1, 1, 1]},  # lower IoU: not the match
        {"label": "red cube", "mask": _box_mask(10, 10, 20, 20), "has_3d": True,
         "center": [1, 1, 4], "size": [1, 1, 1]},
        {"label": "blue cone", "mask": _box_mask(10, 10, 15, 15), "has_3d": True,
         "center": [1, 1, 4], "size": [1, 1, 1]},
        {"label": "green sphere", "mask": _box_mask(0, 10, 10, 20), "has_3d": False,
         "center": [0, 0, 0], "size": [0, 0, 0]},
    ]  # fmt: skip
    rows = match_3d(gts, insts)
    assert [r["matched"] for r in rows] == [True, False, True]
    assert [r["has_3d"] for r in rows] == [True, False, False]
    assert rows[0]["mask_iou"] == pytest.approx(0.8) and rows[1]["mask_iou"] == pytest.approx(0.25)
    assert rows[0]["error"] == pytest.approx(0.05)
    assert rows[0]["rel_error"] == pytest.approx(0.02)
    # boxes [-0.47, 0.53] x [-0.5, 0.5] x [2.04, 3.04] and the unit cube at [2, 3]
    assert rows[0]["iou3d"] == pytest.approx((0.97 * 0.96) / (2 - 0.97 * 0.96))
    s = summarise_3d(rows)
    assert s == {
        "gt_objects": 3, "matched": 2, "matched_share": pytest.approx(2 / 3), "with_3d": 1,
        "with_3d_share": 0.5, "centre_error_m_median": pytest.approx(0.05),
        "centre_error_m_p90": pytest.approx(0.05), "centre_error_rel_median": pytest.approx(0.02),
        "centre_error_rel_p90": pytest.approx(0.02), "iou3d_median": rows[0]["iou3d"],
    }  # fmt: skip
    visible = summarise_3d([r for r in rows if r["visible_fraction"] >= 0.9])
    assert (visible["gt_objects"], visible["matched"], visible["with_3d"]) == (2, 1, 1)
    # nothing matched: counts, and None (not NaN) where there is nothing to take
    empty = summarise_3d(match_3d(gts[1:2], []))
    assert empty["matched"] == 0 and empty["with_3d_share"] is None
    assert empty["centre_error_m_median"] is None and summarise_3d([])["matched_share"] is None
    # percentiles over several: median and p90 as numpy's linear interpolation
    many = [{"matched": True, "has_3d": True, "error": e, "rel_error": e / 10, "iou3d": e / 10}
            for e in (1.0, 2.0, 3.0, 4.0)]  # fmt: skip
    s = summarise_3d(many)
    assert s["centre_error_m_median"] == 2.5 and s["centre_error_m_p90"] == pytest.approx(3.7)
    table = section_3d_table({"visible_min": 0.9, "all": s, "fully_visible": empty})
    assert len(table) == 4 and "| 4 (100%) |" in table[2] and "| - / - |" in table[3]


@pytest.mark.ros
def test_replaying_an_rgbd_bag_gives_the_3d_section(rgbd_bag, tmp_path):
    try:
        import message_filters  # noqa: F401
        import rclpy  # noqa: F401
        from mobius_ros.msg import InstanceArray  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"rclpy, message_filters or the built interfaces are missing ({exc}); "
                    "run `make ros` (message_filters: `make ros-extras`)")  # fmt: skip
    from mobius_ros.replay import run_replay

    bag, gt_path = rgbd_bag
    report = run_replay(bag, IMAGE_TOPIC, tmp_path / "out", None, None, gt_path,
                        domain_id=DOMAIN, timeout_s=60)  # fmt: skip
    assert report["status"] == "complete"
    assert report["frames"] == report["outputs"] == 3, report["problems"]
    assert report["depth"] == {"depth_topic": DEPTH_TOPIC, "camera_info_topic": INFO_TOPIC,
                               "frames_with_depth": 3, "frames_without_depth": 0,
                               "frames_without_camera_info": 0}  # fmt: skip
    s3 = report["3d"]
    gt = json.loads(gt_path.read_text())
    assert s3["over"] == "frames read" and s3["all"]["gt_objects"] == len(gt["annotations"])
    for part in ("all", "fully_visible"):
        t = s3[part]
        assert 0 <= t["matched"] <= t["gt_objects"] and 0 <= t["with_3d"] <= t["matched"]
        values = [v for v in t.values() if v is not None]
        assert all(math.isfinite(v) for v in values), t
        if t["with_3d"]:  # the matched ones are placed about right (loose)
            assert t["centre_error_rel_median"] < 0.15 and t["iou3d_median"] > 0.1, t
    assert s3["depth_step_ms"] is not None and s3["depth_step_ms"] >= 0
    assert all("with_3d" in f for f in report["per_frame"])
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["3d"] == json.loads(json.dumps(s3))
    assert "3D against the ground truth" in (tmp_path / "out" / "report.md").read_text()
