"""Node parameters: one dataclass with defaults, validation and the run-time rules.

``config/segment.yaml`` holds the same defaults in ROS's parameter-file format; a test checks
the two agree. Unknown keys in a parameter file are errors that name the nearest known key.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

BACKENDS = ("onnxruntime", "tensorrt", "torch")
MODES = ("category", "agnostic", "referring")


@dataclass
class NodeParams:
    backend: str = "onnxruntime"
    model: str = ""  # "" = the shipped model (exported to ONNX on first use and cached)
    config: str = ""  # model config; "" = from the exported graph, else shapes_tiny
    text_model: str = ""  # ONNX text encoder (torch-free); "" = the config's encoder
    embeddings: str = ""  # cached prompt embeddings (.npz from `mobius embed`)
    input_size: int = 0  # short side of the network input; 0 = the model's default
    threads: int = 0  # onnxruntime intra-op threads; 0 = its default
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
    diagnostics_period: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Parameters a running node cannot change (they choose and load the model).
RESTART_ONLY = frozenset(
    {"backend", "model", "config", "text_model", "embeddings", "input_size", "threads",
     "max_prompts", "max_prompt_chars", "visual_prompts"}
)  # fmt: skip
NAMES = tuple(f.name for f in fields(NodeParams))


def _kind(name: str) -> type:
    return type(getattr(NodeParams(), name))


def unknown_key_error(name: str) -> str:
    close = difflib.get_close_matches(name, NAMES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(NAMES)}"
    return f"unknown parameter {name!r}{hint}"


def check(name: str, value: Any, current: NodeParams | None = None) -> Any:
    """The value converted to the parameter's type; ValueError naming the limit otherwise."""
    if name not in NAMES:
        raise ValueError(unknown_key_error(name))
    kind = _kind(name)
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        value = float(value)
        if value != value:
            raise ValueError(f"{name} must not be NaN")
    elif kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
    elif kind is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list, got {value!r}")
        value = list(value)
    _check_range(name, value, current)
    return value


def _check_range(name: str, v: Any, current: NodeParams | None) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"{name}={v!r}: {what}")

    if name == "backend":
        need(v in BACKENDS, f"use one of {', '.join(BACKENDS)}")
    elif name == "mode":
        need(v in MODES, f"use one of {', '.join(MODES)}")
    elif name == "score_threshold":
        need(0.0 <= v < 1.0, "must be in [0, 1)")
    elif name == "max_instances":
        need(1 <= v <= 1000, "must be in 1..1000")
    elif name in ("max_prompts", "max_prompt_chars"):
        need(1 <= v <= 4096, "must be in 1..4096")
    elif name == "target_fps":
        need(0.0 <= v <= 1000.0, "must be in [0, 1000] (0 turns the budget off)")
    elif name in ("input_size", "budget_min_size"):
        need(v == 0 or 32 <= v <= 4096, "must be 0 (automatic) or in 32..4096")
    elif name == "threads":
        need(0 <= v <= 256, "must be in 0..256")
    elif name == "budget_sizes":
        need(all(isinstance(s, int) and 32 <= s <= 4096 for s in v), "sizes must be 32..4096")
    elif name in ("prune_low_range", "prune_high_range"):
        need(
            len(v) == 2 and all(isinstance(x, (int, float)) for x in v) and 0 <= v[0] <= v[1] <= 1,
            "give [loosest, tightest] with 0 <= loosest <= tightest <= 1",
        )
    elif name == "min_keep_range":
        need(
            len(v) == 2 and all(isinstance(x, int) and x >= 1 for x in v) and v[0] >= v[1],
            "give [loosest, tightest] with loosest >= tightest >= 1",
        )
    elif name == "prune_steps":
        need(1 <= v <= 20, "must be in 1..20")
    elif name == "track_iou_gate":
        need(0.0 < v <= 1.0, "must be in (0, 1]")
    elif name == "track_max_age":
        need(0 <= v <= 10_000, "must be in 0..10000 frames")
    elif name == "max_visual_prompts":
        need(1 <= v <= 256, "must be in 1..256")
    elif name == "click_max_age":
        need(0 < v <= 3600, "must be in (0, 3600] seconds")
    elif name == "marker_scale":
        need(v > 0, "must be > 0")
    elif name == "diagnostics_period":
        need(0.05 <= v <= 60, "must be in [0.05, 60] seconds")
    elif name == "prompts":
        need(all(isinstance(p, str) for p in v), "must be a list of strings")


def from_mapping(values: dict[str, Any]) -> NodeParams:
    """NodeParams from a flat mapping (unknown keys and bad values raise ValueError)."""
    p = NodeParams()
    for name, value in values.items():
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
    values = section["ros__parameters"] or {}
    from_mapping(values)
    return values
