"""The ROS node measured from another process: its own overhead, and the frame-rate budget.

    python benchmarks/ros_node.py overhead [--frames 100]
    python benchmarks/ros_node.py budget [--plot benchmarks/ros_budget.png]
    python benchmarks/ros_node.py prompts [--repeats 3]

overhead: 640x480 rgb8 frames are sent one at a time (the next after the previous result
arrived, so nothing queues). Overhead = (image published -> InstanceArray received) minus
the model's inference time that the node reports in the message; it covers transport both
ways, conversion, preprocessing, post-processing (masks at full resolution), RLE and the
message. An in-process breakdown of the same steps follows.

The same frames then go, the same way, to a floor process (``_echo``): an rclpy node that
only copies each image's header into an empty InstanceArray and publishes it, with the
node's QoS. What it takes is the transport both ways plus rclpy's callbacks: no node that
receives the 640x480 image over DDS can be faster, whatever its own steps cost.

budget: the node's saturated rate (camera at 60 Hz) is measured with the budget at its
best level (no pruning, full size) and at its fastest level (an unreachable target);
targets between the two are then set at run time through the parameter service while a
camera publishes at 60 Hz, and the delivered rate is followed frame by frame.

prompts: with a camera at 10 Hz, ``set_prompts`` of 64 new prompts of 190 characters each
(``prompt_encoding.make_prompts``) is called ``--repeats`` times, 4 s apart; for each call
it records the reply time and ``encode_ms``, and the longest gap between consecutive
``instances`` and between ``/diagnostics`` messages from the call until 1 s after the reply
(the node at 1 Hz diagnostics: a gap over ~1 s there means the node stalled).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobius_ros.harness import Harness, ros_list, start_node, stop
from mobius_ros.localenv import use_local_ros_env

# names that occur in the demo frames, so most frames have instances to post-process
PROMPTS = ["orange hexagon", "purple hexagon", "yellow square", "blue square", "black cross",
           "yellow circle", "orange circle", "green square"]  # fmt: skip


def overhead(h: Harness, frames, n: int) -> dict:
    rows, sent = [], {}
    for i in range(n + 5):
        msg = h.image(frames[i % len(frames)])
        t0 = time.monotonic()
        out = h.send(msg)
        if out is None or i < 5:
            continue
        got = h.instances[msg.header.stamp.sec][0]
        sent[msg.header.stamp.sec] = (t0, got)
        rows.append(((got - t0) * 1e3, out.inference_ms, len(out.instances)))
    a = np.array(rows)
    over = a[:, 0] - a[:, 1]
    return {
        "frames": len(a),
        "e2e_p50": np.percentile(a[:, 0], 50), "e2e_p95": np.percentile(a[:, 0], 95),
        "inf_p50": np.percentile(a[:, 1], 50),
        "over_p50": np.percentile(over, 50), "over_p95": np.percentile(over, 95),
        "instances": a[:, 2].mean(), "sent": sent,
    }  # fmt: skip


# the node's MOBIUS_NODE_PROFILE line: stamp.sec, then monotonic times and step durations
_PROFILE_FIELDS = ("sec", "received", "start", "converted", "preprocess", "inference",
                   "postprocess", "segmented", "tracked", "built", "published", "done")  # fmt: skip
NODE_STEPS = (
    ("transport in: published -> node callback", "transport"),
    ("hand-off: node callback -> worker thread", "transport"),
    ("convert (image_msg_to_rgb)", "node"),
    ("preprocess (resize, normalise)", "node"),
    ("inference (backend.infer)", "inference"),
    ("postprocess (select, boxes, masks)", "node"),
    ("segmenter rest (feed, prompt split)", "node"),
    ("duplicates + tracking", "node"),
    ("message (RLE, fields, InstanceArray)", "node"),
    ("publish instances (serialize)", "node"),
    ("other topics (subscribed ones only)", "node"),
    ("transport out: published -> harness callback", "transport"),
)


def node_profile(path: Path, sent: dict) -> dict[str, np.ndarray]:
    """Per-frame step times (ms) from the node's profile lines joined with the harness's
    send/receive times (CLOCK_MONOTONIC is shared between processes)."""
    steps: dict[str, list[float]] = {name: [] for name, _ in NODE_STEPS}
    for line in path.read_text().splitlines():
        r = dict(zip(_PROFILE_FIELDS, map(float, line.split())))
        if int(r["sec"]) not in sent:
            continue
        t0, got = sent[int(r["sec"])]
        seg = r["segmented"] - r["converted"]
        values = (r["received"] - t0, r["start"] - r["received"], r["converted"] - r["start"],
                  r["preprocess"], r["inference"], r["postprocess"],
                  seg - r["preprocess"] - r["inference"] - r["postprocess"],
                  r["tracked"] - r["segmented"], r["built"] - r["tracked"],
                  r["published"] - r["built"], r["done"] - r["published"],
                  got - r["published"])  # fmt: skip
        for (name, _), v in zip(NODE_STEPS, values):
            steps[name].append(v * 1e3)
    return {k: np.asarray(v) for k, v in steps.items()}


def print_node_profile(steps: dict[str, np.ndarray]) -> None:
    print("\nInside the node (MOBIUS_NODE_PROFILE), the same frames:\n")
    print("| step | kind | p50 (ms) | p95 (ms) |\n|---|---|---:|---:|")
    kinds = dict(NODE_STEPS)
    for name, v in steps.items():
        p50, p95 = np.percentile(v, 50), np.percentile(v, 95)
        print(f"| {name} | {kinds[name]} | {p50:.2f} | {p95:.2f} |")
    for kind in ("node", "transport"):
        total = sum(v for k, v in steps.items() if kinds[k] == kind)
        print(f"| **{kind} total** (per-frame sum) | {kind} | {np.percentile(total, 50):.2f} | "
              f"{np.percentile(total, 95):.2f} |")  # fmt: skip


def breakdown(frames, n: int, threshold: float) -> dict:
    """The node's per-frame steps in this process, timed one by one."""
    import array

    from mobius_ros.msg import Instance, InstanceArray

    from mobius_core.tracking import InstanceTracker, suppress_duplicates
    from mobius_ros.conversions import image_to_rgb, instance_fields
    from mobius_ros.model import load_model
    from mobius_ros.params import NodeParams

    m = load_model(NodeParams(prompts=PROMPTS, score_threshold=threshold))
    seg = m.segmenter
    seg.set_prompts(PROMPTS)
    tracker = InstanceTracker()
    steps = ("convert", "preprocess", "inference", "postprocess", "tracking", "message")
    t = {k: [] for k in steps}
    for i in range(n + 3):
        f = frames[i % len(frames)]
        data = f.tobytes()
        a = time.perf_counter()
        rgb = image_to_rgb("rgb8", 480, 640, 1920, data)
        b = time.perf_counter()
        (inst,) = seg([rgb])
        c0 = time.perf_counter()
        keep = suppress_duplicates(inst.masks, inst.scores, inst.boxes)
        if len(keep) < len(inst):
            inst = inst.select(keep)
        ids = tracker.update(inst.masks, inst.label_texts).tolist()
        c = time.perf_counter()
        out = InstanceArray()
        for fld in instance_fields(inst, ids):
            msg = Instance(id=fld.id, label=fld.label, prompt_index=fld.prompt_index,
                           score=fld.score)  # fmt: skip
            msg.box = fld.box
            msg.mask_rle_counts = array.array("I", fld.mask_rle_counts)
            out.instances.append(msg)
        d = time.perf_counter()
        if i < 3:
            continue
        st = seg.last_times
        t["convert"].append(b - a)
        t["preprocess"].append(st.preprocess)
        t["inference"].append(st.inference)
        t["postprocess"].append(st.postprocess)
        t["tracking"].append(c - c0)
        t["message"].append(d - c)
    return {k: (np.percentile(v, 50) * 1e3, np.percentile(v, 95) * 1e3) for k, v in t.items()}


