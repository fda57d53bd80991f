"""The installed node with ``use_depth:=true``: image + depth + camera_info of a known RGB-D
scene in, each instance's 3D out (InstanceArray, detections_3d, points, 3D markers); bad
depth, bad camera_info and streams out of sync cost the 3D only, with a reason in
/diagnostics. Traffic stays on this machine (LOCALHOST, a ROS_DOMAIN_ID of its own)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from mobius_ros.harness import Harness, ros_list, start_node, stop
from mobius_ros.localenv import local_ros_env

pytestmark = pytest.mark.ros

DOMAIN = 20 + (os.getpid() + 7) % 60
NODE_EXE = Path(sys.prefix) / "lib" / "mobius_ros" / "mobius_node"  # installed by `make ros`
CENTRE, SIDE = np.array([0.2, 0.05, 1.6]), 0.3  # a face-on cube, fully visible


@pytest.fixture(scope="module")
def scene():
    from mobius_core.data.rgbd import render_single

    return render_single("cube", "blue", tuple(CENTRE), SIDE, noise=True,
                         rng=np.random.default_rng(3))  # fmt: skip


@pytest.fixture(scope="module")
def ros(tmp_path_factory):
    os.environ.update(local_ros_env(DOMAIN))
    try:
        import message_filters  # noqa: F401
        import rclpy
        from mobius_ros.msg import InstanceArray  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"rclpy, message_filters or the built interfaces are missing ({exc}); "
                    "run `make ros` (message_filters: `make ros-extras`)")  # fmt: skip
    if not NODE_EXE.is_file():
        pytest.skip(f"{NODE_EXE} is not installed; run `make ros`")
    log = tmp_path_factory.mktemp("node") / "node.log"
    params = {"prompts": ros_list(["blue square"]), "score_threshold": "0.1", "use_depth": "true",
              "sync_warn_after": "2.0", "diagnostics_period": "0.25", "threads": "1"}  # fmt: skip
    proc = start_node(params, DOMAIN, log, source=False)  # the installed executable
    rclpy.init()
    client = Harness("mobius_depth_client")
    client.proc, client.log = proc, log
    try:
        if not client.wait_for_node(180):
            pytest.fail(f"the node did not come up:\n{log.read_text()[-3000:]}")
        yield client
    finally:
        client.close()
        rclpy.shutdown()
        stop(proc)


def _send(ros, scene, depth=None, info=None):
    from mobius_ros.depth import camera_info_msg, depth_image_msg

    depth = depth_image_msg(scene.depth_mm if depth is None else depth)
    info = camera_info_msg(scene.camera) if info is None else info
    out = ros.send_rgbd(ros.image(scene.image), depth, info, timeout=120)
    assert out is not None, ros.log.read_text()[-3000:]
    return out


def _diag(ros, key, ok, seconds=10.0):
    """The newest value of ``key`` in the node's diagnostics once ``ok(value)``."""
    end = [None]

    def seen():
        for d in reversed(ros.diag):
            for st in d.status:
                for kv in st.values:
                    if kv.key == key:
                        end[0] = (kv.value, st.message)
                        return ok(kv.value)
        return False

    ros.spin(seconds, seen)
    return end[0]


def test_known_object_gets_its_centre_and_size(ros, scene):
    out = _send(ros, scene)
    assert len(out.instances) == 1, [(i.label, i.score) for i in out.instances]
    inst = out.instances[0]
    assert inst.has_3d, ros.log.read_text()[-2000:]
    got = np.array([inst.center_3d.x, inst.center_3d.y, inst.center_3d.z])
    size = np.array([inst.size_3d.x, inst.size_3d.y, inst.size_3d.z])
    distance = np.linalg.norm(CENTRE)
    assert np.linalg.norm(got - CENTRE) <= 0.02 * distance, (got, CENTRE)
    np.testing.assert_allclose(size, [SIDE] * 3, rtol=0.10)
    # the truth the scene renders: its object's amodal box
    (obj,) = scene.objects
    np.testing.assert_allclose(obj.size3d, [SIDE] * 3, atol=1e-6)


