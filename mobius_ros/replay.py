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

A bag with a registered depth topic (``/camera/depth/image_raw``, or ``--depth-topic``)
and camera_info is replayed with ``use_depth``: each image goes out with the depth and
camera_info nearest its stamp, under its header; with 3D ground truth (annotations with
``center_3d``, as ``make-bag --rgbd`` writes) the report gains a "3d" section.

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
from mobius_core.geometry3d import iou_3d, summarise_3d

from .bags import (
    DEPTH_TOPIC,
    INFO_TOPIC,
    BagRecorder,
    ReadReport,
    bag_topics,
    check_topic,
    msg_dir,
    read_frames,
    read_messages,
)
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
DEPTH_TYPE, INFO_TYPE = "sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo"


def depth_topics(bag: str | Path, depth_topic: str | None = "auto",
                 info_topic: str = INFO_TOPIC) -> tuple[str, str] | None:  # fmt: skip
    """(depth topic, camera_info topic) to replay with the images, or None for 2D only.
    ``depth_topic``: ``"auto"`` takes ``/camera/depth/image_raw`` where the bag has it;
    None, ``""`` or ``"none"``: no depth. ValueError naming what is there when a topic
    asked for (or the camera_info that depth needs) is missing or of another type."""
    if depth_topic in (None, "", "none"):
        return None
    topics = bag_topics(bag)
    if depth_topic == "auto":
        if DEPTH_TOPIC not in topics:
            return None
        depth_topic = DEPTH_TOPIC
    for topic, want, what in ((depth_topic, DEPTH_TYPE, "--depth-topic"),
                              (info_topic, INFO_TYPE, "--camera-info-topic")):  # fmt: skip
        if topics.get(topic) != want:
            have = sorted(t for t, m in topics.items() if m == want)
            found = f"it is {topics[topic]}" if topic in topics else "it is not in the bag"
            raise ValueError(f"{what} {topic!r}: replay with depth needs a {want} topic; "
                             f"{found} ({want} topics there: {have or 'none'})")  # fmt: skip
    return depth_topic, info_topic


class StampMatcher:
    """The message of one stream (:class:`bags.BagMessage`, in bag order) whose header stamp
    is nearest a given stamp, reading the stream only as far as that needs; ``None`` when
    the nearest is more than ``max_offset_ns`` away (None: any distance, e.g. a
    camera_info recorded seldom)."""

    def __init__(self, messages, max_offset_ns: int | None = None, keep: int = 100) -> None:
        self.it, self.max_offset_ns, self.keep = iter(messages), max_offset_ns, keep
        self.buf: list[Any] = []
        self.done = False

    def take(self, stamp_ns: int):
        while not self.done and (not self.buf or self.buf[-1].stamp_ns < stamp_ns):
            m = next(self.it, None)
            if m is None:
                self.done = True
            else:
                self.buf = [*self.buf[-(self.keep - 1) :], m]
        if not self.buf:
            return None
        best = min(self.buf, key=lambda m: abs(m.stamp_ns - stamp_ns))
        self.buf = [m for m in self.buf if m.stamp_ns >= best.stamp_ns]  # the older are done
        if self.max_offset_ns is not None and abs(best.stamp_ns - stamp_ns) > self.max_offset_ns:
            return None
        return best

    def close(self) -> None:
        close = getattr(self.it, "close", None)
        if close is not None:
            close()


# --- 3D against ground truth ----------------------------------------------------------------

IOU_MIN, VISIBLE_MIN = 0.5, 0.9


def match_3d(gt_objects: list[dict[str, Any]], instances: list[dict[str, Any]],
             iou_min: float = IOU_MIN) -> list[dict[str, Any]]:  # fmt: skip
    """Per ground-truth object of one frame (dicts: ``label``, ``mask`` bool [H, W],
    ``center_3d``, ``box3d``, ``distance``, ``visible_fraction``), the node's instance of the
    same label (dicts: ``label``, ``mask``, ``has_3d``, ``center``, ``size``) with the
    highest mask IoU, if that is >= ``iou_min``; a row per object: ``matched``,
    ``mask_iou``, ``has_3d``, and with 3D ``error`` (m), ``rel_error`` (share of the
    distance) and ``iou3d``."""
    rows = []
    for g in gt_objects:
        best, best_iou = None, 0.0
        gm = np.asarray(g["mask"], bool)
        for inst in instances:
            if inst["label"] != g["label"]:
                continue
            m = np.asarray(inst["mask"], bool)
            if m.shape != gm.shape:
                continue
            union = np.count_nonzero(m | gm)
            iou = np.count_nonzero(m & gm) / union if union else 0.0
            if iou > best_iou:
                best, best_iou = inst, iou
        row: dict[str, Any] = {
            "label": g["label"], "visible_fraction": float(g["visible_fraction"]),
            "matched": best is not None and best_iou >= iou_min,
            "mask_iou": round(float(best_iou), 4), "has_3d": False,
        }  # fmt: skip
        if row["matched"] and best["has_3d"]:
            c = np.asarray(best["center"], float)
            err = float(np.linalg.norm(c - np.asarray(g["center_3d"], float)))
            row.update(has_3d=True, error=err, rel_error=err / float(g["distance"]),
                       iou3d=iou_3d(c, best["size"], g["box3d"]))  # fmt: skip
        rows.append(row)
    return rows


