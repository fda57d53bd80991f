"""Drive a running node from another process: camera, listener and clients on one rclpy
node. Used by ``make demo``, the node tests and the ROS benchmarks.

Frames get a unique ``header.stamp.sec`` (a frame counter), so each InstanceArray can be
matched to the image it came from.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .localenv import local_ros_env

NODE_EXE = Path(sys.prefix) / "lib" / "mobius_ros" / "mobius_node"  # installed by `make ros`


def is_checkout(root: Path) -> bool:
    """``root`` is a source tree of this project (not site-packages, which has the modules
    but not the package files)."""
    return (root / "package.xml").is_file() and (root / "mobius_ros" / "cli.py").is_file()


def source_root() -> Path | None:
    """The checkout to run the node from: the folder above the imported mobius_ros when that
    is the source tree; else (the installed copy was imported, e.g. by pytest from any
    folder) the folder above mobius_core when that is an editable checkout; else None."""
    import mobius_core

    for pkg in (Path(__file__), Path(mobius_core.__file__)):
        root = pkg.resolve().parents[1]
        if is_checkout(root):
            return root
    return None


def node_command(source: bool = True, root: Path | None = None) -> tuple[list[str], Path | None]:
    """(argv, working folder) that starts the node. ``source``: ``python -m mobius_ros.cli``
    from ``root`` (default :func:`source_root`), so the checkout's modules come first on
    sys.path whichever copy this process imported; else the installed executable, which
    imports the installed copy (a script's own folder, not the working one, is on sys.path)."""
    if not source:
        if not NODE_EXE.is_file():
            raise FileNotFoundError(f"{NODE_EXE} is not installed; run `make ros`")
        return [str(NODE_EXE)], None
    root = Path(root).resolve() if root is not None else source_root()
    if root is None or not is_checkout(root):
        raise FileNotFoundError(
            f"no source checkout of mobius_ros ({root or 'none found'}); pass root=, or "
            "source=False for the installed node"
        )
    return [sys.executable, "-m", "mobius_ros.cli", "node"], root


def start_node(params: dict[str, str], domain_id: int, log: Path, source: bool = True,
               env: dict[str, str] | None = None, root: Path | None = None,
               **popen: Any):  # fmt: skip
    """Start the node in its own process. ``params``: name -> ROS value text.
    ``source``: run the checkout at ``root`` (default :func:`source_root`) with python -m
    rather than the installed executable (see :func:`node_command`). ``env`` (default
    os.environ) gets the local ROS settings; ``popen``: more Popen options."""
    args = [a for k, v in params.items() for a in ("-p", f"{k}:={v}")]
    exe, cwd = node_command(source, root)
    env = local_ros_env(domain_id, env)
    if cwd is not None:  # first on sys.path even where the working folder is not (-P)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(cwd), env.get("PYTHONPATH")) if p)
        popen.setdefault("cwd", cwd)
    with open(log, "w") as f:
        return subprocess.Popen([*exe, "--ros-args", *args], stdout=f, stderr=subprocess.STDOUT,
                                env=env, **popen)  # fmt: skip


def ros2_cli() -> Path | None:
    """The real ``ros2`` command beside this interpreter (a ROS 2 install, or the venv after
    ros-extras), with ``launch_ros`` importable; None where they are missing."""
    import importlib.util
    import shutil

    exe = Path(sys.prefix) / "bin" / "ros2"
    if not exe.is_file():
        found = shutil.which("ros2")
        exe = Path(found) if found else None
    if exe is None or importlib.util.find_spec("launch_ros") is None:
        return None
    return exe


def launch_segment(args: dict[str, str], domain_id: int, log: Path) -> subprocess.Popen:
    """``ros2 launch mobius_ros segment.launch.py name:=value ...`` in its own session, so a
    signal to its process group reaches launch as a terminal's Ctrl-C does."""
    cmd = [str(ros2_cli()), "launch", "mobius_ros", "segment.launch.py"]
    cmd += [f"{k}:={v}" for k, v in args.items()]
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=local_ros_env(domain_id), start_new_session=True)  # fmt: skip


# Commands that would otherwise start a `ros2 daemon`, a background process that outlives
# the command (and the test that ran it); they take --no-daemon.
NO_DAEMON = {"param": None, "lifecycle": None, "node": None, "topic": ("list", "echo", "info"),
             "service": ("list",)}  # fmt: skip