def test_detections_3d_points_and_markers_while_subscribed(ros, scene):
    from sensor_msgs.msg import PointCloud2
    from visualization_msgs.msg import Marker, MarkerArray

    got = {}
    subs = [ros.node.create_subscription(PointCloud2, "points",
                                         lambda m: got.setdefault("points", m), 2),
            ros.node.create_subscription(MarkerArray, "markers",
                                         lambda m: got.setdefault("markers", m), 2)]  # fmt: skip
    try:
        from vision_msgs.msg import Detection3DArray

        subs.append(ros.node.create_subscription(
            Detection3DArray, "detections_3d", lambda m: got.setdefault("det3", m), 2))  # fmt: skip
    except ImportError:
        Detection3DArray = None
    try:
        ros.spin(2.0)  # discovery of the new subscriptions
        want = {"points", "markers"} | ({"det3"} if Detection3DArray else set())
        for _ in range(5):
            out = _send(ros, scene)
            if ros.spin(3.0, lambda: want <= set(got)):
                break
        assert want <= set(got), f"missing {want - set(got)}"
    finally:
        for s in subs:
            ros.node.destroy_subscription(s)
    inst = out.instances[0]
    cloud = got["points"]
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "id"] and cloud.point_step == 16
    rec = np.frombuffer(bytes(cloud.data), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                                  ("id", "<u4")])  # fmt: skip
    assert cloud.width == len(rec) > 100 and set(rec["id"]) == {inst.id}
    assert abs(np.median(rec["z"]) - (CENTRE[2] - SIDE / 2)) < 0.03  # the front face
    cubes = [m for m in got["markers"].markers if m.type == Marker.CUBE]
    assert len(cubes) == 1 and abs(cubes[0].pose.position.z - CENTRE[2]) < 0.05
    assert cubes[0].header.frame_id == "camera"
    if Detection3DArray:
        (d,) = got["det3"].detections
        assert d.id == str(inst.id) and d.results[0].hypothesis.class_id == "blue square"
        assert abs(d.bbox.size.x - SIDE) < 0.1 * SIDE


def test_depth_at_half_resolution_and_camera_info_for_another_size(ros, scene):
    from mobius_core.geometry3d import Intrinsics
    from mobius_ros.depth import camera_info_msg

    half = scene.depth_mm[::2, ::2]  # a binned depth stream, still registered
    cam = scene.camera
    double = Intrinsics(cam.fx * 2, cam.fy * 2, (cam.cx + 0.5) * 2 - 0.5,
                        (cam.cy + 0.5) * 2 - 0.5, cam.width * 2, cam.height * 2)  # fmt: skip
    info = camera_info_msg(double)  # calibrated at twice the stream's size
    inst = _send(ros, scene, depth=half, info=info).instances[0]
    assert inst.has_3d
    assert abs(inst.center_3d.z - CENTRE[2]) <= 0.02 * np.linalg.norm(CENTRE)


@pytest.mark.parametrize(
    "bad, reason",
    [("encoding", "depth encoding '8UC1' is not supported"),
     ("size", "one must be a whole multiple"),
     ("focal", "focal lengths must be finite and positive")],
)  # fmt: skip
def test_bad_depth_or_camera_info_costs_the_3d_only(ros, scene, bad, reason):
    from mobius_ros.depth import camera_info_msg, depth_image_msg

    depth, info = depth_image_msg(scene.depth_mm), camera_info_msg(scene.camera)
    if bad == "encoding":
        depth.encoding = "8UC1"
    elif bad == "size":
        depth = depth_image_msg(scene.depth_mm[:300, :400])
    else:
        info.k = [0.0] * 9
    before = len(ros.diag)
    out = ros.send_rgbd(ros.image(scene.image), depth, info, timeout=60)
    assert out is not None and len(out.instances) == 1  # the 2D answer came
    assert not out.instances[0].has_3d
    ros.spin(3.0, lambda: len(ros.diag) > before + 2)
    messages = [st.message for d in ros.diag[before:] for st in d.status]
    assert any(reason in m for m in messages), messages[-3:]
    assert "no 3D for this frame" in ros.log.read_text()


def test_streams_out_of_sync_warn_with_the_offset_and_go_on_in_2d(ros, scene):
    from mobius_ros.depth import camera_info_msg, depth_image_msg

    ros.spin(2.5)  # longer than sync_warn_after since the last matched frame
    results = []
    for _ in range(8):
        msg = ros.image(scene.image)
        depth, info = depth_image_msg(scene.depth_mm), camera_info_msg(scene.camera)
        for m in (depth, info):  # 30 s behind the image
            m.header.frame_id = "camera"
            m.header.stamp.sec = msg.header.stamp.sec - 30
        ros.pub_info.publish(info)
        ros.pub_depth.publish(depth)
        ros.pub.publish(msg)
        ros.spin(0.5, lambda m=msg: m.header.stamp.sec in ros.instances)
        if msg.header.stamp.sec in ros.instances:
            results.append(ros.instances[msg.header.stamp.sec][1])
    assert results, ros.log.read_text()[-2000:]  # the 2D outputs go on
    assert all(not i.has_3d for r in results for i in r.instances)
    got = _diag(ros, "frames_without_depth", lambda v: int(v) > 0)
    assert got is not None and int(got[0]) > 0
    assert "depth -30.000 s" in got[1] and "sync_slop" in got[1], got
    # in sync again: 3D is back
    assert _send(ros, scene).instances[0].has_3d
