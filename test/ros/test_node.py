"""The node with real rclpy: the node in its own process (the executable CMake installed),
this test process as camera and client. Traffic stays on this machine
(ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a ROS_DOMAIN_ID of its own)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

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


class Client:
    """Camera, listener and service/parameter client on one rclpy node."""

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from mobius_ros.msg import InstanceArray
        from mobius_ros.srv import SetPrompts
        from rcl_interfaces.srv import SetParameters
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CompressedImage, Image

        self.rclpy, self.Image, self.CompressedImage = rclpy, Image, CompressedImage
        self.node = rclpy.create_node("mobius_test_client")
        self.pub = self.node.create_publisher(Image, "image", qos_profile_sensor_data)
        self.pub_c = self.node.create_publisher(
            CompressedImage, "image/compressed", qos_profile_sensor_data
        )
        self.instances, self.masks, self.diag = {}, {}, []
        self.node.create_subscription(InstanceArray, "instances", self._on_inst, 100)
        self.node.create_subscription(Image, "instance_mask", self._on_mask, 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diag.append, 10)
        self.prompts = self.node.create_client(SetPrompts, "set_prompts")
        self.params = self.node.create_client(SetParameters, "/mobius/set_parameters")
        self.SetPrompts = SetPrompts
        self.stamp = 1000

    def _on_inst(self, msg):
        self.instances[msg.header.stamp.sec] = (time.monotonic(), msg)

    def _on_mask(self, msg):
        self.masks[msg.header.stamp.sec] = msg

    def spin(self, seconds, until=lambda: False):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.rclpy.spin_once(self.node, timeout_sec=0.02)
            if until():
                return True
        return False

    def image(self, rgb=None, encoding="rgb8", step=None, data=None, h=None, w=None):
        """An Image message with a fresh stamp (seconds field = frame number)."""
        self.stamp += 1
        msg = self.Image(encoding=encoding)
        if rgb is not None:
            msg.height, msg.width = rgb.shape[:2]
            msg.step = step if step is not None else rgb.shape[1] * rgb.shape[2]
            msg.data = data if data is not None else rgb.tobytes()
        else:
            msg.height, msg.width, msg.step, msg.data = h, w, step, data
        msg.header.stamp.sec, msg.header.frame_id = self.stamp, "test_cam"
        return msg

    def send(self, msg, wait=True, compressed=False, timeout=30.0):
        """Publish (again every 0.5 s: best effort) until the instances for it arrive."""
        pub = self.pub_c if compressed else self.pub
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pub.publish(msg)
            if not wait or self.spin(0.5, lambda: msg.header.stamp.sec in self.instances):
                break
        return self.instances.get(msg.header.stamp.sec, (None, None))[1]

    def call(self, client, request, timeout=30.0):
        assert client.wait_for_service(timeout_sec=timeout)
        future = client.call_async(request)
        self.rclpy.spin_until_future_complete(self.node, future, timeout_sec=timeout)
        assert future.done(), "no answer"
        return future.result()

    def set_prompts(self, prompts, mode=""):
        return self.call(self.prompts, self.SetPrompts.Request(prompts=prompts, mode=mode))

    def set_param(self, name, value):
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        req = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
        return self.call(self.params, req).results[0]

    def diagnostics(self):
        self.diag.clear()
        self.spin(5, lambda: bool(self.diag))
        status = self.diag[-1].status[0]
        return {kv.key: kv.value for kv in status.values}


@pytest.fixture(scope="module")
def ros(tmp_path_factory):
    _ros_or_skip()
    import rclpy

    from mobius_ros.camera import demo_frames

    log = tmp_path_factory.mktemp("node") / "node.log"
    prompts = "[" + ",".join(f"'{p}'" for p in PROMPTS) + "]"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mobius_ros.cli", "node", "--ros-args",
             "-p", f"prompts:={prompts}", "-p", "score_threshold:=0.2", "-p", "threads:=1"],
            stdout=f, stderr=subprocess.STDOUT, env=local_ros_env(DOMAIN), cwd=ROOT,
        )  # fmt: skip
    rclpy.init()
    client = Client()
    try:
        if not client.prompts.wait_for_service(timeout_sec=180):
            pytest.fail(f"the node did not come up:\n{log.read_text()[-3000:]}")
        client.frames = demo_frames(4, (480, 640))
        client.proc, client.log = proc, log
        yield client
    finally:
        client.node.destroy_node()
        rclpy.shutdown()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _decode(inst):
    from mobius_core.rle import decode_rle

    rle = {"size": [inst.mask_height, inst.mask_width], "counts": list(inst.mask_rle_counts)}
    return decode_rle(rle)


def test_image_in_instances_out_with_header_and_consistent_ids(ros):
    msg = ros.image(ros.frames[0])
    out = ros.send(msg)
    assert out is not None, ros.log.read_text()[-2000:]
    assert out.header.stamp.sec == msg.header.stamp.sec and out.header.frame_id == "test_cam"
    assert list(out.prompts) == PROMPTS and out.mode == "category"
    assert len(out.instances) >= 1 and out.inference_ms > 0
    assert [i.id for i in out.instances] == list(range(1, len(out.instances) + 1))
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
    ros.stamp += 1
    msg = ros.CompressedImage(format="png", data=buf.getvalue())
    msg.header.stamp.sec = ros.stamp
    out = ros.send(msg, compressed=True)
    assert out is not None and len(out.instances) >= 1


def test_parameters_are_validated_at_run_time(ros):
    ok = ros.set_param("score_threshold", 0.9)
    assert ok.successful
    out = ros.send(ros.image(ros.frames[0]))
    assert all(i.score > 0.9 for i in out.instances)
    assert ros.set_param("score_threshold", 0.2).successful
    r = ros.set_param("backend", "torch")
    assert not r.successful and "restart" in r.reason
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
    assert 3 <= len(got) < sent  # processed some, dropped the rest (no queue)
    # freshness: each result belongs to a frame sent shortly before it came out
    sent_at = {msg_sec: start + (msg_sec - (ros.stamp - sent) - 1) / 30 for msg_sec in got}
    ages = [got[s][0] - sent_at[s] for s in got]
    assert max(ages) < 2.5, ages
    early = np.mean([m for t, m in rss if 2.0 <= t < 3.0])
    late = np.mean([m for t, m in rss if t >= 7.0])
    print(f"flood: sent {sent}, results {len(got)}, max age {max(ages):.2f} s, "
          f"rss {early:.0f} -> {late:.0f} MB")  # fmt: skip
    assert late - early < 60, (early, late)
