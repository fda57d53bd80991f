"""The node in this process over a test double of its model (``fake_model``): a test holds an
encoding or an inference open and checks what flows meanwhile, so nothing here depends on how
fast the machine is. Traffic stays on this machine (LOCALHOST, a ROS_DOMAIN_ID of its own)."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.ros

DOMAIN = 20 + (os.getpid() + 31) % 60
HERE = Path(__file__).resolve().parent
PROMPTS = ["red circle", "blue square"]
FRAME = np.full((48, 64, 3), 128, np.uint8)


def _local_env(monkeypatch, domain: int) -> None:
    """This process's real environment (rcl reads it at init), restored after the test."""
    from mobius_ros.localenv import local_ros_env

    for key, value in local_ros_env(domain).items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)


@pytest.fixture
def live(monkeypatch):
    """(node, harness, text, backend): an active node spun by its own executor in a thread,
    and a client in the same process."""

    _local_env(monkeypatch, DOMAIN)
    try:
        import rclpy
        from mobius_ros.msg import InstanceArray  # noqa: F401
        from rclpy.lifecycle import TransitionCallbackReturn
        from rclpy.parameter import Parameter
    except ImportError as exc:
        pytest.skip(f"rclpy or the built interfaces are missing ({exc}); run `make ros`")
    from mobius_ros.harness import Harness
    from mobius_ros.node import NodeExecutors, SegmentationNode

    sys.path.insert(0, str(HERE))
    import fake_model

    text, backend = fake_model.install(monkeypatch)
    rclpy.init()
    node = SegmentationNode(parameter_overrides=[
        Parameter("prompts", value=PROMPTS), Parameter("diagnostics_period", value=0.2),
        Parameter("tracking", value=False),
    ])  # fmt: skip
    executor = None
    spinning = threading.Event()
    spinning.set()

    def spin():
        while spinning.is_set():
            executor.spin_once(timeout_sec=0.05)

    thread = threading.Thread(target=spin, daemon=True)
    client = None
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        executor = NodeExecutors(node)  # as run() spins the node: set_prompts on its own thread
        thread.start()
        client = Harness("mobius_threads_client", masks=False)
        assert client.wait_for_node(30)
        yield node, client, text, backend
    finally:
        text.gate.set()
        spinning.clear()
        if thread.is_alive():
            thread.join(10)
        node.release()
        if executor is not None:
            executor.shutdown()
        if client is not None:
            client.close()
        node.destroy_node()
        rclpy.shutdown()


def _frames_until(client, ok, seconds: float = 30.0) -> list:
    """Publish frames until ``ok(messages so far)``; the InstanceArrays that came back."""
    got: list = []
    done = threading.Event()

    def check():
        got[:] = [m for _, m in sorted(client.instances.values(), key=lambda tm: tm[0])]
        if ok(got):
            done.set()
        return done.is_set()

    deadline = seconds
    while deadline > 0 and not done.is_set():
        client.pub.publish(client.image(FRAME))
        client.spin(0.1, check)
        deadline -= 0.1
    return got


def _labels_agree(msg) -> bool:
    return all(i.label == msg.prompts[i.prompt_index] for i in msg.instances)


def test_a_long_encoding_blocks_nothing_and_later_requests_queue(live):
    node, client, text, _ = live
    first = _frames_until(client, lambda got: len(got) >= 2)
    assert len(first) >= 2 and list(first[-1].prompts) == PROMPTS, client.instances
    slow = client.prompts.call_async(client.SetPrompts.Request(prompts=["slow mug", "slow cup"]))
    assert client.spin(30, text.waiting.is_set), "the encoding never started"
    client.instances.clear()
    client.diag.clear()
    # while it encodes: frames are segmented with the old prompts, diagnostics flow, a
    # parameter change is answered, a prompts parameter change is refused with the reason
    during = _frames_until(client, lambda got: len(got) >= 3)
    assert len(during) >= 3 and all(list(m.prompts) == PROMPTS for m in during)
    assert client.spin(30, lambda: bool(client.diag)), "no /diagnostics while encoding"
    assert client.set_param("score_threshold", 0.25).successful
    refused = client.set_param("prompts", ["bowl"])
    assert not refused.successful and "being encoded" in refused.reason
    queued = client.prompts.call_async(client.SetPrompts.Request(prompts=["plate"]))
    client.spin(1.0)
    assert not slow.done() and not queued.done()  # both wait for the gate, neither is lost
    text.gate.set()
    assert client.spin(30, lambda: slow.done() and queued.done())
    assert slow.result().success and "2 prompts" in slow.result().message
    assert queued.result().success
    assert text.calls.index(("slow mug", "slow cup")) < text.calls.index(("plate",))  # in order
    after = _frames_until(client, lambda got: any(list(m.prompts) == ["plate"] for m in got))
    assert list(after[-1].prompts) == ["plate"]
    assert node.get_parameter("prompts").value == ["plate"]
    assert node.get_parameter("score_threshold").value == 0.25