def frame_3d_rows(msg: Any, gt_objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """match_3d of one InstanceArray against its frame's gt annotations (COCO dicts with
    ``label``; a ``mask`` array where given, else decoded from ``segmentation``)."""
    from mobius_core.rle import decode_rle

    labels = {a["label"] for a in gt_objects}
    instances = [
        {"label": i.label, "has_3d": bool(i.has_3d),
         "center": [i.center_3d.x, i.center_3d.y, i.center_3d.z],
         "size": [i.size_3d.x, i.size_3d.y, i.size_3d.z],
         "mask": decode_rle({"size": [i.mask_height, i.mask_width],
                             "counts": list(i.mask_rle_counts)})}
        for i in msg.instances if i.label in labels  # only those that can match
    ]  # fmt: skip
    gts = [a if "mask" in a else {**a, "mask": decode_rle(a["segmentation"])} for a in gt_objects]
    return match_3d(gts, instances)


def _depth_step_ms(diag: list[Any]) -> float | None:
    """The node's mean 3D step time per frame (diagnostics ``depth_step_ms``), newest."""
    for d in reversed(diag):
        for st in d.status:
            for kv in st.values:
                if kv.key == "depth_step_ms":
                    with contextlib.suppress(ValueError):
                        return float(kv.value)
    return None


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
        self.depth: dict[str, Any] | None = None  # topics and counts, replaying with depth
        self.depth_read = ReadReport()
        self.rows_3d: dict[int, list[dict[str, Any]]] = {}  # frame index -> match_3d rows
        self.matchers: list[StampMatcher] = []  # depth, camera_info

    def depth_for(self, stamp_ns: int, shape: tuple[int, int]) -> tuple[Any, Any]:
        """(depth Image, CameraInfo) for the image at ``stamp_ns``: the bag's nearest (the
        depth within ``depth_max_offset_s``); where there is no such depth, an empty one
        (no depth anywhere: the frame goes through in 2D, its instances without 3D)."""
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import CameraInfo, Image

        d, i = self.matchers[0].take(stamp_ns), self.matchers[1].take(stamp_ns)
        depth = info = None
        with contextlib.suppress(Exception):  # a message rclpy cannot read: as if absent
            depth = deserialize_message(d.raw, Image) if d is not None else None
        with contextlib.suppress(Exception):
            info = deserialize_message(i.raw, CameraInfo) if i is not None else None
        if depth is None:
            self.depth["frames_without_depth"] += 1
            h, w = shape
            depth = Image(height=h, width=w, encoding="16UC1", step=2 * w,
                          data=bytes(2 * h * w))  # fmt: skip
        else:
            self.depth["frames_with_depth"] += 1
        if info is None:  # no calibration: the node says so and skips the 3D
            self.depth["frames_without_camera_info"] += 1
            info = CameraInfo(width=shape[1], height=shape[0])
        return depth, info

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
                         self.prompts, self.rate, self.status, final, self.depth,
                         self.rows_3d)  # fmt: skip
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
    depth_topic: str | None = "auto", info_topic: str = INFO_TOPIC,
    depth_max_offset_s: float = 0.05,
) -> dict[str, Any]:  # fmt: skip
    """Replay ``bag`` through the node; the final report (``report["interrupted"]`` and
    ``report["signal"]`` say whether SIGINT/SIGTERM cut it short). ``progress``: called with
    a line of text at each partial report.

    Depth (see :func:`depth_topics`; by default where the bag has ``/camera/depth/image_raw``):
    the node runs with ``use_depth: true`` and each image goes out with the bag's depth
    image nearest its stamp (within ``depth_max_offset_s``) and camera_info, all three
    under the image's header. With ground truth whose annotations carry ``center_3d`` the
    report gets a ``"3d"`` section (see :func:`match_3d`, :func:`summarise_3d`)."""
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
    topics_3d = depth_topics(bag, depth_topic, info_topic)
    if topics_3d is not None:
        params["use_depth"] = "true"
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
    if topics_3d is not None:
        run.depth = {"depth_topic": topics_3d[0], "camera_info_topic": topics_3d[1],
                     "frames_with_depth": 0, "frames_without_depth": 0,
                     "frames_without_camera_info": 0}  # fmt: skip
        run.matchers = [
            StampMatcher(read_messages(bag, topics_3d[0], run.depth_read, (DEPTH_TYPE,),
                                       what="a depth image"), int(depth_max_offset_s * 1e9)),
            StampMatcher(read_messages(bag, topics_3d[1], ReadReport(), (INFO_TYPE,),
                                       what="a camera_info")),
        ]  # fmt: skip
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
            warm = h.image(np.zeros((64, 64, 3), np.uint8))  # warm-up, not counted
            if topics_3d is None:
                h.send(warm)
            else:  # the three topics matched once: discovery done on each
                from mobius_core.geometry3d import Intrinsics

                from .depth import camera_info_msg, depth_image_msg

                camera = Intrinsics(50.0, 50.0, 31.5, 31.5, 64, 64)
                h.send_rgbd(warm, depth_image_msg(np.zeros((64, 64), np.uint16)),
                            camera_info_msg(camera))  # fmt: skip
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
                    if run.matchers:
                        depth, info = run.depth_for(frame.stamp_ns, frame.rgb.shape[:2])
                        depth.header = info.header = msg.header
                    run.sent[msg.header.stamp.sec] = (frame.index, time.monotonic())
                    if run.matchers:
                        h.pub_info.publish(info)
                        h.pub_depth.publish(depth)
                    h.pub.publish(msg)
                    if rate is None:  # the next frame once this one is done
                        run.spin(timeout_s, lambda s=msg.header.stamp.sec: s in h.instances)
                    run.maybe_write()
                # the last results (and diagnostics), up to 3 s
                run.spin(3.0, lambda: all(s in h.instances for s in run.sent))
                if topics_3d is not None:  # depth_step_ms: a diagnostics message after them
                    seen = len(h.diag)
                    run.spin(3.0, lambda: len(h.diag) > seen)
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
            for m in run.matchers:
                m.close()
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
            final, depth=None, rows_3d=None) -> dict[str, Any]:  # fmt: skip
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
             "kept_queries": int(m.kept_queries), "inference_ms": round(float(m.inference_ms), 2),
             "with_3d": sum(bool(x.has_3d) for x in m.instances)}
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
        if any("center_3d" in a for a in gt["annotations"]):
            report["3d"] = _section_3d(gt, rows, image_ids, replayed, final,
                                       {} if rows_3d is None else rows_3d, diag)  # fmt: skip
    if depth is not None:
        report["depth"] = dict(depth)
        if "3d" in report:
            report["3d"].update(depth)
    return report