def saturated_rate(h: Harness, frames, seconds: float = 6.0) -> float:
    h.instances.clear()
    rec = h.stream(frames, 60.0, seconds)  # a camera faster than any level
    arrived = np.array([r[1] for r in rec])
    arrived = arrived[len(arrived) // 4 :]  # skip the first quarter (level moves)
    return (len(arrived) - 1) / (arrived[-1] - arrived[0])


def budget(h: Harness, frames, seconds: float, plot: Path | None) -> list[dict]:
    assert h.set_param("target_fps", 0.0).successful
    assert h.set_param("pruning", False).successful
    best = saturated_rate(h, frames)
    assert h.set_param("target_fps", 1000.0).successful
    fastest = saturated_rate(h, frames)
    print(f"saturated rate: best level {best:.1f} FPS, fastest level {fastest:.1f} FPS")
    targets = [round(best + (fastest - best) * f, 1) for f in (0.25, 0.5, 0.75)]
    results = []
    print("\n| target FPS | delivered FPS after frame 50 | error | frames | level moves | "
          "final level |\n|---:|---:|---:|---:|---:|---|")  # fmt: skip
    for target in targets:
        assert h.set_param("target_fps", 0.0).successful  # start from the best level
        h.spin(1.0)
        moves0 = int(h.diagnostics().get("budget_moves", 0))
        h.instances.clear()
        assert h.set_param("target_fps", float(target)).successful
        rec = h.stream(frames, 60.0, seconds)
        arrived = np.array([r[1] for r in rec])
        gaps = np.diff(arrived)
        rate = 10 / np.convolve(gaps, np.ones(10), "valid")  # rolling 10-frame rate
        after = 1 / gaps[50:].mean() if len(gaps) > 60 else float("nan")
        diag = h.diagnostics()
        results.append({"target": target, "rate_after_50": after, "frames": len(arrived),
                        "error": (after - target) / target, "rolling": rate,
                        "level": diag.get("budget_setting", ""),
                        "moves": int(diag.get("budget_moves", 0)) - moves0})  # fmt: skip
        print(f"| {target:.1f} | {after:.2f} | {results[-1]['error']:+.1%} | {len(arrived)} | "
              f"{results[-1]['moves']} | {results[-1]['level']} |")  # fmt: skip
    if plot is not None:
        draw_budget_plot(results, best, fastest).save(plot)
        print(f"plot: {plot}")
    return results


def _longest_gap(times: list[float], lo: float, hi: float) -> float:
    """The longest stretch of [lo, hi] without one of ``times``."""
    t = sorted([lo, *(x for x in times if lo <= x <= hi), hi])
    return max(b - a for a, b in zip(t, t[1:]))


def prompt_gaps(h: Harness, frames, repeats: int) -> list[dict]:
    from diagnostic_msgs.msg import DiagnosticArray
    from prompt_encoding import make_prompts

    diag_at: list[float] = []
    h.node.create_subscription(DiagnosticArray, "/diagnostics",
                               lambda m: diag_at.append(time.monotonic()), 10)  # fmt: skip
    rows, i = [], 0

    def camera(seconds: float, until=lambda: False) -> None:
        nonlocal i
        end = time.monotonic() + seconds
        while time.monotonic() < end and not until():
            h.pub.publish(h.image(frames[i % len(frames)]))
            i += 1
            h.spin(0.1)

    camera(4.0)
    for r in range(repeats):
        prompts = make_prompts(64, 190, seed=100 + r)
        start = time.monotonic()
        future = h.prompts.call_async(h.SetPrompts.Request(prompts=prompts, mode="category"))
        camera(120.0, future.done)
        replied = time.monotonic()
        camera(1.0)
        lo, hi = start, replied + 1.0
        arrivals = [t for t, _ in h.instances.values()]
        res = future.result()
        rows.append({"reply_s": replied - start, "encode_ms": res.encode_ms, "ok": res.success,
                     "inst_gap": _longest_gap(arrivals, lo, hi),
                     "diag_gap": _longest_gap(diag_at, lo, hi),
                     "frames": sum(lo <= t <= hi for t in arrivals)})  # fmt: skip
        camera(3.0)
    return rows


def draw_budget_plot(results: list[dict], best: float, fastest: float):
    """Rolling delivered FPS per frame for each target (PIL only, like the other plots)."""
    from PIL import Image, ImageDraw

    from mobius_core.visualize import palette

    w, h, m = 760, 420, 56
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    n = max(len(r["rolling"]) for r in results) + 10
    hi = max(best, fastest, *(float(np.max(r["rolling"])) for r in results)) * 1.08
    lo = min(best, *(float(np.min(r["rolling"])) for r in results)) * 0.8

    def px(x: float, y: float) -> tuple[float, float]:
        return m + x / n * (w - 2 * m), h - m - (y - lo) / (hi - lo) * (h - 2 * m)

    d.rectangle([m, m, w - m, h - m], outline="black")
    for y in np.linspace(lo, hi, 6):
        d.text((8, px(0, y)[1] - 6), f"{y:.0f}", fill="black")
    for x in range(0, n, 50):
        d.text((px(x, lo)[0] - 8, h - m + 6), str(x), fill="black")
        d.line([px(x, lo), px(x, hi)], fill=(225, 225, 225))
    for level, colour in ((best, (0, 0, 0)), (fastest, (140, 140, 140))):
        d.line([px(0, level), px(n, level)], fill=colour, width=1)
    for r, colour in zip(results, palette(len(results))):
        t = r["target"]
        lo_band, hi_band = px(0, t * 1.1), px(n, t * 0.9)
        d.rectangle([lo_band[0], lo_band[1], hi_band[0], hi_band[1]], outline=colour)
        pts = [px(i + 10, v) for i, v in enumerate(r["rolling"])]
        d.line(pts, fill=colour, width=2)
    d.text((m, 12), "mobius_ros frame-rate budget: delivered FPS (rolling 10 frames) per frame; "
           "boxes: target +-10%", fill="black")  # fmt: skip
    legend = [(f"target {r['target']:.1f} FPS -> {r['rate_after_50']:.1f} after frame 50", c)
              for r, c in zip(results, palette(len(results)))]  # fmt: skip
    legend += [
        (f"best level {best:.1f} FPS", (0, 0, 0)),
        (f"fastest {fastest:.1f} FPS", (140,) * 3),
    ]
    for i, (text, colour) in enumerate(legend):
        d.text((w - m - 300, h - m - 16 - 14 * (len(legend) - 1 - i)), text, fill=colour)
    d.text((w // 2 - 15, h - 22), "frame", fill="black")
    return img


def echo(domain_id: int) -> int:
    """The floor: image in -> an empty InstanceArray with its header out, nothing else."""
    use_local_ros_env(domain_id)
    import rclpy
    from mobius_ros.msg import InstanceArray
    from mobius_ros.srv import SetPrompts
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("mobius_echo")
    sensor = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                        reliability=ReliabilityPolicy.BEST_EFFORT)  # fmt: skip
    pub = node.create_publisher(InstanceArray, "instances", 10)

    def on_image(msg: Image) -> None:
        np.frombuffer(msg.data, np.uint8)  # what any consumer does first: a view
        pub.publish(InstanceArray(header=msg.header))

    def on_prompts(request, response):
        response.success = True
        return response

    node.create_subscription(Image, "image", on_image, sensor)
    node.create_service(SetPrompts, "set_prompts", on_prompts)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    return 0


def floor(h: Harness, frames, n: int, domain_id: int) -> dict:
    """``overhead`` against the ``_echo`` process instead of the node."""
    import subprocess

    proc = subprocess.Popen([sys.executable, __file__, "_echo", "--domain-id", str(domain_id)])
    try:
        if not h.wait_for_node(60):
            raise RuntimeError("the echo process did not come up")
        h.send(h.image(frames[0]))
        return overhead(h, frames, n)
    finally:
        stop(proc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", choices=["overhead", "budget", "prompts", "_echo"])
    p.add_argument("--repeats", type=int, default=3, help="set_prompts calls (prompts)")
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--seconds", type=float, default=10.0, help="per budget target")
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--domain-id", type=int, default=90)
    p.add_argument("--threshold", type=float, default=0.15, help="node score_threshold")
    p.add_argument("--no-tracking", action="store_true", help="node parameter tracking false")
    args = p.parse_args()
    if args.what == "_echo":
        return echo(args.domain_id)
    use_local_ros_env(args.domain_id)
    import rclpy

    from mobius_ros.camera import demo_frames

    frames = demo_frames(8, (480, 640))
    log = Path(tempfile.mkdtemp()) / "node.log"
    params = {"prompts": ros_list(PROMPTS), "score_threshold": str(args.threshold)}
    if args.no_tracking:
        params["tracking"] = "false"
    profile = log.with_name("node_profile.txt")
    env = {**os.environ, "MOBIUS_NODE_PROFILE": str(profile)} if args.what == "overhead" else None
    proc = start_node(params, args.domain_id, log, env=env)
    rclpy.init()
    h = Harness("mobius_bench", masks=False)
    try:
        if not h.wait_for_node(240):
            print(log.read_text()[-2000:])
            return 1
        h.send(h.image(frames[0]))
        if args.what == "overhead":
            r = overhead(h, frames, args.frames)
            print(f"\n640x480 rgb8, shipped model, onnxruntime, {r['frames']} frames one at a "
                  f"time, {r['instances']:.1f} instances/frame\n")  # fmt: skip
            print("| measure | p50 (ms) | p95 (ms) |\n|---|---:|---:|")
            e2e = f"{r['e2e_p50']:.1f} | {r['e2e_p95']:.1f}"
            print(f"| image published -> instances received | {e2e} |")
            print(f"| inference (reported by the node) | {r['inf_p50']:.1f} | |")
            print(f"| node overhead (the difference) | {r['over_p50']:.1f} | {r['over_p95']:.1f} |")
            stop(proc)
            f = floor(h, frames, args.frames, args.domain_id)
            print(
                f"| floor: the same frames to an echo process (transport only) | "
                f"{f['e2e_p50']:.1f} | {f['e2e_p95']:.1f} |"
            )
            print(
                f"\np95 overhead / p50 inference: {r['over_p95'] / r['inf_p50']:.1%}; "
                f"the floor alone, p95 / p50 inference: {f['e2e_p95'] / r['inf_p50']:.1%}"
            )
            print_node_profile(node_profile(profile, r["sent"]))
            b = breakdown(frames, args.frames, args.threshold)
            print("\nIn-process breakdown of the same steps:\n\n| step | p50 (ms) | p95 (ms) |")
            print("|---|---:|---:|")
            for k, (p50, p95) in b.items():
                print(f"| {k} | {p50:.1f} | {p95:.1f} |")
        elif args.what == "prompts":
            rows = prompt_gaps(h, frames, args.repeats)
            print("\n640x480 at 10 Hz; set_prompts of 64 new prompts x 190 characters\n")
            print(
                "| call | reply (s) | encode_ms | longest gap in instances (s) "
                "| longest gap in /diagnostics (s) | instances in the window |"
            )
            print("|---:|---:|---:|---:|---:|---:|")
            for n, r in enumerate(rows, 1):
                print(f"| {n}{'' if r['ok'] else ' (refused)'} | {r['reply_s']:.2f} | "
                      f"{r['encode_ms']:.0f} | {r['inst_gap']:.2f} | {r['diag_gap']:.2f} | "
                      f"{r['frames']} |")  # fmt: skip
        else:
            budget(h, frames, args.seconds, args.plot)
    finally:
        h.close()
        rclpy.shutdown()
        stop(proc)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())
