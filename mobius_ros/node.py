"""The segmentation node: a managed (lifecycle) node; wiring only (conversions, prompts,
budget and model live in pure modules next to this one).

Lifecycle: ``configure`` loads the model (the shipped one from its cached bundle, built on
first use) and encodes the initial prompts; ``activate`` subscribes the camera and publishes;
``deactivate`` stops taking frames (the services answer that the node is inactive);
``cleanup`` frees the model (a backend's ``close()`` frees its device memory); ``shutdown``
from any state. With ``autostart`` (the default) the node configures and activates itself at
start, so ``ros2 run`` and ``ros2 launch`` need nothing more.

While active it subscribes ``image`` (sensor_msgs/Image) or, with ``transport:=compressed``,
``<resolved image topic>/compressed`` (image_transport's naming), with sensor-data QoS,
depth 1; a worker thread segments the newest frame and publishes ``instances``,
``instance_mask``, ``overlay`` (only while subscribed), ``markers``, ``detections`` and
``label_info`` (transient local; where vision_msgs exists) and ``/diagnostics``. Service
``set_prompts`` (text prompts, and point/box prompts); topic ``point_prompt``
(geometry_msgs/PointStamped in image pixels, as image viewers publish mouse clicks) adds a
point prompt.

Depth (``use_depth:=true``): ``image`` (or its compressed transport), ``depth`` (16UC1 mm or
32FC1 m, registered to the colour image) and ``camera_info`` are matched by
``message_filters.ApproximateTimeSynchronizer``; each instance then carries its 3D centre and
size in the image's optical frame (``mobius_core.geometry3d``), ``detections_3d``
(vision_msgs/Detection3DArray) and ``points`` (sensor_msgs/PointCloud2, only while
subscribed) are published and the markers become 3D boxes. A bad depth frame costs that
frame its 3D only: the 2D outputs go on, the reason is logged and counted in diagnostics.

Threads: :class:`NodeExecutors` spins ``set_prompts`` (a callback group of its own) on a
thread of its own, so encoding a long prompt list never holds up frames, ``/diagnostics``,
parameters or the lifecycle services; requests to it queue and are answered in order. Each
published message carries the prompts and mode its frame was inferred with (the segmenter's
``last_prompts``).
"""

from __future__ import annotations

import array
import os
import signal
import threading
import time
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, PointStamped
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, PointCloud2
from visualization_msgs.msg import Marker, MarkerArray

from mobius_core.inference.prompts import validate_prompts
from mobius_core.tracking import InstanceTracker, suppress_duplicates
from mobius_ros.msg import Instance, InstanceArray
from mobius_ros.srv import SetPrompts

from . import params as P
from .budget import BudgetController
from .conversions import (
    ImageError,
    compressed_to_rgb,
    image_msg_to_rgb,
    instance_fields,
    label_image,
    rgb_to_image_fields,
)
from .depth import DepthStats, FrameSync, frame_3d, points_cloud
from .model import apply_level, load_model
from .prompts import PromptResult, PromptState
from .visual import FrameInfo, VisualPromptState
from .worker import LatestFrameWorker

try:  # optional: vision_msgs is not everywhere
    from vision_msgs.msg import (
        Detection2D,
        Detection2DArray,
        Detection3D,
        Detection3DArray,
        LabelInfo,
        ObjectHypothesisWithPose,
        VisionClass,
    )
except ImportError:  # pragma: no cover - depends on the system
    Detection2DArray = Detection3DArray = LabelInfo = None

SENSOR_QOS = QoSProfile(
    depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT
)
LATCHED_QOS = QoSProfile(  # vision_msgs: LabelInfo is published transient local
    depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)  # fmt: skip

_ROS_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
}
_ROS_ARRAYS = {
    str: ParameterType.PARAMETER_STRING_ARRAY,
    int: ParameterType.PARAMETER_INTEGER_ARRAY,
    float: ParameterType.PARAMETER_DOUBLE_ARRAY,
}


def _plain(value: Any) -> Any:
    """ROS parameter values (array.array for numeric arrays) -> plain Python values."""
    return list(value) if isinstance(value, (array.array, tuple)) else value


def ros_type(name: str) -> int:
    """The rcl_interfaces ParameterType of one of the node's parameters."""
    k = P.kind(name)
    return _ROS_ARRAYS[P.element_kind(name)] if k is list else _ROS_TYPES[k]


