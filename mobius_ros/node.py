"""The segmentation node: wiring only (conversions, prompts, budget and model live in pure
modules next to this one).

Subscribes ``image`` (sensor_msgs/Image) and ``image/compressed`` (CompressedImage) with
sensor-data QoS, depth 1; a worker thread segments the newest frame and publishes
``instances``, ``instance_mask``, ``overlay`` (only while subscribed), ``markers``,
``detections`` (where vision_msgs exists) and ``/diagnostics``. Service ``set_prompts``
(text prompts, and point/box prompts); topic ``point_prompt`` (geometry_msgs/PointStamped in
image pixels, as image viewers publish mouse clicks) adds a point prompt.
"""

from __future__ import annotations

import array
import time
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, PointStamped
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from visualization_msgs.msg import Marker, MarkerArray

from mobius_core.tracking import InstanceTracker, suppress_duplicates
from mobius_ros.msg import Instance, InstanceArray
from mobius_ros.srv import SetPrompts

from . import params as P
from .budget import BudgetController
from .conversions import (
    ImageError,
    compressed_to_rgb,
    image_to_rgb,
    instance_fields,
    label_image,
    rgb_to_image_fields,
)
from .model import apply_level, load_model
from .prompts import PromptResult, PromptState
from .visual import FrameInfo, VisualPromptState
from .worker import LatestFrameWorker

try:  # optional: vision_msgs is not everywhere
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
except ImportError:  # pragma: no cover - depends on the system
    Detection2DArray = None

SENSOR_QOS = QoSProfile(
    depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT
)


def _plain(value: Any) -> Any:
    """ROS parameter values (array.array for numeric arrays) -> plain Python values."""
    return list(value) if isinstance(value, (array.array, tuple)) else value


class SegmentationNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("mobius", **kwargs)
        defaults = P.NodeParams().as_dict()
        for name, value in defaults.items():
            self.declare_parameter(name, value, ParameterDescriptor(dynamic_typing=True))
        values = {n: _plain(self.get_parameter(n).value) for n in P.NAMES}
        self.p = P.from_mapping(values)
        self.log = self.get_logger()

        start = time.perf_counter()
        self.model = load_model(self.p)
        self.seg = self.model.segmenter
        self.log.info(f"model: {self.model.description} ({time.perf_counter() - start:.1f} s)")
        self.prompt_state = PromptState(self.seg, self.p.max_prompts, self.p.max_prompt_chars)
        r = self.prompt_state.set(self.p.prompts, self.p.mode)
        if not r.success:
            raise ValueError(f"initial prompts from parameters: {r.message}")
        self.log.info(r.message)
        self.visual = VisualPromptState(
            self.p.max_visual_prompts, self.p.click_max_age, self.p.follow_visual
        )
        self.budget = BudgetController(self.model.ladder(self.p), self.p.target_fps)
        self.tracker: InstanceTracker | None = None
        self._next_id = 1  # ids carry over when the tracker is rebuilt: never reused
        self.tracker = self._make_tracker(self.p)
        self._pending_level = True  # apply the budget's (or the default) level before a frame

        self.pub_instances = self.create_publisher(InstanceArray, "instances", 10)
        self.pub_mask = self.create_publisher(Image, "instance_mask", 10)
        self.pub_overlay = self.create_publisher(Image, "overlay", 2)
        self.pub_markers = self.create_publisher(MarkerArray, "markers", 10)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.pub_det = (
            self.create_publisher(Detection2DArray, "detections", 10)
            if Detection2DArray is not None
            else None
        )
        self.worker = LatestFrameWorker(self._process, self._on_error)
        self.worker.min_period_s = self._min_period()
        self.create_subscription(Image, "image", self._on_frame, SENSOR_QOS)
        self.create_subscription(CompressedImage, "image/compressed", self._on_frame, SENSOR_QOS)
        self.create_service(SetPrompts, "set_prompts", self._on_set_prompts)
        self.create_subscription(PointStamped, "point_prompt", self._on_click, 10)
        self.add_on_set_parameters_callback(self._on_parameters)
        self._diag_timer = self.create_timer(self.p.diagnostics_period, self._publish_diagnostics)
        self.last_kept = 0
        self.bad_frames = 0
        self.last_error = ""
        self.last_prompt_error = ""  # the last refused click, shown in /diagnostics

    # -- callbacks on the executor thread (cheap) -----------------------------------------

    def _on_frame(self, msg: Image | CompressedImage) -> None:
        self.worker.submit((msg, time.monotonic()))

    def _on_click(self, msg: PointStamped) -> None:
        if not self.model.visual:
            r = PromptResult(False, self._no_visual())
        else:
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            r = self.visual.click(msg.point.x, msg.point.y, msg.header.frame_id, stamp)
        if r.success:
            self.log.info(f"point_prompt: {r.message}")
        else:
            self.last_prompt_error = r.message
            self.log.warning(f"point_prompt: {r.message}")

    def _no_visual(self) -> str:
        why = "visual_prompts is false" if not self.p.visual_prompts else (
            "the model has no trained visual prompter (or the graph was exported without "
            "--visual)"
        )  # fmt: skip
        return f"point/box prompts are off: {why}"

    def _set_visual(self, request: Any) -> PromptResult | None:
        """The point/box part of a set_prompts request (None when it has none)."""
        points, boxes = list(request.points), list(request.boxes)
        if not (points or boxes or request.clear_visual):
            return None
        if not self.model.visual:
            return PromptResult(False, self._no_visual())
        if request.clear_visual and not (points or boxes):
            self.visual.clear()
            return PromptResult(True, "visual prompts cleared")
        return self.visual.replace(points, boxes)

    def _on_set_prompts(self, request: Any, response: Any) -> Any:
        try:
            visual = self._set_visual(request)
            if visual is not None and not visual.success:
                r = visual
            elif list(request.prompts) or visual is None:
                r = self.prompt_state.set(list(request.prompts), request.mode)
                if visual is not None:
                    r = PromptResult(r.success, f"{r.message}; {visual.message}", r.encode_ms)
            else:
                r = visual
        except Exception as exc:  # a service callback must never take the node down
            r = PromptResult(False, f"set_prompts failed, the old prompts stay: {exc}")
        response.success, response.message, response.encode_ms = r.success, r.message, r.encode_ms
        if r.success:
            self.log.info(f"set_prompts: {r.message}")
        else:
            self.log.warning(f"set_prompts refused: {r.message}")
        return response

    def _on_parameters(self, changes: list[Any]) -> SetParametersResult:
        new = P.NodeParams(**self.p.as_dict())
        try:
            for c in changes:
                if c.name not in P.NAMES:
                    raise ValueError(P.unknown_key_error(c.name))
                value = P.check(c.name, _plain(c.value))
                if c.name in P.RESTART_ONLY and value != getattr(self.p, c.name):
                    raise ValueError(f"{c.name} chooses the model; restart the node to change it")
                setattr(new, c.name, value)
            if (new.prompts, new.mode) != (self.p.prompts, self.p.mode):
                r = self.prompt_state.set(new.prompts, new.mode)
                if not r.success:
                    raise ValueError(r.message)
            ladder_keys = ("prune_low_range", "prune_high_range", "min_keep_range", "prune_steps")
            if any(getattr(new, k) != getattr(self.p, k) for k in ladder_keys):
                self.budget = BudgetController(self.model.ladder(new), new.target_fps)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.seg.post.score_threshold = new.score_threshold
        self.seg.post.top_k = new.max_instances
        track_keys = ("tracking", "track_iou_gate", "track_max_age")
        if any(getattr(new, k) != getattr(self.p, k) for k in track_keys):
            self.tracker = self._make_tracker(new)  # one assignment: the worker sees old or new
        self.visual.max_prompts, self.visual.max_age_s = new.max_visual_prompts, new.click_max_age
        self.visual.follow = new.follow_visual
        if new.target_fps != self.p.target_fps:
            self.budget.set_target(new.target_fps)
        if new.diagnostics_period != self.p.diagnostics_period:
            self._diag_timer.cancel()
            self._diag_timer = self.create_timer(new.diagnostics_period, self._publish_diagnostics)
        self.p = new
        self.worker.min_period_s = self._min_period()
        self._pending_level = True
        return SetParametersResult(successful=True)

    def _make_tracker(self, p: P.NodeParams) -> InstanceTracker | None:
        """A tracker for ``p`` whose ids continue after the current one's (never reused)."""
        if self.tracker is not None:
            self._next_id = max(self._next_id, self.tracker.next_id)
        if not p.tracking:
            return None
        tracker = InstanceTracker(p.track_iou_gate, p.track_max_age)
        tracker.next_id = self._next_id
        return tracker

    def _min_period(self) -> float:
        return 1.0 / self.p.target_fps if self.p.target_fps > 0 else 0.0

    # -- the worker thread -----------------------------------------------------------------

    def _on_error(self, exc: Exception) -> None:
        self.bad_frames += 1
        self.last_error = str(exc)
        kind = "bad image" if isinstance(exc, ImageError) else "frame failed"
        self.log.error(f"{kind}: {exc}", throttle_duration_sec=5.0)

    def _process(self, item: tuple[Any, float]) -> None:
        msg, received = item
        start = time.monotonic()
        if isinstance(msg, CompressedImage):
            rgb = compressed_to_rgb(msg.format, msg.data)
        else:
            rgb = image_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.data)
        if self._pending_level or self.budget.target_fps > 0:
            apply_level(self.seg, self.budget.level if self.budget.target_fps > 0
                        else self.model.default_level)  # fmt: skip
            self._pending_level = False
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        self.visual.saw_frame(FrameInfo(msg.header.frame_id, rgb.shape[0], rgb.shape[1], stamp))
        prompts = self.visual.prompts if self.model.visual else []
        clicks = self.visual.segmenter_prompts(prompts)
        (inst,) = self.seg([rgb], [clicks] if clicks else None)
        n_text = len(inst) - len(clicks)  # the answers to point/box prompts come last
        text, answers = inst.select(range(n_text)), inst.select(range(n_text, len(inst)))
        if clicks:
            answers.label_texts = [p.label for p in prompts]
            self.visual.answered(prompts, answers.boxes)
        ids = None
        tracker = self.tracker
        if tracker is not None:  # duplicates among the text answers only: a click is kept
            keep = suppress_duplicates(text.masks, text.scores, text.boxes)
            if len(keep) < len(text):
                text = text.select(keep)
        inst = text.concat(answers) if clicks else text
        if tracker is not None:
            ids = tracker.update(inst.masks, inst.label_texts).tolist()
        times = self.seg.last_times
        kept = int(self.seg.last_outputs.kept[0, -1]) if self.seg.last_outputs.kept.size else 0
        self.last_kept = kept
        self._publish(msg.header, rgb, inst, times.inference * 1e3, kept, ids, prompts)
        done = time.monotonic()
        self.worker.stats.add(done - received, done)
        if self.budget.update(done - start, done):
            self.log.info(f"budget: {self.budget.level.describe()}")

    def _publish(
        self, header: Any, rgb: Any, inst: Any, inference_ms: float, kept: int, ids: Any = None,
        visual: Any = (),
    ) -> None:  # fmt: skip
        out = InstanceArray(header=header, mode=self.prompt_state.mode)
        out.prompts = list(self.prompt_state.prompts) + [p.label for p in visual]
        out.inference_ms, out.kept_queries = float(inference_ms), kept
        fields = instance_fields(inst, ids)
        for f in fields:
            m = Instance(id=f.id, label=f.label, prompt_index=f.prompt_index, score=f.score)
            m.box = f.box
            m.mask_height, m.mask_width = f.mask_height, f.mask_width
            m.mask_rle_counts = array.array("I", f.mask_rle_counts)
            out.instances.append(m)
        self.pub_instances.publish(out)
        p = self.p
        if p.publish_instance_mask and self.pub_mask.get_subscription_count():
            labels = label_image(inst, rgb.shape[:2], ids)
            self.pub_mask.publish(Image(header=header, height=labels.shape[0],
                                        width=labels.shape[1], encoding="mono16",
                                        is_bigendian=0, step=2 * labels.shape[1],
                                        data=labels.astype("<u2").tobytes()))  # fmt: skip
        if p.publish_overlay and self.pub_overlay.get_subscription_count():
            from mobius_core.visualize import draw_instances

            h, w, step, data = rgb_to_image_fields(draw_instances(rgb, inst))
            self.pub_overlay.publish(
                Image(header=header, height=h, width=w, encoding="rgb8", step=step, data=data)
            )
        if p.publish_markers and self.pub_markers.get_subscription_count():
            self.pub_markers.publish(self._markers(header, fields))
        if (
            p.publish_detections
            and self.pub_det is not None
            and self.pub_det.get_subscription_count()
        ):
            self.pub_det.publish(self._detections(header, fields))

    def _markers(self, header: Any, fields: list[Any]) -> MarkerArray:
        s = self.p.marker_scale
        out = MarkerArray(markers=[Marker(header=header, action=Marker.DELETEALL)])
        for f in fields:
            x0, y0, x1, y1 = (v * s for v in f.box)
            box = Marker(header=header, ns="boxes", id=f.id, type=Marker.LINE_STRIP)
            box.points = [
                Point(x=x, y=y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0))
            ]
            box.scale.x = 2 * s
            box.color.r, box.color.g, box.color.a = 0.1, 0.9, 1.0
            text = Marker(header=header, ns="labels", id=f.id, type=Marker.TEXT_VIEW_FACING)
            text.pose.position.x, text.pose.position.y = x0, y0
            text.text = f"{f.label} {f.score:.2f}"
            text.scale.z = 12 * s
            text.color.r = text.color.g = text.color.b = text.color.a = 1.0
            out.markers += [box, text]
        return out

    def _detections(self, header: Any, fields: list[Any]) -> Any:  # pragma: no cover
        out = Detection2DArray(header=header)
        for f in fields:
            d = Detection2D(header=header, id=str(f.id))
            x0, y0, x1, y1 = f.box
            d.bbox.center.position.x, d.bbox.center.position.y = (x0 + x1) / 2, (y0 + y1) / 2
            d.bbox.size_x, d.bbox.size_y = x1 - x0, y1 - y0
            hyp = ObjectHypothesisWithPose()
            hyp.hypothesis.class_id, hyp.hypothesis.score = f.label, f.score
            d.results.append(hyp)
            out.detections.append(d)
        return out

    def _publish_diagnostics(self) -> None:
        s = self.worker.stats.summary()
        values = {
            "backend": self.p.backend,
            "latency_p50_ms": f"{s['latency_p50_ms']:.1f}",
            "latency_p95_ms": f"{s['latency_p95_ms']:.1f}",
            "fps": f"{s['fps']:.2f}",
            "received_frames": str(s["received"]),
            "frames": str(s["frames"]),
            "dropped_frames": str(s["dropped"]),
            "bad_frames": str(self.bad_frames),
            "kept_queries": str(self.last_kept),
            "prompts": str(len(self.prompt_state.prompts)),
            "mode": self.prompt_state.mode,
            "visual_prompts": str(len(self.visual.prompts)),
            "last_prompt_error": self.last_prompt_error,
            **self.budget.state(),
        }
        level = DiagnosticStatus.OK
        message = "running"
        if self.budget.target_fps and s["frames"] > 10 and s["fps"] < 0.9 * self.budget.target_fps:
            level, message = DiagnosticStatus.WARN, "below target_fps at the fastest setting"
            if self.budget.index < len(self.budget.levels) - 1:
                message = "below target_fps; the budget is adjusting"
        if self.last_error:
            level, message = DiagnosticStatus.WARN, f"last bad frame: {self.last_error[:120]}"
            self.last_error = ""
        status = DiagnosticStatus(level=level, name="mobius_ros: segmentation",
                                  message=message, hardware_id=self.p.backend)  # fmt: skip
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        diag = DiagnosticArray(status=[status])
        diag.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(diag)

    def destroy_node(self) -> None:
        self.worker.close()
        super().destroy_node()


def run(args: list[str] | None = None) -> int:
    """Spin the node until shutdown (``args`` may hold ``--ros-args ...``)."""
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=args)
    node = None
    try:
        try:
            node = SegmentationNode()
        except (ValueError, FileNotFoundError) as exc:  # configuration: no traceback
            print(f"mobius_ros: {exc}", flush=True)
            return 2
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
