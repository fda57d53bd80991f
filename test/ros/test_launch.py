"""The installed package through the real ROS 2 tools, as a user types them: ``ros2 launch
mobius_ros segment.launch.py``, ``ros2 lifecycle``, ``ros2 service call``, ``ros2 param``
and Ctrl-C (SIGINT to the launch's process group).

Needs the ``ros2`` command line and ``launch_ros`` (every ROS 2 install; in the venv
``make ros-extras ROS_EXTRAS=<kit>``, see the README); skips with the reason where they are
missing. Two launches of the node in all, to keep the
suite's time bounded. Traffic stays on this machine (LOCALHOST discovery, own domain)."""

from __future__ import annotations

import contextlib
import os
import time

import pytest
import yaml

from mobius_ros.harness import (
    Harness,
    interrupt,
    launch_segment,
    ros2,
    ros2_cli,
    ros2_until,
    stop,
)
from mobius_ros.localenv import local_ros_env

pytestmark = pytest.mark.ros

DOMAIN = 20 + (os.getpid() + 45) % 60
PROMPTS = ["red circle", "yellow triangle", "green star", "orange hexagon"]


def _tools_or_skip():
    if ros2_cli() is None:
        pytest.skip(
            "the ros2 command line or launch_ros is missing: source a ROS 2 install "
            "(ros-<distro>-ros-base) or see the README, 'The real ROS 2 tools'"
        )
    os.environ.update(local_ros_env(DOMAIN))
    try:
        from mobius_ros.msg import InstanceArray  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the built interfaces are missing ({exc}); run `make ros`")


def _params_file(tmp_path, **values) -> str:
    doc = {"/**": {"ros__parameters": {"prompts": PROMPTS, "threads": 1,
                                       "score_threshold": 0.2, **values}}}  # fmt: skip
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@contextlib.contextmanager
def _launched(params_file: str, log):
    """`ros2 launch` with ``params_file`` and image:=/image, active, and a client; both are
    stopped on the way out."""
    import rclpy

    proc = launch_segment({"params_file": params_file, "image": "/image"}, DOMAIN, log)
    rclpy.init()
    client = Harness("mobius_launch_test")
    try:
        _wait_active(proc, log)
        assert client.wait_for_node(60)
        yield proc, client
    finally:
        client.close()
        rclpy.shutdown()
        if proc.poll() is None:
            interrupt(proc)
    assert _daemons(DOMAIN) == [], "a ros2 command left its daemon running"


def _daemons(domain: int) -> list[int]:
    """Pids of `ros2 daemon` processes of ``domain`` (the ros2 CLI starts one on demand and
    it outlives the command)."""
    from pathlib import Path

    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"ros2-daemon" in cmd and f"{domain}".encode() in cmd:
            pids.append(int(proc.name))
    return pids


def _wait_active(proc, log) -> None:
    out = ros2_until(["lifecycle", "get", "/mobius"], DOMAIN,
                     lambda o: "active" in o or proc.poll() is not None, 240)  # fmt: skip
    assert proc.poll() is None, f"the launch ended:\n{log.read_text()[-3000:]}"
    assert out.strip().startswith("active"), f"{out}\n{log.read_text()[-3000:]}"


def _clean_stop(proc, log) -> float:
    code, seconds = interrupt(proc)
    text = log.read_text()
    assert code == 0, f"ros2 launch exited {code}:\n{text[-3000:]}"
    assert "Traceback" not in text and "[ERROR]" not in text, text[-3000:]
    assert "process has finished cleanly" in text
    return seconds


def _dump(tmp_path, name: str) -> dict:
    out = ros2_until(["param", "dump", "/mobius"], DOMAIN, lambda o: "ros__parameters" in o)
    path = tmp_path / name
    path.write_text(out)
    return yaml.safe_load(out)["/mobius"]["ros__parameters"]


def _results(client, frames, seconds: float, drain: float) -> int:
    """How many frames of a 15 Hz stream for ``seconds`` came back (``drain`` s after)."""
    client.instances.clear()
    return len(client.stream(frames, 15.0, seconds, drain=drain))


