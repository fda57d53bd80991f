"""``make demo``: the node with the shipped model, a demo camera, one prompt change, a report.

The node runs in its own process, as on a robot; this process plays the camera (synthetic
scenes at 640x480), watches ``instances``, ``overlay`` and ``/diagnostics`` like RViz would,
and calls ``set_prompts`` once half-way. The report (Markdown + JSON + overlay PNGs) goes to
``--out``. Traffic stays on this machine (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mobius_core.atomic import atomic_write_bytes

from .localenv import use_local_ros_env

FIRST_PROMPTS = ["red circle", "blue square", "yellow triangle", "green star"]
SECOND_PROMPTS = ["orange hexagon", "purple hexagon", "yellow square", "black cross"]
STARTUP_TIMEOUT_S = 240.0  # the first start exports the shipped model to ONNX


def node_command(extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "mobius_ros.cli", "node", "--ros-args", *extra]


class Watcher:
    """Subscriptions and a client on one rclpy node, recording what arrives."""

    def __init__(self, node) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        from mobius_ros.msg import InstanceArray
        from mobius_ros.srv import SetPrompts

        self.node = node
        self.instances: list[tuple[float, object]] = []
        self.diagnostics: dict[str, str] = {}
        node.create_subscription(InstanceArray, "instances", self._on_instances, 50)
        self._overlay_args = (Image, "overlay", None, qos_profile_sensor_data)
        self._extra = None
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.client = node.create_client(SetPrompts, "set_prompts")
        self.SetPrompts = SetPrompts

    def _on_instances(self, msg) -> None:
        self.instances.append((time.monotonic(), msg))
        if self._extra is not None:
            self._extra(msg)

    def _on_diag(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith("mobius_ros"):
                self.diagnostics = {kv.key: kv.value for kv in status.values}

    def grab_overlay(self, seconds: float = 3.0):
        """Subscribe to ``overlay`` for a while and keep the frame with the most instances
        (the node draws overlays only while someone subscribes, so the measured phases run
        without that cost)."""
        overlays: dict[tuple[int, int], object] = {}
        counts: dict[tuple[int, int], int] = {}

        def on_overlay(msg) -> None:
            overlays[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg

        def on_instances(msg) -> None:
            counts[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = len(msg.instances)

        image, topic, _, qos = self._overlay_args
        sub = self.node.create_subscription(image, topic, on_overlay, qos)
        self._extra = on_instances
        self.spin_for(seconds)
        self._extra = None
        self.node.destroy_subscription(sub)
        if not overlays:
            return None
        return max(overlays.items(), key=lambda kv: counts.get(kv[0], -1))[1]

    def spin_for(self, seconds: float, until=None) -> bool:
        import rclpy

        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=0.05)
            if until is not None and until():
                return True
        return until is None

    def set_prompts(self, prompts: list[str], mode: str = "category", timeout: float = 30.0):
        import rclpy

        if not self.client.wait_for_service(timeout_sec=timeout):
            raise RuntimeError("set_prompts service did not appear")
        future = self.client.call_async(self.SetPrompts.Request(prompts=prompts, mode=mode))
        rclpy.spin_until_future_complete(self.node, future, timeout_sec=timeout)
        if not future.done():
            raise RuntimeError("set_prompts did not answer")
        return future.result()


def phase_stats(msgs: list[tuple[float, object, float]]) -> dict[str, float]:
    """FPS from arrival times; latency from the image stamp to arrival (same clock)."""
    if len(msgs) < 2:
        return {"messages": len(msgs), "fps": 0.0}
    t = np.array([m[0] for m in msgs])
    lat = np.array([m[2] for m in msgs]) * 1e3
    inf = np.array([m[1].inference_ms for m in msgs])
    return {
        "messages": len(msgs),
        "fps": (len(t) - 1) / (t[-1] - t[0]),
        "latency_p50_ms": float(np.percentile(lat, 50)),
        "latency_p95_ms": float(np.percentile(lat, 95)),
        "inference_p50_ms": float(np.percentile(inf, 50)),
        "instances_per_frame": float(np.mean([len(m[1].instances) for m in msgs])),
    }


def _png(msg) -> bytes:
    from PIL import Image

    arr = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def run_demo(out: Path, seconds: float = 10.0, rate: float = 15.0, domain_id: int | None = None,
             backend: str = "onnxruntime") -> int:  # fmt: skip
    use_local_ros_env(domain_id if domain_id is not None else 1 + os.getpid() % 100)
    import rclpy

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = "[" + ",".join(f"'{p}'" for p in FIRST_PROMPTS) + "]"
    log_path = out / "node.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            node_command(["-p", f"prompts:={prompts}", "-p", f"backend:={backend}"]),
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    camera = subprocess.Popen(
        [sys.executable, "-m", "mobius_ros.cli", "camera", "--rate", str(rate)],
        stdout=open(out / "camera.log", "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    rclpy.init()
    node = rclpy.create_node("mobius_demo")
    try:
        w = Watcher(node)
        clock = node.get_clock()
        print(f"demo: node pid {proc.pid}, ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}; "
              "waiting for the first instances (the first start exports the model)...")  # fmt: skip
        started = time.monotonic()
        ok = w.spin_for(STARTUP_TIMEOUT_S, lambda: bool(w.instances) or proc.poll() is not None)
        if not ok or proc.poll() is not None:
            print(f"demo: the node did not start; see {log_path}:\n{log_path.read_text()[-2000:]}")
            return 1
        print(f"demo: node up after {time.monotonic() - started:.1f} s")
        phases = []
        for name, plist in (
            ("first prompts", FIRST_PROMPTS),
            ("after set_prompts", SECOND_PROMPTS),
        ):
            reply = None
            if plist is SECOND_PROMPTS:
                reply = w.set_prompts(plist)
                print(f"demo: set_prompts -> success={reply.success}: {reply.message}")
                if not reply.success:
                    return 1
                w.spin_for(1.0)  # let frames with the old prompts drain
            w.instances.clear()
            records = []
            end = time.monotonic() + seconds

            def collect(records=records, end=end) -> bool:
                while w.instances:
                    t, msg = w.instances.pop(0)
                    stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
                    now = clock.now().nanoseconds * 1e-9
                    records.append((t, msg, now - stamp))
                return time.monotonic() > end

            w.spin_for(seconds + 5, collect)
            overlay = w.grab_overlay()
            stats = phase_stats(records)
            labels = sorted({i.label for _, m, _ in records for i in m.instances})
            png = None
            if overlay is not None:
                png = f"overlay_{len(phases) + 1}.png"
                atomic_write_bytes(out / png, _png(overlay))
            phases.append({"name": name, "prompts": plist, "labels_seen": labels,
                           "overlay": png, **stats,
                           **({"set_prompts": reply.message} if reply else {})})  # fmt: skip
            print(f"demo: {name}: {stats.get('fps', 0):.1f} FPS, latency p50 "
                  f"{stats.get('latency_p50_ms', 0):.0f} ms, labels {labels}")  # fmt: skip
        report = {"camera_hz": rate, "image": "640x480 rgb8", "backend": backend,
                  "phases": phases,
                  "diagnostics": w.diagnostics}  # fmt: skip
        atomic_write_bytes(out / "report.json", json.dumps(report, indent=2).encode())
        atomic_write_bytes(out / "report.md", _markdown(report).encode())
        print(f"demo: report written to {out / 'report.md'}")
        ok = all(p["messages"] > 0 for p in phases) and set(phases[1]["labels_seen"]) <= set(
            SECOND_PROMPTS
        )
        return 0 if ok else 1
    finally:
        node.destroy_node()
        rclpy.shutdown()
        for p in (camera, proc):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def _markdown(r: dict) -> str:
    lines = [
        "# mobius_ros demo",
        "",
        f"Camera: synthetic scenes, {r['image']} at {r['camera_hz']:g} Hz (`mobius-ros camera`, "
        f"its own process); backend {r['backend']}, shipped model.",
        "",
        "| phase | prompts | FPS | latency p50 / p95 (ms) | inference p50 (ms) | instances/frame |",
        "|---|---|---|---|---|---|",
    ]
    for p in r["phases"]:
        lines.append(
            f"| {p['name']} | {', '.join(p['prompts'])} | {p.get('fps', 0):.1f} | "
            f"{p.get('latency_p50_ms', 0):.0f} / {p.get('latency_p95_ms', 0):.0f} | "
            f"{p.get('inference_p50_ms', 0):.0f} | {p.get('instances_per_frame', 0):.1f} |"
        )
    lines.append("")
    for p in r["phases"]:
        if p.get("set_prompts"):
            lines.append(f"set_prompts reply: {p['set_prompts']}")
        lines.append(f"- {p['name']}: labels seen {p['labels_seen']}")
        if p["overlay"]:
            lines.append(f"\n![{p['name']}]({p['overlay']})\n")
    if r["diagnostics"]:
        lines += ["", "Last /diagnostics:", ""]
        lines += [f"- {k}: {v}" for k, v in r["diagnostics"].items()]
    return "\n".join(lines) + "\n"
