"""The node with real rclpy: the node in its own process (the executable CMake installed),
this test process as camera and client. Traffic stays on this machine
(ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a ROS_DOMAIN_ID of its own)."""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mobius_ros.harness import Harness, ros_list, start_node, stop
from mobius_ros.localenv import local_ros_env

pytestmark = pytest.mark.ros

DOMAIN = 20 + os.getpid() % 60
PROMPTS = ["red circle", "yellow triangle", "green star", "orange hexagon"]
NODE_EXE = Path(sys.prefix) / "lib" / "mobius_ros" / "mobius_node"  # installed by `make ros`
ROOT = Path(__file__).resolve().parents[2]  # the node runs this checkout's code


def _ros_or_skip():
    os.environ.update(local_ros_env(DOMAIN))
    try:
        import rclpy  # noqa: F401
        from mobius_ros.msg import InstanceArray  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"rclpy or the built interfaces are missing ({exc}); run `make ros`")
    if not NODE_EXE.is_file():
        pytest.skip(f"{NODE_EXE} is not installed; run `make ros`")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def ros(tmp_path_factory):
    _ros_or_skip()
    import rclpy

    from mobius_ros.camera import demo_frames

    log = tmp_path_factory.mktemp("node") / "node.log"
    proc = start_node(
        {"prompts": ros_list(PROMPTS), "score_threshold": "0.2", "threads": "1"}, DOMAIN, log,
        root=ROOT,
    )  # fmt: skip
    rclpy.init()
    client = Harness("mobius_test_client")
    try:
        if not client.wait_for_node(180):
            pytest.fail(f"the node did not come up:\n{log.read_text()[-3000:]}")
        client.frames = demo_frames(4, (480, 640))
        client.proc, client.log = proc, log
        # the service is up before the model is (lifecycle): wait for the first result
        if client.send(client.image(client.frames[0]), timeout=180) is None:
            pytest.fail(f"the node never segmented a frame:\n{log.read_text()[-3000:]}")
        yield client
    finally:
        client.close()
        rclpy.shutdown()
        stop(proc)


def _decode(inst):
    from mobius_core.rle import decode_rle

    rle = {"size": [inst.mask_height, inst.mask_width], "counts": list(inst.mask_rle_counts)}
    return decode_rle(rle)


def test_image_in_instances_out_with_header_and_consistent_ids(ros):
    msg = ros.image(ros.frames[0])
    out = ros.send(msg)
    assert out is not None, ros.log.read_text()[-2000:]
    assert out.header.stamp.sec == msg.header.stamp.sec and out.header.frame_id == "camera"
    assert list(out.prompts) == PROMPTS and out.mode == "category"
    assert len(out.instances) >= 1 and out.inference_ms > 0
    ids = [i.id for i in out.instances]
    assert len(set(ids)) == len(ids) and min(ids) >= 1
    ros.spin(5, lambda: msg.header.stamp.sec in ros.masks)
    mask_msg = ros.masks[msg.header.stamp.sec]
    assert mask_msg.encoding == "mono16" and (mask_msg.height, mask_msg.width) == (480, 640)
    labels = np.frombuffer(bytes(mask_msg.data), "<u2").reshape(480, 640)
    assert set(np.unique(labels)) <= {0} | {i.id for i in out.instances}
    for inst in out.instances:
        assert inst.label == PROMPTS[inst.prompt_index] and 0 < inst.score <= 1
        mask = _decode(inst)
        assert mask.shape == (480, 640)
        assert np.all(mask[labels == inst.id])
        x0, y0, x1, y1 = inst.box
        assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480


def test_objects_keep_their_ids_across_frames_unless_tracking_is_off(ros):
    ros.send(ros.image(ros.frames[1]))
    first = ros.send(ros.image(ros.frames[0]))
    again = ros.send(ros.image(ros.frames[0]))  # the same scene: the same objects, same ids
    assert first.instances
    ids = sorted(i.id for i in first.instances)
    assert sorted(i.id for i in again.instances) == ids
    assert ros.set_param("tracking", False).successful
    try:
        out = ros.send(ros.image(ros.frames[0]))
        assert [i.id for i in out.instances] == list(range(1, len(out.instances) + 1))
    finally:
        assert ros.set_param("tracking", True).successful
    out = ros.send(ros.image(ros.frames[0]))  # a new tracker: new ids, never reused ones
    assert out.instances and min(i.id for i in out.instances) > max(ids)