def test_launch_lifecycle_services_parameters_dump_and_ctrl_c(tmp_path):
    _tools_or_skip()
    from mobius_ros.camera import demo_frames

    log = tmp_path / "launch1.log"
    frames = demo_frames(3, (240, 320))
    with _launched(_params_file(tmp_path), log) as (proc, client):
        # images in, instances out, from the node `ros2 launch` started
        out = client.send(client.image(frames[0]))
        assert out is not None and list(out.prompts) == PROMPTS and out.instances
        # ros2 param describe shows the description and the range
        d = ros2_until(["param", "describe", "/mobius", "target_fps"], DOMAIN,
                       lambda o: "Min value" in o)  # fmt: skip
        assert "frame-rate budget" in d and "Min value: 0.0" in d and "Max value: 1000.0" in d
        d = ros2(["param", "describe", "/mobius", "backend"], DOMAIN).stdout
        assert "Read only: true" in d and "onnxruntime" in d
        # ros2 service call /set_prompts changes the labels and the prompts parameter
        new = ["purple hexagon", "yellow square"]
        r = ros2(["service", "call", "/set_prompts", "mobius_ros/srv/SetPrompts",
                  f"{{prompts: {new}, mode: category}}"], DOMAIN)  # fmt: skip
        assert "success=True" in r.stdout, r.stdout + r.stderr
        out = client.send(client.image(frames[1]))
        assert list(out.prompts) == new and {i.label for i in out.instances} <= set(new)
        got = ros2_until(["param", "get", "/mobius", "prompts"], DOMAIN, lambda o: "['" in o)
        assert str(new) in got
        # ros2 param set target_fps 5.0: the node starts frames no faster than 5 Hz
        r = ros2(["param", "set", "/mobius", "target_fps", "5.0"], DOMAIN)
        assert "successful" in r.stdout, r.stdout + r.stderr
        # frames start >= 0.2 s apart, so a 4.5 s window holds at most 4.5 / 0.2 + 1 results
        # however fast the machine is (a slow one gives fewer, not none)
        n = _results(client, frames, 4.0, drain=0.5)
        assert 1 <= n <= 23, f"{n} results in 4.5 s with target_fps 5 and frames at 15 Hz"
        r = ros2(["param", "set", "/mobius", "target_fps", "-1.0"], DOMAIN)
        assert "successful" not in r.stdout
        # use_sim_time is a parameter like any other node's
        assert "successful" in ros2(["param", "set", "/mobius", "use_sim_time", "false"],
                                    DOMAIN).stdout  # fmt: skip
        # deactivate: no frames taken, the service says why; activate: frames again
        r = ros2(["lifecycle", "set", "/mobius", "deactivate"], DOMAIN)
        assert "successful" in r.stdout, r.stdout + r.stderr
        assert ros2(["lifecycle", "get", "/mobius"], DOMAIN).stdout.startswith("inactive")
        assert client.send(client.image(frames[0]), timeout=2.0) is None
        reply = client.set_prompts(PROMPTS)
        assert not reply.success and "inactive" in reply.message
        assert "successful" in ros2(["lifecycle", "set", "/mobius", "activate"], DOMAIN).stdout
        assert client.send(client.image(frames[0])) is not None
        dumped = _dump(tmp_path, "dump.yaml")
        assert dumped["prompts"] == new and dumped["target_fps"] == 5.0
        assert dumped["budget_sizes"] == []  # the empty list that used to break a relaunch
        # Ctrl-C on an idle node
        seconds = _clean_stop(proc, log)
        print(f"ros2 launch ended {seconds:.2f} s after SIGINT (idle)")

    # the dump relaunches unchanged; launch arguments left out do not override the file
    log2 = tmp_path / "launch2.log"
    with _launched(str(tmp_path / "dump.yaml"), log2) as (proc, client):
        assert _dump(tmp_path, "dump2.yaml") == dumped
        # Ctrl-C while frames flow: the frame in progress finishes, then a clean exit
        client.instances.clear()
        client.stream(frames, 15.0, 2.0, drain=0.0)
        assert client.instances, log2.read_text()[-2000:]
        seconds = _clean_stop(proc, log2)
        print(f"ros2 launch ended {seconds:.2f} s after SIGINT (busy)")


def test_a_signal_while_the_model_loads_ends_the_node_at_once(tmp_path):
    """SIGINT during configure (model load) and a second one during teardown: exit 0, no
    traceback. Runs the installed executable, as `ros2 run` does."""
    _tools_or_skip()
    import signal
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.prefix) / "lib" / "mobius_ros" / "mobius_node"
    log = tmp_path / "node.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([str(exe), "--ros-args", "-p", "threads:=1"], stdout=f,
                                stderr=subprocess.STDOUT, env=local_ros_env(DOMAIN))  # fmt: skip
    try:
        for _ in range(1200):  # until configure has begun (the log says so), or 120 s
            if "configuring:" in log.read_text() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert "configuring:" in log.read_text(), log.read_text()[-2000:]
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    finally:
        stop(proc)  # (a no-op once it has exited)
    text = log.read_text()
    assert code == 0 and "Traceback" not in text, text[-2000:]
    assert "active:" not in text, text[-2000:]  # it stopped during configure, not after


def test_launch_file_passes_only_given_arguments_and_runs_rviz_in_the_namespace():
    _tools_or_skip()
    import importlib.util

    from ament_index_python.packages import get_package_share_directory

    from launch import LaunchContext

    share = get_package_share_directory("mobius_ros")
    spec = importlib.util.spec_from_file_location("segment_launch",
                                                  f"{share}/launch/segment.launch.py")  # fmt: skip
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.given_parameters({"target_fps": "", "backend": ""}) == {}
    assert mod.given_parameters({"target_fps": "5", "autostart": "False"}) == {
        "target_fps": 5.0, "autostart": False}  # fmt: skip
    with pytest.raises(ValueError, match="use_sim_time"):
        mod.given_parameters({"use_sim_time": "yes"})
    description = mod.generate_launch_description()
    context = LaunchContext()
    for entity in description.entities:
        if type(entity).__name__ == "DeclareLaunchArgument":
            context.launch_configurations[entity.name] = entity.default_value[0].text
    context.launch_configurations.update({"namespace": "cam1", "target_fps": "2.5"})
    node, rviz = mod._node(context, share)
    node_ns = node._Node__node_namespace  # launch_ros keeps the unexpanded namespace here
    rviz_ns = rviz._Node__node_namespace
    assert node_ns == rviz_ns == "cam1"
    params = node._Node__parameters  # normalised: keys are tuples of substitutions
    given = {"".join(s.perform(context) for s in k): v for k, v in params[-1].items()}
    assert given == {"target_fps": 2.5}  # only the argument that was given
    assert len(params) == 2  # the params file, then the given arguments
    remaps = [tuple("".join(s.perform(context) for s in part) for part in r)
              for r in node._Node__remappings]  # fmt: skip
    assert remaps == [
        ("image", "/camera/image_raw"),
        ("depth", "/camera/depth/image_raw"),
        ("camera_info", "/camera/camera_info"),
    ]  # the compressed topic follows `image`