def ros2(args: list[str], domain_id: int, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """One ``ros2 ...`` command (its output as text; the return code is not checked). It
    never leaves a ``ros2 daemon`` behind (``--no-daemon`` where the verb would start one);
    without the daemon each command discovers the graph itself and may miss a node at first
    ("Node not found"), so that answer is retried until ``timeout``."""
    verbs = NO_DAEMON.get(args[0], ()) if args else ()
    if verbs is None or (len(args) > 1 and args[1] in verbs):
        args = [*args, "--no-daemon"]
    end = time.monotonic() + timeout
    while True:
        r = subprocess.run([str(ros2_cli()), *args], capture_output=True, text=True,
                           timeout=max(1.0, end - time.monotonic()), env=local_ros_env(domain_id),
                           stdin=subprocess.DEVNULL)  # fmt: skip
        if "Node not found" not in r.stderr + r.stdout or time.monotonic() > end - 1.0:
            return r
        time.sleep(0.3)


def ros2_until(args: list[str], domain_id: int, ok, seconds: float = 60.0) -> str:
    """Repeat a ``ros2`` command until ``ok(output)`` (a fresh graph may not show the node at
    first: "Node not found"); the last output either way."""
    end, out = time.monotonic() + seconds, ""
    while time.monotonic() < end:
        r = ros2(args, domain_id)
        out = r.stdout + r.stderr
        if ok(out):
            break
        time.sleep(0.5)
    return out


def interrupt(proc: subprocess.Popen, timeout: float = 30.0) -> tuple[int, float]:
    """SIGINT to the process group (Ctrl-C); (exit code, seconds to exit). Killed after
    ``timeout`` (exit code then None-like -9)."""
    import os
    import signal

    start = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
    return code, time.monotonic() - start


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def ros_list(values: list[str]) -> str:
    """A string list as a ROS parameter value on the command line."""
    return "[" + ",".join(f"'{v}'" for v in values) + "]"


class Harness:
    """Publishers for ``image`` and ``image/compressed``; records ``instances`` (by frame
    number, with arrival time), ``instance_mask`` and ``/diagnostics``; calls
    ``set_prompts`` and ``/mobius/set_parameters``."""

    def __init__(self, name: str = "mobius_harness", masks: bool = True) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rcl_interfaces.srv import SetParameters
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CompressedImage, Image

        from mobius_ros.msg import InstanceArray
        from mobius_ros.srv import SetPrompts

        self.rclpy, self.Image, self.CompressedImage = rclpy, Image, CompressedImage
        self.node = rclpy.create_node(name)
        self.pub = self.node.create_publisher(Image, "image", qos_profile_sensor_data)
        self.pub_c = self.node.create_publisher(
            CompressedImage, "image/compressed", qos_profile_sensor_data
        )
        self.instances: dict[int, tuple[float, Any]] = {}
        self.masks: dict[int, Any] = {}
        self.diag: list[Any] = []
        self.node.create_subscription(InstanceArray, "instances", self._on_inst, 100)
        if masks:  # the node computes the label image only while someone subscribes
            self.node.create_subscription(Image, "instance_mask", self._on_mask, 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diag.append, 10)
        self.prompts = self.node.create_client(SetPrompts, "set_prompts")
        from geometry_msgs.msg import PointStamped

        self.pub_click = self.node.create_publisher(PointStamped, "point_prompt", 10)
        from sensor_msgs.msg import CameraInfo

        self.pub_depth = self.node.create_publisher(Image, "depth", qos_profile_sensor_data)
        self.pub_info = self.node.create_publisher(CameraInfo, "camera_info", 10)
        self.params = self.node.create_client(SetParameters, "/mobius/set_parameters")
        self.SetPrompts, self.SetParameters = SetPrompts, SetParameters
        self.stamp = 1000
        self.qos_sensor = qos_profile_sensor_data

    def _on_inst(self, msg: Any) -> None:
        self.instances[msg.header.stamp.sec] = (time.monotonic(), msg)

    def _on_mask(self, msg: Any) -> None:
        self.masks[msg.header.stamp.sec] = msg

    def spin(self, seconds: float, until=lambda: False) -> bool:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.rclpy.spin_once(self.node, timeout_sec=0.01)
            if until():
                return True
        return False

    def wait_for_node(self, timeout: float = 240.0) -> bool:
        return self.prompts.wait_for_service(timeout_sec=timeout)

    def image(self, rgb=None, encoding="rgb8", step=None, data=None, h=None, w=None) -> Any:
        """An Image message with a fresh stamp (seconds field = frame number)."""
        self.stamp += 1
        msg = self.Image(encoding=encoding)
        if rgb is not None:
            msg.height, msg.width = rgb.shape[:2]
            msg.step = step if step is not None else rgb.shape[1] * rgb.shape[2]
            msg.data = data if data is not None else rgb.tobytes()
        else:
            msg.height, msg.width, msg.step, msg.data = h, w, step, data
        msg.header.stamp.sec, msg.header.frame_id = self.stamp, "camera"
        return msg

    def compressed(self, fmt: str, data: bytes) -> Any:
        self.stamp += 1
        msg = self.CompressedImage(format=fmt, data=data)
        msg.header.stamp.sec, msg.header.frame_id = self.stamp, "camera"
        return msg

    def send(self, msg: Any, wait: bool = True, timeout: float = 30.0) -> Any:
        """Publish (again every 0.5 s: best effort) until the instances for it arrive;
        returns that InstanceArray (None if ``wait`` is False or it never came)."""
        pub = self.pub_c if isinstance(msg, self.CompressedImage) else self.pub
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pub.publish(msg)
            if not wait or self.spin(0.5, lambda: msg.header.stamp.sec in self.instances):
                break
        return self.instances.get(msg.header.stamp.sec, (None, None))[1]

    def send_rgbd(self, msg: Any, depth: Any, info: Any, timeout: float = 30.0) -> Any:
        """``send`` with a depth image and camera_info at the image's stamp (use_depth):
        the three are published together (again every 0.5 s) until the instances come."""
        depth.header = info.header = msg.header
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.pub_info.publish(info)
            self.pub_depth.publish(depth)
            self.pub.publish(msg)
            if self.spin(0.5, lambda: msg.header.stamp.sec in self.instances):
                break
        return self.instances.get(msg.header.stamp.sec, (None, None))[1]

    def stream(self, frames: list[Any], rate: float, seconds: float, drain: float = 2.0,
               on_frame=None) -> list[tuple[float, float, Any]]:  # fmt: skip
        """Publish ``frames`` (RGB arrays, cycled) at ``rate`` Hz for ``seconds``, then wait
        ``drain`` s; returns (sent, arrived, InstanceArray) per frame that came back, in
        order. ``on_frame(i)`` runs before each publish (e.g. to read diagnostics)."""
        sent: dict[int, float] = {}
        start, i = time.monotonic(), 0
        while time.monotonic() - start < seconds:
            if on_frame is not None:
                on_frame(i)
            msg = self.image(frames[i % len(frames)])
            sent[msg.header.stamp.sec] = time.monotonic()
            self.pub.publish(msg)
            i += 1
            self.spin(max(0.0, start + i / rate - time.monotonic()))
        self.spin(drain)
        return sorted((sent[s], t, m) for s, (t, m) in self.instances.items() if s in sent)

    def call(self, client: Any, request: Any, timeout: float = 30.0) -> Any:
        if not client.wait_for_service(timeout_sec=timeout):
            raise RuntimeError(f"service {client.srv_name} did not appear")
        future = client.call_async(request)
        self.rclpy.spin_until_future_complete(self.node, future, timeout_sec=timeout)
        if not future.done():
            raise RuntimeError(f"service {client.srv_name} did not answer")
        return future.result()

    def set_prompts(
        self, prompts: list[str], mode: str = "", points: list[float] = (), boxes: list[float] = (),
        clear_visual: bool = False,
    ) -> Any:  # fmt: skip
        request = self.SetPrompts.Request(prompts=prompts, mode=mode, clear_visual=clear_visual)
        request.points, request.boxes = [float(v) for v in points], [float(v) for v in boxes]
        return self.call(self.prompts, request)

    def click(self, x: float, y: float, frame_id: str = "camera", stamp: Any = None) -> None:
        """Publish a point_prompt as an image viewer does on a mouse click."""
        from geometry_msgs.msg import PointStamped

        msg = PointStamped()
        msg.header.frame_id = frame_id
        msg.header.stamp = stamp or self.node.get_clock().now().to_msg()
        msg.point.x, msg.point.y = float(x), float(y)
        self.pub_click.publish(msg)

    def set_param(self, name: str, value: Any) -> Any:
        from rclpy.parameter import Parameter

        p = Parameter(name, value=value).to_parameter_msg()
        return self.call(self.params, self.SetParameters.Request(parameters=[p])).results[0]

    def diagnostics(self, timeout: float = 5.0) -> dict[str, str]:
        """The next /diagnostics status of the node, as a dict."""
        self.diag.clear()
        self.spin(timeout, lambda: bool(self.diag))
        if not self.diag:
            return {}
        return {kv.key: kv.value for kv in self.diag[-1].status[0].values}

    def grab_overlay(self, frames: list[Any], rate: float, seconds: float = 3.0) -> Any:
        """Subscribe to ``overlay`` while streaming ``frames`` and return the overlay whose
        InstanceArray had the most instances (the node draws overlays only while someone
        subscribes, so measured phases run without that cost)."""
        overlays: dict[int, Any] = {}
        sub = self.node.create_subscription(
            self.Image, "overlay", lambda m: overlays.__setitem__(m.header.stamp.sec, m),
            self.qos_sensor,
        )  # fmt: skip
        self.spin(0.5)  # let the subscription match
        self.stream(frames, rate, seconds, drain=1.0)
        self.node.destroy_subscription(sub)
        if not overlays:
            return None
        count = {s: len(m.instances) for s, (_, m) in self.instances.items()}
        return max(overlays.items(), key=lambda kv: count.get(kv[0], -1))[1]

    def close(self) -> None:
        self.node.destroy_node()