def test_set_prompts_changes_the_labels_of_the_next_frames(ros):
    new = ["purple hexagon", "yellow square", "black cross"]
    reply = ros.set_prompts(new, "category")
    assert reply.success and "encoded" in reply.message and reply.encode_ms > 0
    outs = [ros.send(ros.image(f)) for f in ros.frames]
    assert all(list(o.prompts) == new for o in outs)
    labels = {i.label for o in outs for i in o.instances}
    assert labels and labels <= set(new)
    assert ros.set_prompts(PROMPTS, "category").success


@pytest.mark.parametrize(
    "prompts",
    [[], ["mug", "mug"], ["mug", ""], ["x"] * 0 + [f"p{i}" for i in range(65)], ["y" * 201]],
)
def test_invalid_prompts_keep_the_old_ones(ros, prompts):
    reply = ros.set_prompts(prompts)
    assert not reply.success and "old" in reply.message
    out = ros.send(ros.image(ros.frames[1]))
    assert list(out.prompts) == PROMPTS


def test_unknown_mode_is_refused(ros):
    reply = ros.set_prompts(["mug"], "panoptic")
    assert not reply.success and "mode" in reply.message


def test_bad_images_do_not_stop_the_node(ros):
    before = int(ros.diagnostics()["bad_frames"])
    rgb = ros.frames[0]
    bad = [
        ros.image(rgb, step=100),  # step smaller than a row
        ros.image(rgb, data=rgb.tobytes()[:1000]),  # truncated
        ros.image(h=480, w=640, encoding="16UC1", step=1280, data=bytes(480 * 1280)),
        ros.image(h=0, w=0, step=0, data=b""),
    ]
    for msg in bad:
        ros.send(msg, wait=False)
        ros.spin(0.4)
    assert ros.proc.poll() is None
    out = ros.send(ros.image(rgb))
    assert out is not None and len(out.instances) >= 1
    ros.spin(1.5)
    assert int(ros.diagnostics()["bad_frames"]) >= before + 4
    assert ros.log.read_text().count("bad image:") == 1  # logged with its reason, rate-limited


def test_compressed_images_are_segmented(ros):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(ros.frames[0]).save(buf, format="PNG")
    # raw transport (the default): the compressed topic is not subscribed
    assert ros.send(ros.compressed("png", buf.getvalue()), timeout=2.0) is None
    assert ros.set_param("transport", "compressed").successful
    try:
        ros.spin(0.5)  # the new subscription matches
        assert ros.send(ros.image(ros.frames[0]), timeout=2.0) is None  # raw is off now
        out = ros.send(ros.compressed("png", buf.getvalue()))
        assert out is not None and len(out.instances) >= 1
        assert ros.diagnostics()["image_topic"] == "/image/compressed"
        assert not ros.set_param("transport", "theora").successful
    finally:
        assert ros.set_param("transport", "raw").successful
    ros.spin(0.5)
    assert ros.send(ros.image(ros.frames[0])) is not None


def test_parameters_are_validated_at_run_time(ros):
    ok = ros.set_param("score_threshold", 0.9)
    assert ok.successful
    out = ros.send(ros.image(ros.frames[0]))
    assert all(i.score > 0.9 for i in out.instances)
    assert ros.set_param("score_threshold", 0.2).successful
    r = ros.set_param("backend", "torch")
    assert not r.successful and "read-only" in r.reason
    r = ros.set_param("target_fps", -3.0)
    assert not r.successful and "target_fps" in r.reason
    r = ros.set_param("prompts", ["a", "a"])
    assert not r.successful and "duplicate" in r.reason