def descriptor(name: str) -> ParameterDescriptor:
    """The ROS descriptor of a parameter, from its entry in :data:`params.SPECS`: what
    ``ros2 param describe`` shows and what rclpy enforces before the node's own checks."""
    spec = P.SPECS[name]
    k = P.kind(name)
    # rclpy types an empty list as a byte array whatever the descriptor says, so list
    # parameters are dynamically typed; the node's own check enforces their element type.
    d = ParameterDescriptor(name=name, description=spec.description,
                            additional_constraints=spec.constraints(), read_only=spec.read_only,
                            dynamic_typing=k is list)  # fmt: skip
    if k is not list:
        d.type = ros_type(name)
    if spec.lo is not None and k is float:
        rng = FloatingPointRange(from_value=float(spec.lo), to_value=float(spec.hi), step=0.0)
        d.floating_point_range = [rng]
    elif spec.lo is not None and k is int:
        d.integer_range = [IntegerRange(from_value=int(spec.lo), to_value=int(spec.hi), step=1)]
    return d


def declare_node_parameters(node: Any) -> P.NodeParams:
    """Declare every parameter of :data:`params.SPECS` on ``node`` and return their values.

    Start-up values (``-p``, ``--params-file``, launch) are checked first, so a bad one gets
    the node's own message: unknown names (with the nearest known one), a ``[]`` in a
    parameter file (rcl reads it as "not set": it means the empty list here), an integer for a
    number (5 -> 5.0). ValueError names the problem."""
    # rclpy keeps start-up values here and offers no public accessor for them.
    overrides: dict[str, Parameter] = node._parameter_overrides
    for name in list(overrides):
        if name not in P.NAMES and not P.is_ros_builtin(name):
            raise ValueError(f"{P.unknown_key_error(name)} (from the command line or params file)")
    defaults = P.NodeParams().as_dict()
    for name in P.NAMES:
        given = overrides.get(name)
        value = defaults[name] if given is None else given.value
        try:
            value = P.check(name, _plain(value))
        except ValueError as exc:
            raise ValueError(f"start-up parameter {exc}") from None
        overrides[name] = Parameter(name, Parameter.Type(ros_type(name)), value)  # 5 -> 5.0
        try:
            node.declare_parameter(name, value, descriptor(name))
        except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
            raise ValueError(f"start-up parameter {name}: {exc}") from None
    return P.from_mapping({n: _plain(node.get_parameter(n).value) for n in P.NAMES})


