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
    return _png_array(image_to_rgb(msg.encoding, msg.height, msg.width, msg.step, bytes(msg.data)))


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


# -- the RGB-D demo (`mobius-ros demo --rgbd`, `make demo-rgbd`) ------------------------------

RGBD_WEIGHTS = "rgbd_tiny.pt"  # the model trained on the RGB-D world (mobius_core/weights)


def rgbd_model() -> tuple[str, str]:
    """(model, backend) node parameters for the RGB-D world: its own model where shipped,
    else the shipped default (which knows the 2D world's shapes, not these solids)."""
    from mobius_core.bundle import WEIGHTS_DIR

    path = WEIGHTS_DIR / RGBD_WEIGHTS
    return (str(path), "torch") if path.is_file() else ("", "onnxruntime")


def run_rgbd_demo(out: Path, frames: int = 12, seed: int = 7, domain_id: int | None = None,
                  model: str | None = None, backend: str | None = None) -> int:  # fmt: skip
    """The node with ``use_depth`` on rendered RGB-D scenes (image, registered depth,
    camera_info at one stamp): each instance's 3D position against the scene's truth, a
    report (Markdown + JSON) and an overlay with the positions written on it."""
    from mobius_core.data.rgbd import rgbd_scenes
    from mobius_core.geometry3d import summarise_3d

    from .depth import camera_info_msg, depth_image_msg
    from .replay import VISIBLE_MIN, frame_3d_rows, section_3d_table

    domain = domain_id if domain_id is not None else 1 + os.getpid() % 100
    use_local_ros_env(domain)
    import rclpy

    if model is None:
        model, default_backend = rgbd_model()
        backend = backend or default_backend
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scenes = list(rgbd_scenes(frames, seed))
    prompts = sorted({o.name for s in scenes for o in s.objects})
    log = out / "node.log"
    params = {"prompts": ros_list(prompts), "use_depth": "true", "model": model,
              "backend": backend or "onnxruntime"}  # fmt: skip
    proc = start_node(params, domain, log, source=source_root() is not None)
    rclpy.init()
    h = Harness("mobius_demo_rgbd")
    try:
        print(f"demo --rgbd: node pid {proc.pid}, model {model or 'the shipped one'}; "
              f"{len(scenes)} RGB-D scenes, prompts {prompts}")  # fmt: skip
        if not h.wait_for_node(STARTUP_TIMEOUT_S) or proc.poll() is not None:
            print(f"demo --rgbd: the node did not start; see {log}:\n{log.read_text()[-2000:]}")
            return 1
        rows, frames_out, best = [], [], None
        for k, scene in enumerate(scenes):
            msg = h.image(scene.image)
            got = h.send_rgbd(msg, depth_image_msg(scene.depth_mm), camera_info_msg(scene.camera),
                              timeout=120)  # fmt: skip
            if got is None:
                print(f"demo --rgbd: no result for scene {k}; see {log}")
                return 1
            gt = [{"label": o.name, "mask": o.mask, "center_3d": o.center, "box3d": o.box3d,
                   "distance": o.distance, "visible_fraction": o.visible_fraction}
                  for o in scene.objects if o.area]  # fmt: skip
            frame_rows = frame_3d_rows(got, gt)
            rows += frame_rows
            frames_out.append({"scene": k, "instances": [
                {"label": i.label, "score": round(float(i.score), 3), "has_3d": bool(i.has_3d),
                 "center_3d": [round(v, 3) for v in (i.center_3d.x, i.center_3d.y, i.center_3d.z)],
                 "size_3d": [round(v, 3) for v in (i.size_3d.x, i.size_3d.y, i.size_3d.z)]}
                for i in got.instances]})  # fmt: skip
            if best is None or len(got.instances) > len(best[1].instances):
                best = (scene, got)
        visible = [r for r in rows if r["visible_fraction"] >= VISIBLE_MIN]
        summary = {"all": summarise_3d(rows), "fully_visible": summarise_3d(visible),
                   "visible_min": VISIBLE_MIN}  # fmt: skip
        png = "overlay_rgbd.png"
        atomic_write_bytes(out / png, _png_array(overlay_3d(best[0].image, best[1])))
        report = {"scenes": len(scenes), "image": "640x480 rgb8 + 16UC1 depth + camera_info",
                  "model": model or "shipped", "prompts": prompts, "3d": summary,
                  "frames": frames_out, "overlay": png, "diagnostics": h.diagnostics()}  # fmt: skip
        atomic_write_bytes(out / "report.json", json.dumps(report, indent=2).encode())
        lines = ["# mobius_ros demo: RGB-D", "",
                 f"{len(scenes)} rendered scenes ({report['image']}), model {report['model']}, "
                 "node with use_depth. Each object of the scene matched to the instance of its "
                 "name with the highest mask IoU (>= 0.5).", "",
                 *section_3d_table(summary), "", "Positions of the frame below (metres, "
                 "optical frame: x right, y down, z forward):", "",
                 "| instance | score | centre (x, y, z) | size |",
                 "|---|---:|---|---|"]  # fmt: skip
        for i in best[1].instances:
            c, sz = i.center_3d, i.size_3d
            where = f"({c.x:.2f}, {c.y:.2f}, {c.z:.2f})" if i.has_3d else "no 3D"
            extent = f"{sz.x:.2f} x {sz.y:.2f} x {sz.z:.2f}" if i.has_3d else ""
            lines.append(f"| {i.label} | {i.score:.2f} | {where} | {extent} |")
        lines += ["", f"![3D positions]({png})", ""]
        atomic_write_bytes(out / "report.md", "\n".join(lines).encode())
        s = summary["all"]
        print(f"demo --rgbd: {s['matched']} of {s['gt_objects']} objects found, "
              f"{s['with_3d']} with 3D; report written to {out / 'report.md'}")  # fmt: skip
        return 0 if s["with_3d"] else 1
    finally:
        h.close()
        rclpy.shutdown()
        stop(proc)


def overlay_3d(rgb: np.ndarray, msg: Any) -> np.ndarray:
    """The frame with each instance's mask, box and "label x, y, z m" drawn."""
    from mobius_core.postprocess import Instances
    from mobius_core.rle import decode_rle
    from mobius_core.visualize import draw_instances

    insts = list(msg.instances)
    masks = np.stack([decode_rle({"size": [i.mask_height, i.mask_width],
                                  "counts": list(i.mask_rle_counts)}) for i in insts]) \
        if insts else np.zeros((0,) + rgb.shape[:2], bool)  # fmt: skip
    texts = [f"{i.label} ({i.center_3d.x:.2f}, {i.center_3d.y:.2f}, {i.center_3d.z:.2f}) m"
             if i.has_3d else f"{i.label} (no 3D)" for i in insts]  # fmt: skip
    inst = Instances(masks=masks, boxes=np.array([list(i.box) for i in insts], np.float32)
                     .reshape(-1, 4), scores=np.array([i.score for i in insts], np.float32),
                     labels=np.array([i.prompt_index for i in insts], np.int64),
                     label_texts=texts)  # fmt: skip
    return draw_instances(rgb, inst)


def _png_array(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()
