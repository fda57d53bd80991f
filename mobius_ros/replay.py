"""``mobius-ros replay``: a recorded bag through the real node, measured.

Frames are read from the bag (``bags.read_frames``; a damaged bag up to the damage),
published to a node running in its own process at the recorded rate (``--rate 1.0``, or a
multiple) or as fast as the node takes them (``--rate max``: the next frame after the
previous result), and every InstanceArray the node publishes is written to ``OUT/outputs``
(rosbag2, sqlite3) when it arrives, each committed at once. The report (``OUT/report.json``,
``OUT/report.md`` with plots) gives per-frame latency (publication to result), p50/p95/max,
achieved FPS, dropped frames, kept queries and the budget's settings over time, what was
skipped in the bag and why, and with ground truth (COCO json whose images carry
``timestamp_ns``) box and mask AP through the same evaluator as ``mobius eval``.

The report is written when the node is up, again every few seconds while frames go out,
and at the end, each time atomically; until the end it says it is partial and how many
frames are done. SIGINT or SIGTERM stops the replay cleanly: the node is stopped, the bag
closed and a final partial report written (the command then exits 130 or 143). The node runs
in its own process group, which is stopped on the way out, and it ends itself when the
replay process ends in any other way (``kill -9``): see ``lifetime.exit_with_parent``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from mobius_core.atomic import atomic_write_bytes

from .bags import BagRecorder, ReadReport, check_topic, msg_dir, read_frames
from .harness import Harness, ros_list, source_root, start_node
from .lifetime import PARENT_ENV
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


INSTANCES_TOPIC = "/mobius/instances"
INSTANCES_TYPE = "mobius_ros/msg/InstanceArray"


class Interrupted(BaseException):
    """SIGINT or SIGTERM during a replay (a BaseException, like KeyboardInterrupt, so that
    no ``except Exception`` on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _interruptible():
    """SIGINT and SIGTERM raise :class:`Interrupted` once, while ``state["armed"]``; later
    ones (while the replay stops) are only noted. Main thread only (signals go there)."""
    state: dict[str, Any] = {"armed": True, "signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum, _frame):
        state["signal"] = state["signal"] or signum
        if state["armed"]:
            state["armed"] = False
            raise Interrupted(signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def stop_node(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM to the node's process group (its own session), SIGKILL to the group if the
    node is not gone after ``timeout`` s, and to anything left in the group after it."""
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


class _Replay:
    """What a replay has done so far; records results as they arrive and writes the report."""

    def __init__(self, out: Path, gt, prompts, rate, report_every_s: float, progress) -> None:
        self.out, self.gt, self.prompts, self.rate = out, gt, prompts, rate
        self.read = ReadReport()
        self.sent: dict[int, tuple[int, float]] = {}  # stamp.sec -> (frame index, publish time)
        self.frames_meta: list[tuple[int, int]] = []  # (bag time, header stamp) per frame
        self.h: Harness | None = None
        self.rec: BagRecorder | None = None
        self.recorded = 0  # results of h.instances written to the bag
        self.status = "starting"
        self.node_pid: int | None = None
        self.every, self.next_write = report_every_s, 0.0
        self.progress = progress

    def record_new(self) -> None:
        """Write the results that arrived since the last call to the output bag."""
        from rclpy.serialization import serialize_message

        instances = self.h.instances
        if self.rec is None or len(instances) <= self.recorded:
            return
        for t_arrived, msg in itertools.islice(instances.values(), self.recorded, None):
            self.rec.write(INSTANCES_TOPIC, INSTANCES_TYPE, int(t_arrived * 1e9),
                           serialize_message(msg))  # fmt: skip
            self.recorded += 1

    def spin(self, seconds: float, until=lambda: False) -> bool:
        """Spin the harness, recording each result as it arrives."""
        return self.h.spin(seconds, lambda: self.record_new() or until())

    def write(self, final: bool = False) -> dict[str, Any]:
        instances = self.h.instances if self.h is not None else {}
        diag = self.h.diag if self.h is not None else []
        report = _report(self.sent, instances, diag, self.frames_meta, self.read, self.gt,
                         self.prompts, self.rate, self.status, final)  # fmt: skip
        report["node_pid"] = self.node_pid
        atomic_write_bytes(self.out / "report.json", json.dumps(report, indent=2).encode())
        _write_page(self.out, report)
        return report

    def maybe_write(self) -> None:
        """The partial report every ``report_every_s`` s (more seldom if writing it takes
        more than a tenth of that), with a progress line."""
        now = time.monotonic()
        if now < self.next_write:
            return
        report = self.write()
        cost = time.monotonic() - now
        self.next_write = time.monotonic() + max(self.every, 10 * cost)
        if self.progress is not None:
            total = f" of {self.read.listed}" if self.read.listed else ""
            ap = f", mask AP so far {report['mask_ap']:.1f}" if "mask_ap" in report else ""
            self.progress(f"replay: {report['published']}{total} frames sent, "
                          f"{report['outputs']} results, p50 {report['latency_p50_ms']:.0f} ms"
                          f"{ap}")  # fmt: skip


def run_replay(
    bag: str | Path, image_topic: str, out: str | Path, rate: float | None = None,
    prompts: list[str] | None = None, gt_path: str | Path | None = None,
    node_params: dict[str, str] | None = None, domain_id: int | None = None,
    timeout_s: float = 20.0, report_every_s: float = 5.0, progress=None,
) -> dict[str, Any]:  # fmt: skip
    """Replay ``bag`` through the node; the final report (``report["interrupted"]`` and
    ``report["signal"]`` say whether SIGINT/SIGTERM cut it short). ``progress``: called with
    a line of text at each partial report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_readable(bag, image_topic)  # clear errors before the node starts
    msg_dir()
    if (out / "outputs").exists():
        raise FileExistsError(
            f"{out / 'outputs'} exists (an earlier replay's output bag); remove it or choose "
            "another --out"
        )
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
    from rclpy.signals import SignalHandlerOptions

    run = _Replay(out, gt, prompts, rate, report_every_s, progress)
    proc = None
    with _interruptible() as state:
        try:
            # its own process group, stopped on the way out; and it ends itself if this
            # process ends without that (kill -9). This checkout's node where there is one,
            # else the installed executable.
            proc = start_node(params, domain, out / "node.log", start_new_session=True,
                              source=source_root() is not None,
                              env={**os.environ, PARENT_ENV: str(os.getpid())})  # fmt: skip
            run.node_pid = proc.pid
            run.write()
            rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
            run.h = h = Harness("mobius_replay", masks=False)
            if not h.wait_for_node(240):
                raise RuntimeError(f"the node did not start; see {out / 'node.log'}")
            h.send(h.image(np.zeros((64, 64, 3), np.uint8)))  # warm-up, not counted
            h.instances.clear()
            with BagRecorder(out / "outputs") as run.rec:
                run.status = "running"
                start, t_first = time.monotonic(), None
                for frame in read_frames(bag, image_topic, run.read):
                    run.frames_meta.append((frame.timestamp_ns, frame.stamp_ns))
                    msg = h.image(frame.rgb)
                    if rate is not None:
                        t_first = frame.timestamp_ns if t_first is None else t_first
                        due = start + (frame.timestamp_ns - t_first) / 1e9 / rate
                        run.spin(max(0.0, due - time.monotonic()))
                    run.sent[msg.header.stamp.sec] = (frame.index, time.monotonic())
                    h.pub.publish(msg)
                    if rate is None:  # the next frame once this one is done
                        run.spin(timeout_s, lambda s=msg.header.stamp.sec: s in h.instances)
                    run.maybe_write()
                # the last results (and diagnostics), up to 3 s
                run.spin(3.0, lambda: all(s in h.instances for s in run.sent))
                state["armed"] = False  # done: a signal now only hurries the stop
                run.status = "complete"
        except (Interrupted, KeyboardInterrupt) as exc:
            state["armed"] = False
            name = exc.args[0] if isinstance(exc, Interrupted) else "SIGINT"
            run.status = f"interrupted by {name}"
        except BaseException as exc:
            state["armed"] = False
            run.status = f"failed: {exc}"
            raise
        finally:
            state["armed"] = False  # stopping is not interrupted
            if run.h is not None:
                run.h.close()
            if rclpy.ok():
                rclpy.shutdown()
            stop_node(proc)
            report = run.write(final=run.status == "complete")
    return report


def check_readable(bag: str | Path, topic: str) -> None:
    """ValueError naming the problem unless the first image of ``topic`` can be read."""
    check_topic(bag, topic)
    with contextlib.closing(read_frames(bag, topic, ReadReport())) as frames:
        if next(frames, None) is None:
            raise ValueError(f"no message on {topic} in {bag} is an image that can be read")


def _report(sent, instances, diag, frames_meta, read, gt, prompts, rate, status,
            final) -> dict[str, Any]:  # fmt: skip
    rows = []  # (frame index, publish, arrival, msg)
    for sec, (index, t_pub) in sent.items():
        if sec in instances:
            t_arr, msg = instances[sec]
            rows.append((index, t_pub, t_arr, msg))
    rows.sort(key=lambda r: r[0])
    lat = np.array([(r[2] - r[1]) * 1e3 for r in rows])
    arrived = np.sort([r[2] for r in rows])
    span = arrived[-1] - arrived[0] if len(arrived) > 1 else 0.0
    report: dict[str, Any] = {
        "status": status,
        "partial": status != "complete",
        "interrupted": status.startswith("interrupted"),
        "signal": status.split()[-1] if status.startswith("interrupted") else None,
        "frames": read.frames,
        "frames_listed": read.listed or None,
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
        "bag_damage": read.damage,
        "bag_unread_bytes": read.unread_bytes,
        "problems": read.problems,
        "per_frame": [
            {"frame": i, "latency_ms": round((ta - tp) * 1e3, 2),
             "arrived_s": round(ta - arrived[0], 4), "instances": len(m.instances),
             "kept_queries": int(m.kept_queries), "inference_ms": round(float(m.inference_ms), 2)}
            for i, tp, ta, m in rows
        ],
        "budget": _budget_trace(diag),
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
        # at the end every frame read counts (a dropped one as a miss); before, the frames
        # still on their way would, so a partial figure covers the frames with results
        replayed = {i for i in image_ids if i is not None} if final else matched
        sub = {**gt, "images": [im for im in gt["images"] if im["id"] in replayed]}
        sub["annotations"] = [a for a in gt["annotations"] if a["image_id"] in replayed]
        if sub["images"]:
            report.update(evaluate_coco(sub, results))
            report["ap_over"] = "frames read" if final else "frames with results"
        report["gt_images"] = len(sub["images"])
        report["gt_images_with_output"] = len(matched)
    return report


def _budget_trace(diag: list[Any]) -> list[dict[str, str]]:
    out = []
    for d in diag:
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
    lines = ["# mobius_ros replay report", ""]
    if r["partial"]:
        total = f" of the {r['frames_listed']} the bag lists" if r["frames_listed"] else ""
        lines += [f"**Partial report ({r['status']}):** {r['outputs']} frames done"
                  f"{total}. The figures below cover those.", ""]  # fmt: skip
    lines += [
        f"{r['frames']} frames read, {r['published']} published (rate {r['rate']}), "
        f"{r['outputs']} results, {r['dropped']} dropped; {r['fps']:.1f} FPS.", "",
        "| latency p50 | p95 | max |", "|---:|---:|---:|",
        f"| {r['latency_p50_ms']:.1f} ms | {r['latency_p95_ms']:.1f} ms "
        f"| {r['latency_max_ms']:.1f} ms |",
        "",
    ]  # fmt: skip
    if "mask_ap" in r:
        lines += [
            f"Against the ground truth ({r['gt_images']} images, {r['ap_over']}): mask AP "
            f"{r['mask_ap']:.1f}, mask AP50 {r['mask_ap50']:.1f}, box AP {r['box_ap']:.1f}.", ""
        ]  # fmt: skip
    if r["bag_damage"]:
        lines += ["The bag is damaged; it was read up to the damage: "
                  + "; ".join(r["bag_damage"][:5]) + ".", ""]  # fmt: skip
    skipped = r["skipped_not_image"] + r["skipped_corrupt"] + r["out_of_order_stamps"]
    if skipped:
        lines += [f"Reading the bag skipped {r['skipped_not_image']} messages that are not "
                  f"images and {r['skipped_corrupt']} that are corrupt or lost, and found "
                  f"{r['out_of_order_stamps']} out-of-order stamps: "
                  + "; ".join(r["problems"][:10]), ""]  # fmt: skip
    lines += [f"![{p}]({p})" for p in plots]
    atomic_write_bytes(out / "report.md", ("\n".join(lines) + "\n").encode())
