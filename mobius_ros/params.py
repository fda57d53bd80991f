"""Node parameters: one table of defaults, descriptions, ranges and run-time rules.

:data:`SPECS` is the single source: the node declares every ROS parameter from it (the
description, ``FloatingPointRange``/``IntegerRange``, allowed values and ``read_only`` that
``ros2 param describe`` shows), and :func:`check` validates values against the same entries.
``config/segment.yaml`` holds the same defaults in ROS's parameter-file format; a test checks
the two agree. Unknown keys in a parameter file are errors that name the nearest known key.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

BACKENDS = ("onnxruntime", "tensorrt", "torch")
MODES = ("category", "agnostic", "referring")
TRANSPORTS = ("raw", "compressed")
# Parameters every rclpy node declares itself; a `ros2 param dump` file holds them.
ROS_BUILTIN = ("use_sim_time", "start_type_description_service")
ROS_BUILTIN_PREFIXES = ("qos_overrides.",)


@dataclass
class NodeParams:
    backend: str = "onnxruntime"
    model: str = ""  # "" = the shipped model (its cached bundle, built on first use)
    config: str = ""  # model config; "" = from the exported graph, else shapes_tiny
    text_model: str = ""  # ONNX text encoder (torch-free); "" = the config's encoder
    embeddings: str = ""  # cached prompt embeddings (.npz from `mobius embed`)
    input_size: int = 0  # short side of the network input; 0 = the model's default
    threads: int = 0  # onnxruntime intra-op threads; 0 = its default
    autostart: bool = True  # configure and activate at start (lifecycle)
    transport: str = "raw"  # raw: `image`; compressed: `<image>/compressed`
    prompts: list[str] = field(
        default_factory=lambda: ["red circle", "blue square", "yellow triangle", "green star"]
    )
    mode: str = "category"
    score_threshold: float = 0.3
    max_instances: int = 50
    max_prompts: int = 64
    max_prompt_chars: int = 200
    pruning: bool = True  # the model's default pruning schedule when the budget is off
    target_fps: float = 0.0  # 0 = no frame-rate budget
    budget_sizes: list[int] = field(default_factory=list)  # [] = automatic, see model.py
    budget_min_size: int = 160
    prune_low_range: list[float] = field(default_factory=lambda: [0.02, 0.3])
    prune_high_range: list[float] = field(default_factory=lambda: [0.1, 0.7])
    min_keep_range: list[int] = field(default_factory=lambda: [10, 1])
    prune_steps: int = 4
    tracking: bool = True  # persistent instance ids across frames (mobius_core.tracking)
    track_iou_gate: float = 0.3  # least mask IoU to continue a track
    track_max_age: int = 15  # frames an unseen object keeps its id
    visual_prompts: bool = True  # take point/box prompts where the model has a visual prompter
    max_visual_prompts: int = 8  # active point/box prompts (a new click drops the oldest)
    click_max_age: float = 5.0  # seconds a click may be older than the latest image
    follow_visual: bool = True  # a point/box prompt follows its answer from frame to frame
    publish_overlay: bool = True  # only drawn while someone subscribes
    publish_instance_mask: bool = True
    publish_markers: bool = True
    publish_detections: bool = True  # vision_msgs/Detection2DArray where vision_msgs exists
    marker_scale: float = 0.001  # metres per pixel for markers drawn in the image frame
    use_depth: bool = False  # synchronise `depth` + `camera_info`: 3D per instance
    sync_slop: float = 0.05  # seconds between stamps that still count as one frame
    sync_queue: int = 10  # messages per topic the synchroniser holds
    depth_range: list[float] = field(default_factory=lambda: [0.1, 20.0])  # metres
    depth_erode: int = 2  # pixels taken off the mask's edge before its depth is read
    depth_min_points: int = 30  # fewer valid depth pixels: no 3D
    extent_3d: str = "completed"  # completed | visible (mobius_core.geometry3d)
    publish_points: bool = True  # PointCloud2 of the instances (only while subscribed)
    sync_warn_after: float = 5.0  # seconds without a matched frame: warn, go on in 2D
    diagnostics_period: float = 1.0
    max_image_pixels: int = 8192 * 8192  # larger images are refused (before decoding)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


NAMES = tuple(f.name for f in fields(NodeParams))


@dataclass(frozen=True)
class Spec:
    """What one parameter means and which values it takes.

    ``lo``/``hi``: inclusive bounds of a number (of each element of a number list), the ROS
    range; ``lo_open``/``hi_open`` exclude that bound (ROS ranges are inclusive, so the
    exclusion is a further constraint). ``choices``: the allowed strings. ``rule``: a further
    check (value -> True when fine) and ``rule_text`` says it in words. ``read_only``: it
    chooses the model; a running node cannot change it."""

    description: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] = ()
    rule: Callable[[Any], bool] | None = None
    rule_text: str = ""
    read_only: bool = False

    def constraints(self) -> str:
        """The limits in words (ROS ``additional_constraints``)."""
        parts = []
        if self.choices:
            parts.append(f"one of: {', '.join(self.choices)}")
        if self.lo is not None and self.hi is not None:
            a, b = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            parts.append(f"in {a}{self.lo:g}, {self.hi:g}{b}")
        if self.rule_text:
            parts.append(self.rule_text)
        if self.read_only:
            parts.append("read-only: chooses the model (set it at start)")
        return "; ".join(parts)


def _size_or_auto(what: str) -> Spec:
    """An image size in pixels that the model chooses when 0 (set at start)."""
    return Spec(what, 0, 4096, rule=lambda v: v == 0 or v >= 32,
                rule_text="0 (automatic) or >= 32", read_only=True)  # fmt: skip


def _ordered_pair(what: str, lo: float, hi: float, order: str) -> Spec:
    """A [loosest, tightest] pair of numbers in [lo, hi] with loosest ``order`` tightest."""
    ok = (lambda a, b: a <= b) if order == "<=" else (lambda a, b: a >= b)
    return Spec(f"[loosest, tightest] {what}", lo, hi,
                rule=lambda v: len(v) == 2 and ok(v[0], v[1]),
                rule_text=f"[loosest, tightest] with loosest {order} tightest")  # fmt: skip


SPECS: dict[str, Spec] = {
    "backend": Spec("inference backend", choices=BACKENDS, read_only=True),
    "model": Spec(
        "model file: '' = the shipped model (its cached bundle, built on first use), or "
        "a .onnx graph, a TensorRT engine, or a .pt checkpoint (torch)",
        read_only=True,
    ),
    "config": Spec(
        "model config name; '' = the one recorded in the exported graph, else shapes_tiny",
        read_only=True,
    ),
    "text_model": Spec(
        "ONNX text encoder from `mobius export --text-encoder` (torch-free "
        "node); '' = the config's encoder in torch",
        read_only=True,
    ),
    "embeddings": Spec(
        "fixed prompt embeddings from `mobius embed` (.npz); prompts must be among them",
        read_only=True,
    ),
    "input_size": _size_or_auto("network input short side in pixels; 0 = the model's default"),
    "threads": Spec("onnxruntime intra-op threads; 0 = its default", 0, 256, read_only=True),
    "autostart": Spec(
        "configure and activate at start; false: wait for `ros2 lifecycle set`", read_only=True
    ),
    "transport": Spec(
        "image transport to subscribe: raw = `image`, compressed = "
        "`<image>/compressed` (image_transport naming)",
        choices=TRANSPORTS,
    ),
    "prompts": Spec(
        "what to look for (also changed by the set_prompts service)",
        rule=lambda v: all(isinstance(p, str) for p in v),
        rule_text="a list of strings",
    ),
    "mode": Spec("how prompts are read", choices=MODES),
    "score_threshold": Spec("instances need a score above this", 0.0, 1.0, hi_open=True),
    "max_instances": Spec("at most this many instances per frame", 1, 1000),
    "max_prompts": Spec("most prompts set_prompts accepts", 1, 4096, read_only=True),
    "max_prompt_chars": Spec("longest prompt set_prompts accepts", 1, 4096, read_only=True),
    "pruning": Spec("the model's default query pruning while target_fps is 0"),
    "target_fps": Spec(
        "frame-rate budget; 0 = off. The node prunes queries and, if needed, "
        "shrinks the input to hold it, and starts frames no faster",
        0.0,
        1000.0,
    ),
    "budget_sizes": Spec(
        "input sizes the budget may use; [] = input_size down to budget_min_size in steps of 32",
        32,
        4096,
        read_only=True,
    ),
    "budget_min_size": _size_or_auto(
        "smallest automatic budget input size; 0 = half the input size"
    ),
    "prune_low_range": _ordered_pair("b_low of the sigmoid pruning schedule", 0.0, 1.0, "<="),
    "prune_high_range": _ordered_pair("b_high of the pruning schedule", 0.0, 1.0, "<="),
    "min_keep_range": _ordered_pair("queries always kept", 1, 10_000, ">="),
    "prune_steps": Spec("pruning settings per input size in the budget ladder", 1, 20),
    "tracking": Spec("instance ids persist across frames (mask IoU + label association)"),
    "track_iou_gate": Spec(
        "least mask IoU between a detection and a track's predicted mask", 0.0, 1.0, lo_open=True
    ),
    "track_max_age": Spec("frames an unseen (missed, hidden) object keeps its id", 0, 10_000),
    "visual_prompts": Spec(
        "point/box prompts where the model has a trained visual prompter", read_only=True
    ),
    "max_visual_prompts": Spec("active point/box prompts; a new click drops the oldest", 1, 256),
    "click_max_age": Spec(
        "seconds a click may be older than the latest image", 0.0, 3600.0, lo_open=True
    ),
    "follow_visual": Spec("a point/box prompt follows the object it selected frame to frame"),
    "publish_overlay": Spec(
        "rgb8 image with masks, boxes and labels (drawn only while subscribed)"
    ),
    "publish_instance_mask": Spec("mono16 label image, pixel = instance id"),
    "publish_markers": Spec("visualization_msgs/MarkerArray in the image frame"),
    "publish_detections": Spec("vision_msgs/Detection2DArray (where vision_msgs is installed)"),
    "marker_scale": Spec("metres per pixel for markers", 0.0, 1000.0, lo_open=True),
    "use_depth": Spec(
        "synchronise `image` with `depth` (16UC1 mm or 32FC1 m, registered to the colour "
        "image) and `camera_info` (message_filters): each instance gets its 3D centre and "
        "size in the image's optical frame"
    ),
    "sync_slop": Spec(
        "seconds between image, depth and camera_info stamps that still "
        "make one frame (ApproximateTimeSynchronizer slop)",
        0.0,
        10.0,
    ),
    "sync_queue": Spec("messages per topic the synchroniser holds", 1, 1000),
    "depth_range": Spec(
        "[nearest, farthest] depth in metres that counts; others are holes",
        0.0,
        1000.0,
        rule=lambda v: len(v) == 2 and v[0] < v[1],
        rule_text="[nearest, farthest], nearest < farthest",
    ),
    "depth_erode": Spec(
        "pixels taken off a mask's edge before its depth is read (edge "
        "pixels often see the background)",
        0,
        50,
    ),
    "depth_min_points": Spec("fewer mask pixels with valid depth than this: no 3D", 1, 10**6),
    "extent_3d": Spec(
        "3D box: completed = the visible points' axis-aligned box made as deep as it is "
        "wide (a camera sees only the front); visible = the visible points' box",
        choices=("completed", "visible"),
    ),
    "publish_points": Spec(
        "sensor_msgs/PointCloud2 of the instances' points (x, y, z, id), only while subscribed"
    ),
    "sync_warn_after": Spec(
        "seconds of images without a matching depth + camera_info before a warning naming "
        "the stamps' offset; meanwhile images are segmented in 2D",
        0.1,
        3600.0,
    ),
    "diagnostics_period": Spec("seconds between /diagnostics messages", 0.05, 60.0),
    "max_image_pixels": Spec(
        "largest image accepted, width x height; a compressed image's size is read from its "
        "header, so a larger one is refused before it is decoded",
        1,
        2**31 - 1,
    ),
}
# Parameters a running node cannot change (they choose and load the model).
RESTART_ONLY = frozenset(n for n, s in SPECS.items() if s.read_only)


def kind(name: str) -> type:
    """The Python type of a parameter (bool, int, float, str or list)."""
    return type(getattr(NodeParams(), name))


def element_kind(name: str) -> type | None:
    """The element type of a list parameter (None for other parameters)."""
    return {"prompts": str, "budget_sizes": int, "prune_low_range": float,
            "prune_high_range": float, "min_keep_range": int,
            "depth_range": float}.get(name)  # fmt: skip


def is_ros_builtin(name: str) -> bool:
    """A parameter rclpy declares on every node (use_sim_time, qos_overrides.*, ...)."""
    return name in ROS_BUILTIN or name.startswith(ROS_BUILTIN_PREFIXES)


def unknown_key_error(name: str) -> str:
    close = difflib.get_close_matches(name, NAMES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(NAMES)}"
    return f"unknown parameter {name!r}{hint}"


def _number(name: str, v: Any, integer: bool, what: str) -> float | int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and isinstance(v, float)):
        raise ValueError(f"{name} {what} must be {'an integer' if integer else 'a number'}, "
                         f"got {v!r}")  # fmt: skip
    if not integer:
        v = float(v)
        if math.isnan(v):
            raise ValueError(f"{name} must not be NaN")
    return v


def check(name: str, value: Any) -> Any:
    """The value converted to the parameter's type; ValueError naming the limit otherwise."""
    if name not in NAMES:
        raise ValueError(unknown_key_error(name))
    k = kind(name)
    if k is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
    elif k in (int, float):
        value = _number(name, value, k is int, "")
    elif k is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
    elif k is list:
        if value is None:  # a ROS parameter file's `[]` arrives as "not set"
            value = []
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list, got {value!r}")
        value = list(value)
        ek = element_kind(name)
        if ek in (int, float):
            value = [_number(name, x, ek is int, "elements") for x in value]
    _check_spec(name, value, SPECS[name])
    return value