def test_a_30hz_flood_of_1080p_frames_keeps_memory_flat_and_frames_fresh(ros):
    from mobius_core.imageops import resize_image

    big = [
        np.ascontiguousarray(
            (resize_image(f, (1080, 1920)).transpose(1, 2, 0) * 255).astype(np.uint8)
        )
        for f in ros.frames[:2]
    ]
    ros.instances.clear()
    sent, rss = 0, []
    start = time.monotonic()
    while time.monotonic() - start < 8.0:
        msg = ros.image(big[sent % 2])
        ros.pub.publish(msg)
        sent += 1
        rss.append((time.monotonic() - start, rss_mb(ros.proc.pid)))
        ros.spin(max(0.0, start + sent / 30 - time.monotonic()))
    ros.spin(3.0)
    got = dict(ros.instances)
    assert ros.proc.poll() is None
    assert len(got) >= 1
    # no queue, whatever the machine's speed: every frame the node received was segmented,
    # dropped (replaced by a newer one while waiting) or refused; at most one waits and one
    # is in inference
    d = ros.diagnostics(30)
    received, done = int(d["received_frames"]), int(d["frames"])
    left = received - done - int(d["dropped_frames"]) - int(d["bad_frames"])
    assert received > 0 and 0 <= left <= 3, d
    sent_at = {msg_sec: start + (msg_sec - (ros.stamp - sent) - 1) / 30 for msg_sec in got}
    ages = [got[s][0] - sent_at[s] for s in got]
    early = np.mean([m for t, m in rss if 2.0 <= t < 3.0])
    late = np.mean([m for t, m in rss if t >= 7.0])
    print(f"flood: sent {sent}, results {len(got)}, max age {max(ages):.2f} s, "
          f"rss {early:.0f} -> {late:.0f} MB")  # fmt: skip
    assert late - early < 60, (early, late)


def test_referring_mode_gives_one_instance_per_expression(ros):
    exprs = ["the largest hexagon", "the leftmost star"]
    assert ros.set_prompts(exprs, "referring").success
    try:
        out = ros.send(ros.image(ros.frames[0]))
        assert out.mode == "referring" and list(out.prompts) == exprs
        assert len(out.instances) == len(exprs)  # referring: exactly one per expression
        assert [i.prompt_index for i in out.instances] == [0, 1]
    finally:
        assert ros.set_prompts(PROMPTS, "category").success


def test_markers_outline_every_instance(ros):
    from visualization_msgs.msg import Marker, MarkerArray

    got = {}
    sub = ros.node.create_subscription(
        MarkerArray, "markers", lambda m: got.__setitem__(m.markers[0].header.stamp.sec, m), 10
    )
    try:
        ros.spin(0.5)
        msg = ros.image(ros.frames[0])
        out = ros.send(msg)
        ros.spin(3, lambda: msg.header.stamp.sec in got)
        markers = got[msg.header.stamp.sec].markers
        assert markers[0].action == Marker.DELETEALL
        boxes = [m for m in markers if m.ns == "boxes"]
        labels = [m for m in markers if m.ns == "labels"]
        assert len(boxes) == len(labels) == len(out.instances) >= 1
        assert all(len(b.points) == 5 and b.header.frame_id == "camera" for b in boxes)
        assert {t.text.rsplit(" ", 1)[0] for t in labels} == {i.label for i in out.instances}
    finally:
        ros.node.destroy_subscription(sub)


def _wait_diag(ros, key: str, text: str, seconds: float = 8.0) -> str:
    end = time.monotonic() + seconds
    value = ""
    while time.monotonic() < end:
        value = ros.diagnostics().get(key, "")
        if text in value:
            break
    return value


