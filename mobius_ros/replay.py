"""``mobius-ros replay``: a recorded bag through the real node, measured.

Frames are read from the bag (``bags.read_frames``), published to a node running in its
own process at the recorded rate (``--rate 1.0``, or a multiple) or as fast as the node
takes them (``--rate max``: the next frame after the previous result), and every
InstanceArray the node publishes is written to ``OUT/outputs`` (rosbag2, mcap). The report
(``OUT/report.json``, ``OUT/report.md`` with plots) gives per-frame latency (publication to
result), p50/p95/max, achieved FPS, dropped frames, kept queries and the budget's settings
over time, and with ground truth (COCO json whose images carry ``timestamp_ns``) box and
mask AP through the same evaluator as ``mobius eval``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from mobius_core.atomic import atomic_write_bytes

from .bags import BagRecorder, ReadReport, check_topic, msg_dir, read_frames
from .harness import Harness, ros_list, start_node, stop
from .localenv import use_local_ros_env


def parse_rate(text: str) -> float | None:
    """``max`` -> None (as fast as the node takes frames); else a positive multiple."""
    if str(text).lower() == "max":
        return None
    try:
        rate = float(text)
    except ValueError:
        rate = -1.0
    if not rate > 0:
        raise ValueError(f"--rate {text!r}: give a positive multiple of the recorded rate or 'max'")
    return rate


def load_gt(path: str | Path) -> dict[str, Any]:
    gt = json.loads(Path(path).read_text())
    missing = [im.get("id") for im in gt.get("images", []) if "timestamp_ns" not in im]
    if missing:
        raise ValueError(
            f"{path}: images {missing[:5]} have no timestamp_ns; replay matches ground truth "
            "to frames by message timestamp (see `mobius-ros make-bag`)"
        )
    return gt


def outputs_to_coco(msg: Any, image_id: int, cat_ids: list[int]) -> list[dict[str, Any]]:
    """An InstanceArray -> COCO result dicts (category = the gt id of the prompt)."""
    from mobius_core.postprocess import Instances, instances_to_coco
    from mobius_core.rle import decode_rle

    if not msg.instances:
        return []
    masks = np.stack([
        decode_rle({"size": [i.mask_height, i.mask_width], "counts": list(i.mask_rle_counts)})
        for i in msg.instances
    ])  # fmt: skip
    inst = Instances(
        scores=np.array([i.score for i in msg.instances], np.float32),
        labels=np.array([i.prompt_index for i in msg.instances], np.int64),
        boxes=np.array([list(i.box) for i in msg.instances], np.float32),
        masks=masks,
    )
    results = instances_to_coco(inst, image_id)
    for r in results:
        r["category_id"] = cat_ids[int(r["category_id"])]
    return results


def run_replay(
    bag: str | Path, image_topic: str, out: str | Path, rate: float | None = None,
    prompts: list[str] | None = None, gt_path: str | Path | None = None,
    node_params: dict[str, str] | None = None, domain_id: int | None = None,
    timeout_s: float = 20.0,
) -> dict[str, Any]:  # fmt: skip
    from rclpy.serialization import serialize_message

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_topic(bag, image_topic)  # clear errors before the node starts
    msg_dir()
    gt = load_gt(gt_path) if gt_path else None
    if gt is not None and not prompts:
        prompts = [c["name"] for c in gt["categories"]]
    if not prompts:
        raise ValueError("give --prompts (or --gt, whose category names become the prompts)")
    params = {"prompts": ros_list(prompts)}
    if gt is not None:
        # the AP protocol of `mobius eval`: low threshold, 100 per image, and every label
        # hypothesis of a mask kept (tracking's duplicate suppression would drop the
        # lower-scoring label of one mask: -9.8 mask AP on 6 val images at threshold 0.05)
        params.update({"score_threshold": "0.05", "max_instances": "100", "tracking": "false"})
    params.update(node_params or {})
    domain = domain_id if domain_id is not None else 1 + os.getpid() % 100
    use_local_ros_env(domain)
    import rclpy

    proc = start_node(params, domain, out / "node.log")
    rclpy.init()
    h = Harness("mobius_replay", masks=False)
    read = ReadReport()
    sent: dict[int, tuple[int, float]] = {}  # stamp.sec used -> (frame index, publish time)
    frames_meta: list[tuple[int, int]] = []  # (bag time, header stamp) per frame
    interrupted = False
    try:
        if not h.wait_for_node(240):
            raise RuntimeError(f"the node did not start; see {out / 'node.log'}")
        h.send(h.image(np.zeros((64, 64, 3), np.uint8)))  # warm-up, not counted
        h.instances.clear()
        with BagRecorder(out / "outputs") as rec:
            start, t_first = time.monotonic(), None
            try:
                for frame in read_frames(bag, image_topic, read):
                    frames_meta.append((frame.timestamp_ns, frame.stamp_ns))
                    msg = h.image(frame.rgb)
                    if rate is not None:
                        t_first = frame.timestamp_ns if t_first is None else t_first
                        due = start + (frame.timestamp_ns - t_first) / 1e9 / rate
                        h.spin(max(0.0, due - time.monotonic()))
                    sent[msg.header.stamp.sec] = (frame.index, time.monotonic())
                    h.pub.publish(msg)
                    if rate is None:  # the next frame once this one is done
                        h.spin(timeout_s, lambda s=msg.header.stamp.sec: s in h.instances)
                h.spin(3.0)
            except KeyboardInterrupt:
                interrupted = True
            for _, (t_arrived, msg) in sorted(h.instances.items()):
                rec.write("/mobius/instances", "mobius_ros/msg/InstanceArray",
                          int(t_arrived * 1e9), serialize_message(msg))  # fmt: skip
    finally:
        h.close()
        rclpy.shutdown()
        stop(proc)
    report = _report(sent, h, frames_meta, read, gt, prompts, rate, interrupted)
    atomic_write_bytes(out / "report.json", json.dumps(report, indent=2).encode())
    _write_page(out, report)
    return report


def _report(sent, h, frames_meta, read, gt, prompts, rate, interrupted) -> dict[str, Any]:
    rows = []  # (frame index, publish, arrival, msg)
    for sec, (index, t_pub) in sent.items():
        if sec in h.instances:
            t_arr, msg = h.instances[sec]
            rows.append((index, t_pub, t_arr, msg))
    rows.sort(key=lambda r: r[0])
    lat = np.array([(r[2] - r[1]) * 1e3 for r in rows])
    arrived = np.sort([r[2] for r in rows])
    span = arrived[-1] - arrived[0] if len(arrived) > 1 else 0.0
    report: dict[str, Any] = {
        "frames": read.frames,
        "published": len(sent),
        "outputs": len(rows),
        "dropped": len(sent) - len(rows),
        "fps": (len(arrived) - 1) / span if span > 0 else 0.0,
        "latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else 0.0,
        "latency_p95_ms": float(np.percentile(lat, 95)) if lat.size else 0.0,
        "latency_max_ms": float(lat.max()) if lat.size else 0.0,
        "rate": "max" if rate is None else rate,
        "prompts": prompts,
        "skipped_not_image": read.skipped_type,
        "skipped_corrupt": read.skipped_corrupt,
        "out_of_order_stamps": read.out_of_order,
        "problems": read.problems,
        "interrupted": interrupted,
        "per_frame": [
            {"frame": i, "latency_ms": round((ta - tp) * 1e3, 2),
             "arrived_s": round(ta - arrived[0], 4), "instances": len(m.instances),
             "kept_queries": int(m.kept_queries), "inference_ms": round(float(m.inference_ms), 2)}
            for i, tp, ta, m in rows
        ],
        "budget": _budget_trace(h),
    }  # fmt: skip
    if gt is not None:
        from mobius_core.evaluation.coco import evaluate_coco

        by_stamp = {im["timestamp_ns"]: im["id"] for im in gt["images"]}
        # a frame's ground truth: by header stamp, else by the bag's receive time
        image_ids = [by_stamp.get(stamp, by_stamp.get(bag_t)) for bag_t, stamp in frames_meta]
        name_to_id = {c["name"]: c["id"] for c in gt["categories"]}
        cat_ids = [name_to_id.get(p, -1) for p in prompts]
        results, matched = [], set()
        for index, _, _, msg in rows:
            image_id = image_ids[index]
            if image_id is None:
                continue
            matched.add(image_id)
            results += [r for r in outputs_to_coco(msg, image_id, cat_ids) if r["category_id"] > 0]
        replayed = {i for i in image_ids if i is not None}
        sub = {**gt, "images": [im for im in gt["images"] if im["id"] in replayed]}
        sub["annotations"] = [a for a in gt["annotations"] if a["image_id"] in replayed]
        report.update(evaluate_coco(sub, results))
        report["gt_images"] = len(sub["images"])
        report["gt_images_with_output"] = len(matched)
    return report


def _budget_trace(h: Harness) -> list[dict[str, str]]:
    out = []
    for d in h.diag:
        for st in d.status:
            if st.name.startswith("mobius_ros"):
                v = {kv.key: kv.value for kv in st.values}
                out.append({k: v.get(k, "") for k in ("fps", "budget_target_fps",
                            "budget_setting", "kept_queries", "dropped_frames")})  # fmt: skip
    return out


def _write_page(out: Path, r: dict[str, Any]) -> None:
    import io

    from mobius_core.visualize import line_plot

    def save(img, name: str) -> str:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        atomic_write_bytes(out / name, buf.getvalue())
        return name

    pf = r["per_frame"]
    lat = [f["latency_ms"] for f in pf]
    t = [f["arrived_s"] for f in pf]
    rolling = [10 / (t[i] - t[i - 10]) if t[i] > t[i - 10] else 0.0 for i in range(10, len(t))]
    target = next((float(b["budget_target_fps"]) for b in r["budget"]
                   if b.get("budget_target_fps") not in ("", "0")), None)  # fmt: skip

    def chart(name: str, ys: list[float], colour, title: str, hline=None):
        return line_plot([(name, range(len(ys)), ys)], title, "frame", hline, (720, 320),
                         [colour])  # fmt: skip

    plots = [
        save(chart("latency (ms)", lat, (200, 40, 40),
                   "latency per frame (publication -> result)"), "latency.png"),
        save(chart("FPS, rolling 10 frames", rolling, (40, 90, 200), "delivered rate"
                   + (f" (target {target:g} FPS, grey)" if target else ""), target), "fps.png"),
        save(chart("kept queries (last layer)", [f["kept_queries"] for f in pf], (40, 150, 60),
                   "kept queries per frame"), "kept.png"),
    ]  # fmt: skip
    lines = [
        "# mobius_ros replay report", "",
        f"{r['frames']} frames read, {r['published']} published (rate {r['rate']}), "
        f"{r['outputs']} results, {r['dropped']} dropped; {r['fps']:.1f} FPS.", "",
        "| latency p50 | p95 | max |", "|---:|---:|---:|",
        f"| {r['latency_p50_ms']:.1f} ms | {r['latency_p95_ms']:.1f} ms "
        f"| {r['latency_max_ms']:.1f} ms |",
        "",
    ]  # fmt: skip
    if "mask_ap" in r:
        lines += [
            f"Against the ground truth ({r['gt_images']} images): mask AP {r['mask_ap']:.1f}, "
            f"mask AP50 {r['mask_ap50']:.1f}, box AP {r['box_ap']:.1f}.", ""
        ]  # fmt: skip
    skipped = r["skipped_not_image"] + r["skipped_corrupt"] + r["out_of_order_stamps"]
    if skipped or r["interrupted"]:
        lines += ["Reading the bag: " + "; ".join(r["problems"][:10]) or "", ""]
        if r["interrupted"]:
            lines += ["The replay was interrupted; the figures cover the frames sent.", ""]
    lines += [f"![{p}]({p})" for p in plots]
    atomic_write_bytes(out / "report.md", ("\n".join(lines) + "\n").encode())