def _section_3d(gt, rows, image_ids, replayed, final, cache, diag) -> dict[str, Any]:
    """The report's "3d": each ground-truth object with ``center_3d`` matched to the node's
    instances of its frame (cached per frame: a frame's result does not change)."""
    names = {c["id"]: c["name"] for c in gt["categories"]}
    objects: dict[int, list[dict[str, Any]]] = {}
    for a in gt["annotations"]:
        if "center_3d" in a:
            objects.setdefault(a["image_id"], []).append(
                {**a, "label": names.get(a["category_id"])}
            )
    got, done = [], set()
    for index, _, _, msg in rows:
        image_id = image_ids[index]
        if image_id is None:
            continue
        if index not in cache:
            cache[index] = frame_3d_rows(msg, objects.get(image_id, []))
        got += cache[index]
        done.add(image_id)
    if final:  # a frame read without a result: its objects are missed
        for image_id in sorted(replayed - done):
            got += match_3d([{**a, "mask": None} for a in objects.get(image_id, [])], [])
    return {
        "over": "frames read" if final else "frames with results",
        "iou_min": IOU_MIN, "visible_min": VISIBLE_MIN,
        "all": summarise_3d(got),
        "fully_visible": summarise_3d([r for r in got if r["visible_fraction"] >= VISIBLE_MIN]),
        "depth_step_ms": _depth_step_ms(diag),
    }  # fmt: skip


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
    if "3d" in r:
        lines += _section_3d_lines(r["3d"])
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


def _fmt(v: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, spec)


def section_3d_table(s: dict[str, Any]) -> list[str]:
    """The report's "3d" section as a markdown table (a row for all objects, one for the
    fully visible)."""
    lines = [
        "| objects | GT | matched | with 3D | centre error p50 / p90 (m) "
        "| p50 / p90 (% of distance) | 3D IoU p50 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, key in (("all", "all"), (f"visible >= {s['visible_min']:g}", "fully_visible")):
        t = s[key]
        lines.append(
            f"| {name} | {t['gt_objects']} | {t['matched']} ({_fmt(t['matched_share'], '.0%')}) "
            f"| {t['with_3d']} ({_fmt(t['with_3d_share'], '.0%')}) "
            f"| {_fmt(t['centre_error_m_median'], '.3f')} / {_fmt(t['centre_error_m_p90'], '.3f')} "
            f"| {_fmt(t['centre_error_rel_median'], '.1f', 100)} / "
            f"{_fmt(t['centre_error_rel_p90'], '.1f', 100)} | {_fmt(t['iou3d_median'], '.2f')} |"
        )  # fmt: skip
    return lines


def _section_3d_lines(s: dict[str, Any]) -> list[str]:
    step = s.get("depth_step_ms")
    lines = [f"3D against the ground truth ({s['over']}): each object matched to the node's "
             f"instance of its label with the highest mask IoU (>= {s['iou_min']:g}); centre "
             "error and 3D IoU over the matched ones with 3D"
             + (f"; the node's 3D step {step:.2f} ms per frame" if step is not None else "")
             + ".", "", *section_3d_table(s), ""]  # fmt: skip
    if s.get("frames_without_depth"):
        lines[0:0] = [f"{s['frames_without_depth']} frames had no depth image within the "
                      "allowed offset of their stamp (sent with an empty one).", ""]  # fmt: skip
    return lines