def test_each_message_carries_the_prompts_its_frame_was_inferred_with(live):
    node, client, _, backend = live
    _frames_until(client, lambda got: len(got) >= 1)
    changed = []

    def change_mid_frame(feed):  # a set_prompts lands while this frame is being inferred
        if not changed:
            changed.append(node.prompt_state.set(["x", "y", "z"], "category"))

    backend.on_infer = change_mid_frame
    client.instances.clear()
    got = _frames_until(client, lambda got: any(list(m.prompts) == ["x", "y", "z"] for m in got))
    assert changed and changed[0].success
    old = [m for m in got if list(m.prompts) == PROMPTS]
    assert old, "the frame in flight during the change was not published with its prompts"
    assert all(_labels_agree(m) and m.mode == "category" for m in got)
    assert all(len(m.instances) == len(m.prompts) for m in got)  # one object per prompt


CHILD = """
import pathlib, sys, time
sys.path.insert(0, {here!r})
import fake_model
text, backend = fake_model.install(None)
marker = pathlib.Path({marker!r})
def hold(feed):  # the frame is in inference when the signal comes
    marker.write_text("in inference")
    time.sleep(1.0)
backend.on_infer = hold
from mobius_ros.node import run
sys.exit(run(["--ros-args", "-p", "tracking:=false"]))
"""


def test_sigterm_during_a_frame_ends_cleanly_without_a_publish_error(tmp_path, monkeypatch):
    import signal
    import subprocess

    _local_env(monkeypatch, DOMAIN + 1)  # this process and the node's
    env = dict(os.environ)
    try:
        import rclpy
        from mobius_ros.msg import InstanceArray  # noqa: F401
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image
    except ImportError as exc:
        pytest.skip(f"rclpy or the built interfaces are missing ({exc}); run `make ros`")

    from mobius_ros.harness import stop

    marker, log = tmp_path / "busy", tmp_path / "node.log"
    code = CHILD.format(here=str(HERE), marker=str(marker))
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env)  # fmt: skip
    ctx = Context()
    rclpy.init(context=ctx)
    try:
        camera = rclpy.create_node("mobius_sigterm_camera", context=ctx)
        pub = camera.create_publisher(Image, "image", qos_profile_sensor_data)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(camera)
        msg = Image(encoding="rgb8", height=48, width=64, step=192, data=FRAME.tobytes())
        for _ in range(600):  # until the node is in the middle of a frame (or 60 s)
            if marker.exists() or proc.poll() is not None:
                break
            pub.publish(msg)
            ex.spin_once(timeout_sec=0.1)
        assert marker.exists(), log.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    finally:
        stop(proc)  # (a no-op once it has exited)
        ctx.try_shutdown()
    text = log.read_text()
    assert rc == 0, text[-3000:]
    for bad in ("context is invalid", "Traceback", "[ERROR]", "terminate called"):
        assert bad not in text, text[-3000:]


def test_cleanup_and_shutdown_close_the_backend_once_its_frames_are_done(monkeypatch):
    """A backend holding device memory (TensorRT) has ``close()``: the node calls it when it
    frees the model (cleanup, shutdown), after the worker has stopped, and not on deactivate
    (activating again reuses the backend)."""
    _local_env(monkeypatch, DOMAIN + 2)
    try:
        import rclpy
        from mobius_ros.msg import InstanceArray  # noqa: F401
        from rclpy.lifecycle import TransitionCallbackReturn
        from rclpy.parameter import Parameter
    except ImportError as exc:
        pytest.skip(f"rclpy or the built interfaces are missing ({exc}); run `make ros`")
    from mobius_ros.node import SegmentationNode

    sys.path.insert(0, str(HERE))
    import fake_model

    class Closing(fake_model.OnePerPrompt):
        def __init__(self) -> None:
            super().__init__()
            self.closes: list[bool] = []  # per close(): whether a worker thread still ran

        def close(self) -> None:
            self.closes.append(any(t.is_alive() for t in workers))

    workers: list[threading.Thread] = []
    backend = Closing()
    fake_model.install(monkeypatch, backend=backend)
    ok = TransitionCallbackReturn.SUCCESS
    rclpy.init()
    node = SegmentationNode(parameter_overrides=[Parameter("prompts", value=PROMPTS),
                                                 Parameter("tracking", value=False)])  # fmt: skip
    try:
        assert node.trigger_configure() == ok and node.trigger_activate() == ok
        workers.append(node.worker._thread)
        assert node.trigger_deactivate() == ok and backend.closes == []
        assert node.trigger_activate() == ok and node.seg.backend is backend
        workers.append(node.worker._thread)
        assert node.trigger_deactivate() == ok and node.trigger_cleanup() == ok
        assert backend.closes == [False]  # once, with no worker running
        assert node.trigger_configure() == ok and node.trigger_activate() == ok
        workers.append(node.worker._thread)
        node.release()  # what shutdown and a signal run, from the active state
        assert backend.closes == [False, False]
        node.release()  # idempotent: the model is gone, nothing to close again
        assert backend.closes == [False, False]
    finally:
        node.release()
        node.destroy_node()
        rclpy.shutdown()