class SegmentationNode(LifecycleNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("mobius", **kwargs)
        self.log = self.get_logger()
        self.p = declare_node_parameters(self)
        self.model: Any = None  # set by configure
        self.seg: Any = None
        self.prompt_state: PromptState | None = None
        self.visual = VisualPromptState(
            self.p.max_visual_prompts, self.p.click_max_age, self.p.follow_visual
        )
        self.budget: BudgetController | None = None
        self.tracker: InstanceTracker | None = None
        self._next_id = 1  # ids carry over when the tracker is rebuilt: never reused
        self._pending_level = True  # apply the budget's (or the default) level before a frame
        self.worker: LatestFrameWorker | None = None
        self.active = False
        self.configuring = False  # a signal during configure stops it at once (see run())
        self.stopping = False  # set before the worker stops: no error lines while going down
        self._frame_subs: list[Any] = []  # point_prompt
        self._frames: Any = None  # the image subscription, or a FrameSync with use_depth
        self.depth_stats = DepthStats()
        self.depth_problem = ""  # why use_depth is not in effect, or the stamps' offset
        self._pubs: dict[str, Any] = {}
        self._diag_timer: Any = None
        self.last_kept = 0
        self.bad_frames = 0
        self.last_error = ""
        self.last_prompt_error = ""  # the last refused click, shown in /diagnostics
        # MOBIUS_NODE_PROFILE=<file>: one line per frame with the monotonic time of each
        # step (benchmarks/ros_node.py overhead reads it; the clock is shared by processes)
        profile = os.environ.get("MOBIUS_NODE_PROFILE")
        self._profile = open(profile, "a", buffering=1) if profile else None
        self.image_topic = self.resolve_topic_name("image")
        self._param_lock = threading.RLock()  # parameter changes come from two threads
        self.prompt_group = MutuallyExclusiveCallbackGroup()  # spun apart (NodeExecutors)
        self.create_service(SetPrompts, "set_prompts", self._on_set_prompts,
                            callback_group=self.prompt_group)  # fmt: skip
        self.add_on_set_parameters_callback(self._on_parameters)

    # -- lifecycle transitions ---------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.configuring = True
        start = time.perf_counter()
        self.log.info("configuring: loading the model (a first start builds its cached bundle)")
        try:
            model = load_model(self.p)
            prompt_state = PromptState(model.segmenter, self.p.max_prompts,
                                       self.p.max_prompt_chars)  # fmt: skip
            r = prompt_state.set(self.p.prompts, self.p.mode)
            if not r.success:
                raise ValueError(f"initial prompts from parameters: {r.message}")
        except (ValueError, FileNotFoundError) as exc:  # configuration: a message, no traceback
            self.config_error = str(exc)
            self.log.error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        finally:
            self.configuring = False
        self.config_error = ""
        self.model, self.seg, self.prompt_state = model, model.segmenter, prompt_state
        self.log.info(f"model: {model.description} ({time.perf_counter() - start:.1f} s); "
                      f"{r.message}")  # fmt: skip
        for note in model.notes:
            self.log.info(note)
        self.budget = BudgetController(model.ladder(self.p), self.p.target_fps)
        self.tracker = self._make_tracker(self.p)
        self._pending_level = True
        lp = self.create_lifecycle_publisher
        self._pubs = {
            "instances": lp(InstanceArray, "instances", 10),
            "instance_mask": lp(Image, "instance_mask", 10),
            "overlay": lp(Image, "overlay", 2),
            "markers": lp(MarkerArray, "markers", 10),
            "diagnostics": lp(DiagnosticArray, "/diagnostics", 10),
        }
        self._pubs["points"] = lp(PointCloud2, "points", 2)
        if Detection2DArray is not None:
            self._pubs["detections"] = lp(Detection2DArray, "detections", 10)
            self._pubs["detections_3d"] = lp(Detection3DArray, "detections_3d", 10)
            self._pubs["label_info"] = lp(LabelInfo, "label_info", LATCHED_QOS)
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the lifecycle publishers
        self.stopping = False
        self.bad_frames = 0  # counted, as the worker's statistics are, from activation
        self.depth_stats = DepthStats()
        self.worker = LatestFrameWorker(self._process, self._on_error)
        self.worker.min_period_s = self._min_period()
        self._subscribe_frames()
        self._frame_subs.append(
            self.create_subscription(PointStamped, "point_prompt", self._on_click, 10)
        )
        self._diag_timer = self.create_timer(self.p.diagnostics_period, self._publish_diagnostics)
        self.active = True
        self._publish_label_info()
        self.log.info(f"active: segmenting {self._describe_input()}")
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_frames()
        self.log.info("inactive: not taking frames (`ros2 lifecycle set /mobius activate`)")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._free_model()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def release(self) -> None:
        """Stop taking frames, wait for the frame in progress, free the model (any state;
        idempotent). Called before the ROS context goes away."""
        self._stop_frames()
        self._free_model()

    def _stop_frames(self) -> None:
        self.active = False
        self.stopping = True
        self._unsubscribe_frames()
        for sub in self._frame_subs:
            self.destroy_subscription(sub)
        self._frame_subs = []
        if self._diag_timer is not None:
            self._diag_timer.cancel()
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        if self.worker is not None:
            self.worker.close(timeout=30.0)  # the frame in progress finishes first
            self.worker = None

    def _free_model(self) -> None:
        """Drop the model; a backend holding device memory (TensorRT) frees it in its
        ``close()``. Runs after ``_stop_frames`` (cleanup and shutdown follow deactivation or
        ``release`` stops the worker first), so no frame is using the backend."""
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        close = getattr(getattr(self.seg, "backend", None), "close", None)
        self.model = self.seg = self.prompt_state = self.budget = None
        if callable(close):
            try:
                close()
            except Exception as exc:  # going down: say so, and go on
                self.log.warning(f"closing the backend failed: {exc}")
        self.tracker = None

    def _frame_topic(self) -> str:
        return self.image_topic + ("/compressed" if self.p.transport == "compressed" else "")

    def _describe_input(self) -> str:
        if not isinstance(self._frames, FrameSync):
            return self._frame_topic()
        depth, info = (self.resolve_topic_name(t) for t in ("depth", "camera_info"))
        return f"{self._frame_topic()} + {depth} + {info} (slop {self.p.sync_slop:g} s)"

    def _subscribe_frames(self) -> None:
        kind = CompressedImage if self.p.transport == "compressed" else Image
        self.depth_problem = ""
        if self.p.use_depth:
            try:
                self._frames = FrameSync(self, kind, self._frame_topic(), "depth", "camera_info",
                                         SENSOR_QOS, self.p.sync_queue, self.p.sync_slop,
                                         self._on_synced, self.p.sync_warn_after)  # fmt: skip
                return
            except RuntimeError as exc:  # no message_filters: 2D goes on, and says why
                self.depth_problem = str(exc)
                self.log.error(f"{exc}; segmenting {self._frame_topic()} without 3D")
        self._frames = self.create_subscription(kind, self._frame_topic(), self._on_frame,
                                                SENSOR_QOS)  # fmt: skip

    def _unsubscribe_frames(self) -> None:
        if isinstance(self._frames, FrameSync):
            self._frames.destroy()
        elif self._frames is not None:
            self.destroy_subscription(self._frames)
        self._frames = None

    def _inactive(self) -> str | None:
        """Why requests are refused now (None while active)."""
        if self.active:
            return None
        if self.model is None:
            return "the node is not configured: `ros2 lifecycle set /mobius configure`"
        return "the node is inactive: `ros2 lifecycle set /mobius activate`"

    # -- callbacks on the executor thread (cheap) -----------------------------------------

    def _on_frame(self, msg: Image | CompressedImage) -> None:
        worker = self.worker
        if worker is not None:
            worker.submit((msg, time.monotonic()))

    def _on_synced(self, msg: Image | CompressedImage, depth: Any, info: Any) -> None:
        """A matched image + depth + camera_info, or (depth None) an image alone while the
        streams are out of sync."""
        worker = self.worker
        if worker is not None:
            worker.submit((msg, time.monotonic(), depth, info) if depth is not None
                          else (msg, time.monotonic()))  # fmt: skip

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
        """On its own callback group's thread: encoding may take a while."""
        inactive = self._inactive()
        try:
            if inactive is not None:
                r = PromptResult(False, f"{inactive}; the prompts stay as they are")
            else:
                r = self._apply_prompt_request(request)
        except Exception as exc:  # a service callback must never take the node down
            r = PromptResult(False, f"set_prompts failed, the old prompts stay: {exc}")
        response.success, response.message, response.encode_ms = r.success, r.message, r.encode_ms
        if r.success:
            self.log.info(f"set_prompts: {r.message}")
        else:
            self.log.warning(f"set_prompts refused: {r.message}")
        return response

    def _apply_prompt_request(self, request: Any) -> PromptResult:
        visual = self._set_visual(request)
        if visual is not None and not visual.success:
            return visual
        if not (list(request.prompts) or visual is None):
            return visual
        before = (self.prompt_state.prompts, self.prompt_state.mode)
        r = self.prompt_state.set(list(request.prompts), request.mode)
        if r.success and (self.prompt_state.prompts, self.prompt_state.mode) != before:
            self._prompts_changed()
        if visual is not None:
            r = PromptResult(r.success, f"{r.message}; {visual.message}", r.encode_ms)
        return r

    def _prompts_changed(self) -> None:
        """The prompt set changed: the parameters say so (a dump saves the prompts in force)
        and LabelInfo describes the new class map."""
        prompts, mode = list(self.prompt_state.prompts), self.prompt_state.mode
        self.set_parameters([Parameter("prompts", Parameter.Type.STRING_ARRAY, prompts),
                             Parameter("mode", Parameter.Type.STRING, mode)])  # fmt: skip
        self._publish_label_info()

    def _publish_label_info(self) -> None:
        pub = self._pubs.get("label_info")
        if pub is None or not self.active or self.prompt_state is None:
            return
        msg = LabelInfo(threshold=float(self.p.score_threshold))
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.class_map = [VisionClass(class_id=i, class_name=name)
                         for i, name in enumerate(self.prompt_state.prompts)]  # fmt: skip
        pub.publish(msg)

    def _on_parameters(self, changes: list[Any]) -> SetParametersResult:
        with self._param_lock:
            return self._change_parameters(changes)

    def _change_parameters(self, changes: list[Any]) -> SetParametersResult:
        new = P.NodeParams(**self.p.as_dict())
        configured = self.model is not None
        try:
            for c in changes:
                if P.is_ros_builtin(c.name):
                    continue  # rclpy's own (use_sim_time drives the clock by itself)
                if c.name not in P.NAMES:
                    raise ValueError(P.unknown_key_error(c.name))
                value = P.check(c.name, _plain(c.value))
                if c.name in P.RESTART_ONLY and value != getattr(self.p, c.name):
                    raise ValueError(f"{c.name} chooses the model; restart the node to change it")
                setattr(new, c.name, value)
            if not configured:
                if new.prompts != self.p.prompts:  # encoded at configure; checked now
                    validate_prompts(list(new.prompts), new.max_prompts, new.max_prompt_chars)
            elif (tuple(new.prompts), new.mode) != (self.prompt_state.prompts,
                                                    self.prompt_state.mode):  # fmt: skip
                r = self.prompt_state.set(new.prompts, new.mode, wait=False)
                if not r.success:
                    raise ValueError(r.message)
                new.prompts, new.mode = list(self.prompt_state.prompts), self.prompt_state.mode
                self._publish_label_info()
            ladder_keys = ("prune_low_range", "prune_high_range", "min_keep_range", "prune_steps")
            if configured and any(getattr(new, k) != getattr(self.p, k) for k in ladder_keys):
                self.budget = BudgetController(self.model.ladder(new), new.target_fps)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        if configured:
            self.seg.post.score_threshold = new.score_threshold
            self.seg.post.top_k = new.max_instances
            track_keys = ("tracking", "track_iou_gate", "track_max_age")
            if any(getattr(new, k) != getattr(self.p, k) for k in track_keys):
                self.tracker = self._make_tracker(new)  # one assignment: the worker sees one
            if new.target_fps != self.p.target_fps:
                self.budget.set_target(new.target_fps)
        self.visual.max_prompts, self.visual.max_age_s = new.max_visual_prompts, new.click_max_age
        self.visual.follow = new.follow_visual
        if self._diag_timer is not None and new.diagnostics_period != self.p.diagnostics_period:
            self._diag_timer.cancel()
            self.destroy_timer(self._diag_timer)
            self._diag_timer = self.create_timer(new.diagnostics_period, self._publish_diagnostics)
        old, self.p = self.p, new
        inputs = ("transport", "use_depth", "sync_slop", "sync_queue")
        if self.active and any(getattr(new, k) != getattr(old, k) for k in inputs):
            self._unsubscribe_frames()  # subscribe again: another transport, depth on/off
            self._subscribe_frames()
            self.log.info(f"now segmenting {self._describe_input()}")
        if self.worker is not None:
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
        if self.stopping:  # a frame cut off by deactivate or shutdown is no error
            return
        self.bad_frames += 1
        self.last_error = str(exc)
        kind = "bad image" if isinstance(exc, ImageError) else "frame failed"
        self.log.error(f"{kind}: {exc}", throttle_duration_sec=5.0)

    def _process(self, item: tuple[Any, float]) -> None:
        msg, received, *depth = item  # depth: (depth image, camera_info) with use_depth
        if not self.active:
            return
        start = time.monotonic()
        if isinstance(msg, CompressedImage):
            rgb = compressed_to_rgb(msg.format, msg.data, self.p.max_image_pixels)
        else:
            rgb = image_msg_to_rgb(msg, self.p.max_image_pixels)
        converted = time.monotonic()
        if self._pending_level or self.budget.target_fps > 0:
            apply_level(self.seg, self.budget.level if self.budget.target_fps > 0
                        else self.model.default_level)  # fmt: skip
            self._pending_level = False
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        self.visual.saw_frame(FrameInfo(msg.header.frame_id, rgb.shape[0], rgb.shape[1], stamp))
        prompts = self.visual.prompts if self.model.visual else []
        clicks = self.visual.segmenter_prompts(prompts)
        (inst,) = self.seg([rgb], [clicks] if clicks else None)
        segmented = time.monotonic()
        used = self.seg.last_prompts  # what this frame was inferred with (not the newest)
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
        tracked = time.monotonic()
        kept = int(self.seg.last_outputs.kept[0, -1]) if self.seg.last_outputs.kept.size else 0
        self.last_kept = kept
        if self.stopping:
            return
        frame3d = self._frame_3d(inst, *depth) if depth else None
        stamps = [] if self._profile is not None else None
        self._publish(msg.header, rgb, inst, times.inference * 1e3, kept, used, ids, prompts,
                      stamps, frame3d)  # fmt: skip
        done = time.monotonic()
        if stamps is not None:
            head = msg.header.stamp.sec, received, start, converted
            steps = times.preprocess, times.inference, times.postprocess, segmented, tracked
            self._profile.write(" ".join(repr(float(v)) for v in (*head, *steps, *stamps, done))
                                + "\n")  # fmt: skip
        worker = self.worker
        if worker is not None:
            worker.stats.add(done - received, done)
        if self.budget.update(done - start, done):
            self.log.info(f"budget: {self.budget.level.describe()}")

    def _frame_3d(self, inst: Any, depth: Any, info: Any) -> Any:
        """The frame's 3D (``depth.Frame3D``); a bad depth or camera_info is logged
        (rate-limited) and counted, and the frame goes on in 2D."""
        p = self.p
        pub = self._pubs.get("points")
        options = {"erode_px": p.depth_erode, "min_points": p.depth_min_points,
                   "depth_range": tuple(p.depth_range), "extent": p.extent_3d,
                   "keep_points": bool(p.publish_points and pub is not None
                                       and pub.get_subscription_count())}  # fmt: skip
        f = frame_3d(inst.masks, inst.boxes, depth, info, options)
        self.depth_stats.add(f, len(inst))
        if f.error:
            self.log.warning(f"no 3D for this frame: {f.error}", throttle_duration_sec=5.0)
        return f

    def _publish(
        self, header: Any, rgb: Any, inst: Any, inference_ms: float, kept: int,
        used: tuple[tuple[str, ...], str], ids: Any = None, visual: Any = (),
        stamps: list[float] | None = None, frame3d: Any = None,
    ) -> None:  # fmt: skip
        """Publish the frame's messages; ``stamps`` (profiling) gets the monotonic times
        after the InstanceArray is built and after it is published; ``frame3d``: the
        instances' 3D (use_depth)."""
        prompts, mode = used
        out = InstanceArray(header=header, mode=mode)
        out.prompts = list(prompts) + [p.label for p in visual]
        out.inference_ms, out.kept_queries = float(inference_ms), kept
        fields = instance_fields(inst, ids)
        in3d = frame3d.results if frame3d is not None and frame3d.results else [None] * len(fields)
        for f, r in zip(fields, in3d):
            m = Instance(id=f.id, label=f.label, prompt_index=f.prompt_index, score=f.score)
            m.box = f.box
            m.mask_height, m.mask_width = f.mask_height, f.mask_width
            m.mask_rle_counts = array.array("I", f.mask_rle_counts)
            if r is not None and r.has_3d:
                m.has_3d = True
                m.center_3d.x, m.center_3d.y, m.center_3d.z = (float(v) for v in r.center)
                m.size_3d.x, m.size_3d.y, m.size_3d.z = (float(v) for v in r.size)
            out.instances.append(m)
        pubs = self._pubs
        if stamps is not None:
            stamps.append(time.monotonic())
        pubs["instances"].publish(out)
        if stamps is not None:
            stamps.append(time.monotonic())
        p = self.p
        if p.publish_instance_mask and pubs["instance_mask"].get_subscription_count():
            labels = label_image(inst, rgb.shape[:2], ids)
            pubs["instance_mask"].publish(Image(header=header, height=labels.shape[0],
                                        width=labels.shape[1], encoding="mono16",
                                        is_bigendian=0, step=2 * labels.shape[1],
                                        data=labels.astype("<u2").tobytes()))  # fmt: skip
        if p.publish_overlay and pubs["overlay"].get_subscription_count():
            from mobius_core.visualize import draw_instances

            h, w, step, data = rgb_to_image_fields(draw_instances(rgb, inst))
            pubs["overlay"].publish(
                Image(header=header, height=h, width=w, encoding="rgb8", step=step, data=data)
            )
        if p.publish_markers and pubs["markers"].get_subscription_count():
            pubs["markers"].publish(self._markers(header, fields, in3d))
        det = pubs.get("detections")
        if p.publish_detections and det is not None and det.get_subscription_count():
            det.publish(self._detections(header, fields))
        if frame3d is None:
            return
        det3 = pubs.get("detections_3d")
        if p.publish_detections and det3 is not None and det3.get_subscription_count():
            det3.publish(self._detections_3d(header, out.instances))
        if p.publish_points and pubs["points"].get_subscription_count():
            pubs["points"].publish(points_cloud(header, in3d, [f.id for f in fields]))

    def _markers(self, header: Any, fields: list[Any], in3d: list[Any]) -> MarkerArray:
        """3D boxes and labels where an instance has 3D; the others drawn flat in the image
        plane at ``marker_scale`` metres per pixel."""
        s = self.p.marker_scale
        out = MarkerArray(markers=[Marker(header=header, action=Marker.DELETEALL)])
        for f, r in zip(fields, in3d):
            if r is not None and r.has_3d:
                out.markers += marker_3d(header, f.id, f"{f.label} {f.score:.2f}", r)
                continue
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

    def _detections_3d(self, header: Any, instances: list[Any]) -> Any:
        """vision_msgs/Detection3DArray: the instances with 3D, same ids and labels as
        ``detections``; the box is axis-aligned in the optical frame (identity orientation)."""
        out = Detection3DArray(header=header)
        for m in instances:
            if not m.has_3d:
                continue
            d = Detection3D(header=header, id=str(m.id))
            d.bbox.center.position = m.center_3d
            d.bbox.center.orientation.w = 1.0
            d.bbox.size = m.size_3d
            hyp = ObjectHypothesisWithPose()
            hyp.hypothesis.class_id, hyp.hypothesis.score = m.label, float(m.score)
            hyp.pose.pose.position = m.center_3d
            hyp.pose.pose.orientation.w = 1.0
            d.results.append(hyp)
            out.detections.append(d)
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

    def _depth_diagnostics(self) -> dict[str, str]:
        """The 3D step's counts; with use_depth, a rate-limited warning when image, depth
        and camera_info have not matched for ``sync_warn_after`` seconds."""
        if not self.p.use_depth:
            return {"use_depth": "false"}
        sync = self._frames if isinstance(self._frames, FrameSync) else None
        if sync is not None:
            late = sync.out_of_sync(self.p.sync_warn_after)
            if late:
                self.log.warning(late, throttle_duration_sec=max(5.0, self.p.sync_warn_after))
            self.depth_problem = late or ""
        d = self.depth_stats
        values = {"use_depth": "true", "depth_topic": self.resolve_topic_name("depth"),
                  "camera_info_topic": self.resolve_topic_name("camera_info"),
                  "synchronised_frames": str(sync.matched if sync else 0),
                  "frames_without_depth": str(sync.alone if sync else 0),
                  "instances_with_3d": str(d.with_3d),
                  "instances_without_3d": str(sum(d.without_3d.values())),
                  "depth_error_frames": str(sum(d.errors.values())),
                  "depth_step_ms": f"{1e3 * d.seconds / max(d.frames, 1):.2f}"}  # fmt: skip
        values.update({f"no_3d: {k}": str(v) for k, v in d.without_3d.items()})
        values.update({f"depth error: {k}": str(v) for k, v in d.errors.items()})
        return values

    def _publish_diagnostics(self) -> None:
        worker, budget, prompts = self.worker, self.budget, self.prompt_state
        if worker is None or budget is None or prompts is None:
            return  # not active
        s = worker.stats.summary()
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
            "prompts": str(len(prompts.prompts)),
            "mode": prompts.mode,
            "visual_prompts": str(len(self.visual.prompts)),
            "last_prompt_error": self.last_prompt_error,
            "image_topic": self._frame_topic(),
            **budget.state(),
            **self._depth_diagnostics(),
        }
        level = DiagnosticStatus.OK
        message = "running"
        if budget.target_fps and s["frames"] > 10 and s["fps"] < 0.9 * budget.target_fps:
            level, message = DiagnosticStatus.WARN, "below target_fps at the fastest setting"
            if budget.index < len(budget.levels) - 1:
                message = "below target_fps; the budget is adjusting"
        if self.last_error:
            level, message = DiagnosticStatus.WARN, f"last bad frame: {self.last_error[:120]}"
            self.last_error = ""
        elif self.depth_problem:
            level, message = DiagnosticStatus.WARN, self.depth_problem[:160]
        elif self.depth_stats.last_error:
            level, message = DiagnosticStatus.WARN, f"no 3D: {self.depth_stats.last_error[:120]}"
            self.depth_stats.last_error = ""
        status = DiagnosticStatus(level=level, name="mobius_ros: segmentation",
                                  message=message, hardware_id=self.p.backend)  # fmt: skip
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        diag = DiagnosticArray(status=[status])
        diag.header.stamp = self.get_clock().now().to_msg()
        self._pubs["diagnostics"].publish(diag)