def test_a_click_segments_the_object_under_it_and_follows_it(ros):
    from mobius_core.data.synthetic import SEEN_CATEGORIES, render_scene
    from mobius_core.data.visual_prompts import center_click

    assert ros.set_prompts(PROMPTS, "category").success
    image, objects = render_scene(np.random.default_rng(7), SEEN_CATEGORIES, (480, 640), 3)
    target = max(objects, key=lambda o: o["area"])
    x, y = center_click(target["mask"])
    ros.send(ros.image(image))  # the node knows the camera's frame and size
    ros.click(x, y)
    label = f"point ({x:.0f}, {y:.0f})"
    assert _wait_diag(ros, "visual_prompts", "1") == "1", ros.log.read_text()[-2000:]
    out = ros.send(ros.image(image))
    assert list(out.prompts) == PROMPTS + [label]
    (hit,) = [i for i in out.instances if i.label == label]
    assert hit.prompt_index == len(PROMPTS)
    mask = _decode(hit)
    iou = (mask & target["mask"]).sum() / (mask | target["mask"]).sum()
    assert iou > 0.5, f"the answer to the click overlaps its object by IoU {iou:.2f}"
    again = ros.send(ros.image(image))  # the prompt follows its object and keeps its id
    (same,) = [i for i in again.instances if i.label == label]
    assert same.id == hit.id
    # refused clicks say why and leave the active prompt alone
    ros.click(5000, 10)
    assert "outside the 640x480 image" in _wait_diag(ros, "last_prompt_error", "outside")
    ros.click(10, 10, frame_id="map")
    assert "in frame 'map'" in _wait_diag(ros, "last_prompt_error", "'map'")
    from builtin_interfaces.msg import Time

    ros.click(10, 10, stamp=Time(sec=1))  # the frames are stamped with later seconds
    assert "older than the latest image" in _wait_diag(ros, "last_prompt_error", "older")
    # the service: boxes replace the clicks, bad input is refused, clear drops them
    x0, y0, x1, y1 = target["box"]
    reply = ros.set_prompts([], "", boxes=[x0, y0, x1, y1])
    assert reply.success, reply.message
    out = ros.send(ros.image(image))
    assert list(out.prompts)[: len(PROMPTS)] == PROMPTS and len(out.prompts) == len(PROMPTS) + 1
    assert out.prompts[-1].startswith("box (")
    bad = ros.set_prompts([], "", points=[1.0, 2.0, 3.0])
    assert not bad.success and "pairs" in bad.message
    assert ros.set_prompts([], "", clear_visual=True).success
    out = ros.send(ros.image(image))
    assert list(out.prompts) == PROMPTS
    assert not ros.set_prompts([], "").success  # nothing asked: the text prompts stay


def test_label_info_and_detections_follow_vision_msgs_conventions(ros):
    try:
        from vision_msgs.msg import Detection2DArray, LabelInfo
    except ImportError:
        pytest.skip(
            "vision_msgs is not installed (ros-<distro>-vision-msgs; see README, ROS 2 tools)"
        )
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                         reliability=ReliabilityPolicy.RELIABLE)  # fmt: skip
    infos, dets = [], {}
    subs = [
        ros.node.create_subscription(LabelInfo, "label_info", infos.append, latched),
        ros.node.create_subscription(Detection2DArray, "detections",
                                     lambda m: dets.__setitem__(m.header.stamp.sec, m), 10),
    ]  # fmt: skip
    try:
        assert ros.spin(10, lambda: bool(infos)), "no latched LabelInfo for a late subscriber"
        assert [(c.class_id, c.class_name) for c in infos[-1].class_map] == list(
            enumerate(PROMPTS))  # fmt: skip
        msg = ros.image(ros.frames[0])
        out = ros.send(msg)
        ros.spin(3, lambda: msg.header.stamp.sec in dets)
        det = dets[msg.header.stamp.sec]
        assert [(d.id, d.results[0].hypothesis.class_id) for d in det.detections] == [
            (str(i.id), i.label) for i in out.instances]  # fmt: skip
        new = ["purple hexagon", "black cross"]
        assert ros.set_prompts(new).success
        names = lambda: [c.class_name for c in infos[-1].class_map]  # noqa: E731
        assert ros.spin(5, lambda: names() == new), names()
    finally:
        for sub in subs:
            ros.node.destroy_subscription(sub)
        assert ros.set_prompts(PROMPTS, "category").success


def test_use_sim_time_is_accepted_at_run_time(ros):
    assert ros.set_param("use_sim_time", True).successful
    assert ros.set_param("use_sim_time", False).successful
    r = ros.set_param("budget_sizes", [320, 256])
    assert not r.successful and "read-only" in r.reason
