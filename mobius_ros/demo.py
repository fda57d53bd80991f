"""``make demo``: the node with the shipped model, a camera, one prompt change, a report.

The node runs in its own process, as on a robot; this process plays the camera (synthetic
scenes at 640x480) and watches ``instances``, ``overlay`` and ``/diagnostics`` like RViz
would, and calls ``set_prompts`` once half-way. The report (Markdown + JSON + overlay PNGs)
goes to ``--out``. Traffic stays on this machine (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST).
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from mobius_core.atomic import atomic_write_bytes

from .conversions import image_to_rgb
from .harness import Harness, ros_list, source_root, start_node, stop
from .localenv import use_local_ros_env

FIRST_PROMPTS = ["red circle", "blue square", "yellow triangle", "green star"]
SECOND_PROMPTS = ["orange hexagon", "purple hexagon", "yellow square", "black cross"]
STARTUP_TIMEOUT_S = 240.0  # the first start exports the shipped model to ONNX


def phase_stats(records: list[tuple[float, float, Any]]) -> dict[str, float]:
    """FPS from arrival times; latency = arrival - publication of the image."""
    if len(records) < 2:
        return {"messages": len(records), "fps": 0.0}
    arrived = np.array([r[1] for r in records])
    lat = np.array([r[1] - r[0] for r in records]) * 1e3
    inf = np.array([r[2].inference_ms for r in records])
    return {
        "messages": len(records),
        "fps": (len(arrived) - 1) / (arrived[-1] - arrived[0]),
        "latency_p50_ms": float(np.percentile(lat, 50)),
        "latency_p95_ms": float(np.percentile(lat, 95)),
        "inference_p50_ms": float(np.percentile(inf, 50)),
        "instances_per_frame": float(np.mean([len(r[2].instances) for r in records])),
    }


def _png(msg: Any) -> bytes:
    from PIL import Image

    arr = image_to_rgb(msg.encoding, msg.height, msg.width, msg.step, bytes(msg.data))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def run_demo(out: Path, seconds: float = 10.0, rate: float = 15.0, domain_id: int | None = None,
             backend: str = "onnxruntime") -> int:  # fmt: skip
    domain = domain_id if domain_id is not None else 1 + os.getpid() % 100
    use_local_ros_env(domain)
    import rclpy

    from .camera import demo_frames

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "node.log"
    # this checkout's node where there is one, else the installed executable
    proc = start_node({"prompts": ros_list(FIRST_PROMPTS), "backend": backend}, domain, log,
                      source=source_root() is not None)  # fmt: skip
    rclpy.init()
    h = Harness("mobius_demo")
    try:
        frames = demo_frames(8, (480, 640))
        print(f"demo: node pid {proc.pid}, ROS_DOMAIN_ID={domain}; waiting for it "
              "(the first start exports the shipped model to ONNX)...")  # fmt: skip
        started = time.monotonic()
        if not h.wait_for_node(STARTUP_TIMEOUT_S) or proc.poll() is not None:
            print(f"demo: the node did not start; see {log}:\n{log.read_text()[-2000:]}")
            return 1
        h.send(h.image(frames[0]))  # the first frame warms the model up
        print(f"demo: node up after {time.monotonic() - started:.1f} s")
        phases = []
        for name, plist in (
            ("first prompts", FIRST_PROMPTS),
            ("after set_prompts", SECOND_PROMPTS),
        ):
            reply = None
            if plist is SECOND_PROMPTS:
                reply = h.set_prompts(plist, "category")
                print(f"demo: set_prompts -> success={reply.success}: {reply.message}")
                if not reply.success:
                    return 1
            h.instances.clear()
            records = h.stream(frames, rate, seconds)
            stats = phase_stats(records)
            labels = sorted({i.label for _, _, m in records for i in m.instances})
            overlay = h.grab_overlay(frames, rate)
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
                  "phases": phases, "diagnostics": h.diagnostics()}  # fmt: skip
        atomic_write_bytes(out / "report.json", json.dumps(report, indent=2).encode())
        atomic_write_bytes(out / "report.md", _markdown(report).encode())
        print(f"demo: report written to {out / 'report.md'}")
        ok = all(p["messages"] > 0 for p in phases)
        return 0 if ok and set(phases[1]["labels_seen"]) <= set(SECOND_PROMPTS) else 1
    finally:
        h.close()
        rclpy.shutdown()
        stop(proc)


def _markdown(r: dict) -> str:
    lines = [
        "# mobius_ros demo",
        "",
        f"Camera: synthetic scenes, {r['image']} at {r['camera_hz']:g} Hz; backend "
        f"{r['backend']}, the shipped model. Latency: image published -> instances received.",
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