def marker_3d(header: Any, mid: int, label: str, r: Any) -> list[Marker]:
    """A translucent box at the instance's 3D centre and size, and its label above it."""
    box = Marker(header=header, ns="boxes_3d", id=mid, type=Marker.CUBE)
    box.pose.position.x, box.pose.position.y, box.pose.position.z = (float(v) for v in r.center)
    box.pose.orientation.w = 1.0
    box.scale.x, box.scale.y, box.scale.z = (max(float(v), 0.01) for v in r.size)
    box.color.r, box.color.g, box.color.b, box.color.a = 0.1, 0.9, 1.0, 0.35
    text = Marker(header=header, ns="labels", id=mid, type=Marker.TEXT_VIEW_FACING)
    text.pose.position.x, text.pose.position.z = float(r.center[0]), float(r.center[2])
    text.pose.position.y = float(r.center[1] - r.size[1] / 2 - 0.05)  # y is down: above it
    text.pose.orientation.w = 1.0
    text.text = label
    text.scale.z = 0.08
    text.color.r = text.color.g = text.color.b = text.color.a = 1.0
    return [box, text]


class _Interrupted(BaseException):
    """SIGINT/SIGTERM while the model loads: leave the (long) configure at once."""


class NodeExecutors:
    """Two single-threaded executors for one node: ``main`` (spun by the caller, e.g. the main
    thread) runs every callback except those of ``node.prompt_group``, which ``prompts`` runs
    on a thread of its own. So ``set_prompts`` may encode for seconds while frames,
    diagnostics, parameters and lifecycle go on, at the cost of a single-threaded executor
    per frame (rclpy's multi-threaded executor cost ~2 ms more per frame and slowed
    inference on 2 cores: benchmarks/RESULTS.md). rclpy has no executor for one callback
    group, so each executor here filters the node's entities by group; a node belongs to one
    executor (``main``), and ``prompts`` is given it through ``get_nodes``."""

    def __init__(self, node: Any, context: Any = None) -> None:
        from rclpy.executors import SingleThreadedExecutor

        group = node.prompt_group

        class _Main(SingleThreadedExecutor):
            def can_execute(self, entity: Any) -> bool:
                return entity.callback_group is not group and super().can_execute(entity)

        class _Prompts(SingleThreadedExecutor):
            def get_nodes(self) -> list[Any]:
                return [node]

            def can_execute(self, entity: Any) -> bool:
                return entity.callback_group is group and super().can_execute(entity)

        self.node = node
        self.main, self.prompts = _Main(context=context), _Prompts(context=context)
        self.main.add_node(node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin_prompts, name="mobius-prompts",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def _spin_prompts(self) -> None:
        while not self._stop.is_set():
            try:
                self.prompts.spin_once(timeout_sec=0.1)
            except Exception as exc:  # the service's own callback catches its errors
                if self._stop.wait(0.1) or not rclpy.ok(context=self.node.context):
                    return  # the node is going down: the main loop ends too
                self.node.get_logger().error(f"set_prompts executor: {exc}",
                                             throttle_duration_sec=5.0)  # fmt: skip

    def spin_once(self, timeout_sec: float = 0.1) -> None:
        self.main.spin_once(timeout_sec=timeout_sec)

    def shutdown(self) -> None:
        """Stop the prompt thread (an encoding in progress finishes first) and both executors."""
        self._stop.set()
        self._thread.join(30)
        self.prompts.shutdown()
        self.main.remove_node(self.node)
        self.main.shutdown()


def run(args: list[str] | None = None) -> int:
    """Run the node until SIGINT or SIGTERM (``args`` may hold ``--ros-args ...``).

    The node installs its own signal handlers instead of rclpy's: a signal only asks the spin
    loop to stop, so the worker finishes its frame and stops while the ROS context is still
    valid, and a second signal during that teardown is ignored rather than aborting it.
    Exit code 0 on a signal; 2 for a configuration error (the message names it)."""
    from rclpy.executors import ExternalShutdownException
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    node: SegmentationNode | None = None

    def on_signal(signum: int, frame: Any) -> None:
        first = not stop.is_set()
        stop.set()
        if first and node is not None and node.configuring:
            raise _Interrupted

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    executor: NodeExecutors | None = None
    try:
        try:
            node = SegmentationNode()
        except ValueError as exc:  # configuration: a message, no traceback
            print(f"mobius_ros: {exc}", flush=True)
            return 2
        executor = NodeExecutors(node)
        if node.p.autostart and not stop.is_set():
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                print(f"mobius_ros: {getattr(node, 'config_error', 'configure failed')}",
                      flush=True)  # fmt: skip
                return 2
            if not stop.is_set():
                node.trigger_activate()
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (_Interrupted, ExternalShutdownException):
        pass
    finally:
        try:
            if node is not None:
                node.release()  # the worker stops before the context goes away
                if executor is not None:
                    executor.shutdown()
                node.destroy_node()
            if rclpy.ok():
                rclpy.shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return 0