def _check_spec(name: str, v: Any, spec: Spec) -> None:
    def fail() -> None:
        raise ValueError(f"{name}={v!r}: must be {spec.constraints().split('; read-only')[0]}")

    if spec.choices and v not in spec.choices:
        fail()
    if spec.lo is not None:
        for x in v if isinstance(v, list) else [v]:
            if not (spec.lo < x if spec.lo_open else spec.lo <= x):
                fail()
            if not (x < spec.hi if spec.hi_open else x <= spec.hi):
                fail()
    if spec.rule is not None and not spec.rule(v):
        fail()


def from_mapping(values: dict[str, Any]) -> NodeParams:
    """NodeParams from a flat mapping (unknown keys and bad values raise ValueError)."""
    p = NodeParams()
    for name, value in values.items():
        if not is_ros_builtin(name):
            setattr(p, name, check(name, value))
    return p


def load_params_file(path: str | Path) -> dict[str, Any]:
    """The ``ros__parameters`` of a ROS 2 parameter file (first node section), checked."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read parameter file {path}: {exc}") from exc
    if not isinstance(doc, dict) or not doc:
        raise ValueError(f"{path} is not a ROS 2 parameter file (node: ros__parameters: ...)")
    section = next(iter(doc.values()))
    if not isinstance(section, dict) or "ros__parameters" not in section:
        raise ValueError(f"{path}: the node section has no ros__parameters key")
    values = {k: v for k, v in (section["ros__parameters"] or {}).items()
              if not is_ros_builtin(k) and k != "qos_overrides"}  # fmt: skip
    from_mapping(values)
    return values
