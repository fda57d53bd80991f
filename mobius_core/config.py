"""Typed configuration of every component, with YAML overrides validated on load.

The defaults are the paper's (hidden 256, 9 decoder layers, 300 queries, bottleneck
stride 16, single-scale decoding). A named config of the zoo (``mobius_core/zoo/*.yaml``)
or a user YAML file only overrides fields; an unknown key or a bad value raises
``ConfigError`` naming the key, the value and what is allowed.

A user file may start from a zoo entry with ``base: NAME``::

    base: mini_m
    model:
      decoder: {num_queries: 100}
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ZOO_DIR = Path(__file__).resolve().parent / "zoo"


class ConfigError(ValueError):
    """A config key or value is invalid; the message names the key and the fix."""


def _choice(*values: str, default: str) -> Any:
    return field(default=default, metadata={"choices": values})


def _bounded(default: float | int, lo: float | None = None, hi: float | None = None) -> Any:
    return field(default=default, metadata={"min": lo, "max": hi})


@dataclass
class BackboneConfig:
    """Vision encoder. ``name`` is a timm MobileNetV4 variant, ``resnet50`` or
    ``fastervit_0``..``fastervit_3``; ``pretrained_path`` a local weights file.
    ``resolution`` (FasterViT only) is the largest input side the model accepts, rounded
    up to a multiple of 224; smaller inputs are padded, so build it for the size you run."""

    name: str = "resnet50"
    pretrained_path: str | None = None
    resolution: int = _bounded(448, 32, 8192)


@dataclass
class TextEncoderConfig:
    """Text encoder: ``minilm`` (offline all-MiniLM-L6-v2) or ``clip`` (open_clip text tower)."""

    kind: str = _choice("minilm", "clip", default="minilm")
    pretrained: bool = True
    clip_arch: str = "ViT-B-16"
    checkpoint: str | None = None
    max_prompts: int = _bounded(256, 1, 100_000)
    max_chars: int = _bounded(200, 1, 10_000)


@dataclass
class PixelDecoderConfig:
    """Pixel decoder. ``bottleneck`` is MOBIUS (Eq. 1); ``maskdino`` and ``rtdetr`` are the
    GLEE-style baselines. ``num_blocks`` is M (encoder layers for the baselines)."""

    kind: str = _choice("bottleneck", "maskdino", "rtdetr", default="bottleneck")
    num_blocks: int = _bounded(6, 1, 64)
    ffn_dim: int = _bounded(2048, 1, 65_536)
    num_heads: int = _bounded(8, 1, 64)
    num_points: int = _bounded(4, 1, 64)
    bottleneck_stride: int = field(default=16, metadata={"choices": (8, 16, 32)})
    text_fusion: bool = True
    dropout: float = _bounded(0.0, 0.0, 1.0)
    # the 3x3 conv that makes the mask-feature map M: "full" (MaskDINO's, C x C x 9) or
    # "separable" (depthwise 3x3 + pointwise 1x1, ~1/8 of the cost at C = 128)
    mask_conv: str = _choice("full", "separable", default="full")


@dataclass
class DecoderConfig:
    """Transformer decoder: ``single`` decodes the bottleneck scale only, ``multi`` all levels."""

    num_layers: int = _bounded(9, 1, 64)
    num_queries: int = _bounded(300, 1, 10_000)
    ffn_dim: int = _bounded(2048, 1, 65_536)
    num_heads: int = _bounded(8, 1, 64)
    num_points: int = _bounded(4, 1, 64)
    scales: str = _choice("single", "multi", default="single")
    dropout: float = _bounded(0.0, 0.0, 1.0)
    # > 0: the last layer also classifies with the shape of each query's own mask, sampled
    # on a shape_grid x shape_grid grid over its box (heads.ShapeHead); 0: off (the paper)
    shape_grid: int = _bounded(0, 0, 64)
    # how the shape head samples the mask: a ``grid`` over the box, or ``polar`` rings whose
    # Fourier magnitudes over the angle do not change when the object rotates, or
    # ``spectrum``: those magnitudes alone, without the grid; ``outline``: the magnitudes
    # from twice the rays, and the rays' extents sorted
    shape_kind: str = _choice("grid", "polar", "spectrum", "outline", default="grid")


@dataclass
class ClassifierConfig:
    """Language-guided classification: scaled cosine (Eq. 3) or GLEE's dot product."""

    kind: str = _choice("cosine", "dot", default="cosine")
    logit_scale_init: float = _bounded(math.log(1 / 0.07), 0.0, 10.0)
    logit_scale_max: float = _bounded(math.log(100.0), 0.0, 10.0)
    prior_prob: float = _bounded(0.01, 1e-6, 0.5)


@dataclass
class PruningConfig:
    """Inference-time query pruning (Eq. 5-7). Off in training whatever ``enabled`` says."""

    enabled: bool = False
    schedule: str = _choice("sigmoid", "exponential", "logarithmic", default="sigmoid")
    low: float = _bounded(0.05, 0.0, 1.0)
    high: float = _bounded(0.2, 0.0, 1.0)
    beta: float = _bounded(1.0, 1e-6, 100.0)
    min_keep: int = _bounded(100, 1, 10_000)
    # pruned queries stay as frozen self-attention keys/values of later layers (pruning.py)
    context: bool = True


@dataclass
class ModelConfig:
    hidden_dim: int = _bounded(256, 8, 4096)
    input_size: int = _bounded(800, 32, 8192)  # short side at inference unless told otherwise
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    pixel_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    pixel_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    visual_prompter: bool = True  # point/box prompts (modeling/visual_prompter.py)
    visual_prompter_grid: int = _bounded(4, 1, 16)  # G x G samples per box prompt


@dataclass
class TrainConfig:
    """The unified single-stage recipe: AdamW, warm-up then step decay, clipping, losses."""

    batch_size: int = _bounded(2, 1, 4096)
    # A run ends at the first of its two limits: max_steps (null: no step limit) and the
    # wall-clock budget max_minutes (0: none), which counts across resumes
    max_steps: int | None = _bounded(1000, 1, 10_000_000)
    max_minutes: float = _bounded(0.0, 0.0, 1e7)
    # Fit the lr schedule to whichever limit comes first: the run's progress is
    # max(step / max_steps, elapsed / max_minutes), and an lr drop comes at the same
    # fraction of it as lr_drop_steps / schedule_steps; linear and cosine reach 0 at 1
    time_schedule: bool = False
    # The run length, in steps, that lr_drop_steps are written for under time_schedule
    # (null: max_steps)
    schedule_steps: int | None = _bounded(None, 1, 10_000_000)
    lr: float = _bounded(1e-4, 0.0, 1.0)
    weight_decay: float = _bounded(0.05, 0.0, 1.0)
    backbone_lr_mult: float = _bounded(0.1, 0.0, 10.0)
    text_lr_mult: float = _bounded(0.1, 0.0, 10.0)
    freeze_text_encoder: bool = False
    warmup_steps: int = _bounded(100, 0, 10_000_000)
    # After warm-up: "step" multiplies the lr by lr_drop_factor at each of lr_drop_steps;
    # "linear" and "cosine" decay it to 0 at max_steps (or, with time_schedule, at the
    # first limit), the usual choice when the budget is fixed in advance
    lr_decay: str = _choice("step", "linear", "cosine", default="step")
    lr_drop_steps: list[int] = field(default_factory=list)
    lr_drop_factor: float = _bounded(0.1, 0.0, 1.0)
    grad_clip: float = _bounded(0.1, 0.0, 1e6)
    # mixed precision: float16 autocast on CUDA, bfloat16 on the CPU (benchmarks/RESULTS.md)
    amp: bool = False
    # convolution weights (and so activations) in NHWC, which oneDNN's CPU kernels prefer;
    # the same losses (benchmarks/recipe_sweep.py probe --arms channels_last: steps/s)
    channels_last: bool = False
    ema_decay: float = _bounded(0.0, 0.0, 1.0)
    calibration: bool = True
    dn_number: int = _bounded(100, 0, 100_000)
    dn_label_noise: float = _bounded(0.2, 0.0, 1.0)
    dn_box_noise: float = _bounded(0.4, 0.0, 10.0)
    hybrid_queries: int = _bounded(300, 0, 100_000)
    hybrid_k: int = _bounded(6, 1, 1000)
    num_points: int = _bounded(12544, 1, 1_000_000)
    loss_class: float = _bounded(4.0, 0.0, 1e3)
    loss_bbox: float = _bounded(5.0, 0.0, 1e3)
    loss_giou: float = _bounded(2.0, 0.0, 1e3)
    loss_mask: float = _bounded(5.0, 0.0, 1e3)
    loss_dice: float = _bounded(5.0, 0.0, 1e3)
    short_sides: list[int] = field(default_factory=lambda: list(range(384, 801, 32)))
    max_size: int = _bounded(1333, 32, 8192)
    flip_prob: float = _bounded(0.5, 0.0, 1.0)
    # Share of category/agnostic training images replaced by a 2x2 mosaic of four images
    # of the same source, a window of it resized to one image's size; the window is that
    # size over a random scale in [mosaic_min_scale, 1] (0.5: up to the whole canvas)
    mosaic_prob: float = _bounded(0.0, 0.0, 1.0)
    mosaic_min_scale: float = _bounded(0.5, 0.5, 1.0)
    seed: int = _bounded(0, 0, 2**31 - 1)
    log_every: int = _bounded(10, 1, 1_000_000)
    tensorboard: bool = True  # also log to OUT/tensorboard where the package is installed
    checkpoint_every: int = _bounded(200, 1, 10_000_000)
    keep_checkpoints: bool = False  # also keep OUT/step_NNNNNNN.pt at each checkpoint
    # Visual prompts: the share of steps whose prompts are points/boxes sampled inside
    # ground-truth instances (one prompt -> its instance), at most visual_per_image each
    visual_prob: float = _bounded(0.0, 0.0, 1.0)
    visual_per_image: int = _bounded(4, 1, 1000)
    visual_box_prob: float = _bounded(0.5, 0.0, 1.0)  # a box prompt instead of a point
    # Parameter-name prefixes to train (e.g. ["visual_prompter."]); empty: all of them.
    # The other parts stay frozen and in eval mode (BatchNorm statistics included).
    trainable: list[str] = field(default_factory=list)
    # Parameter-name prefixes kept at their initial values (e.g. ["text_proj."]); empty: none
    frozen: list[str] = field(default_factory=list)


@dataclass
class Config:
    """Everything one named model needs: the model and its training recipe."""

    name: str = "custom"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------------------
# Loading and validation


def zoo_names() -> list[str]:
    """Names of the configs shipped in ``mobius_core/zoo``."""
    return sorted(p.stem for p in ZOO_DIR.glob("*.yaml"))


def load_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Load a zoo config by name or a YAML file by path, then apply ``overrides``.

    ``overrides`` is a nested dict or a flat dict of dotted keys
    (``{"model.decoder.num_queries": 100}``).
    """
    data = _read_yaml_chain(str(name_or_path), seen=())
    data["name"] = Path(str(name_or_path)).stem
    cfg = _apply(Config(), data, prefix="")
    if overrides:
        cfg = _apply(cfg, _nest(overrides), prefix="")
    _check_cross_fields(cfg)
    return cfg


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Return a copy of ``cfg`` with ``overrides`` (nested or dotted keys) validated and applied."""
    out = _apply(cfg, _nest(overrides), prefix="")
    _check_cross_fields(out)
    return out


def parse_set_args(items: list[str]) -> dict[str, Any]:
    """Turn ``["model.decoder.num_queries=100", ...]`` into a dotted-key dict (values as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"override {item!r} is not KEY=VALUE (e.g. model.decoder.num_queries=100)"
            )
        out[key.strip()] = _number_or_value(yaml.safe_load(value))
    return out


def _number_or_value(value: Any) -> Any:
    # YAML 1.1 reads 5e-4 (no dot) as a string; on a command line it means a number
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _read_yaml_chain(name_or_path: str, seen: tuple[str, ...]) -> dict[str, Any]:
    path = Path(name_or_path)
    if not path.suffix and (ZOO_DIR / f"{name_or_path}.yaml").is_file():
        path = ZOO_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"config {name_or_path!r} is neither a zoo name nor a YAML file; "
            f"zoo names: {', '.join(zoo_names())}"
        )
    if str(path) in seen:
        raise ConfigError(f"config {path} inherits from itself through 'base'")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, got {type(data).__name__}")
    base = data.pop("base", None)
    if "name" in data:
        raise ConfigError(f"{path}: 'name' is not set in a file; a config is named after its file")
    if base is None:
        return data
    parent = _read_yaml_chain(str(base), seen + (str(path),))
    return _deep_merge(parent, data)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r} conflicts with another override of {p!r}")
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = _deep_merge(node[parts[-1]], value)
        else:
            node[parts[-1]] = value
    return out


def _apply(obj: Any, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    changes: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(
                f"unknown config key {path!r}; allowed keys here: {', '.join(sorted(fields))}"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _apply(current, value, prefix=f"{path}.")
        else:
            changes[key] = _check_value(path, value, hints[key], fields[key].metadata)
    return dataclasses.replace(obj, **changes)


def _check_value(path: str, value: Any, hint: Any, meta: Any) -> Any:
    lo, hi = meta.get("min"), meta.get("max")
    allowed = f"{lo} <= {path} <= {hi}" if lo is not None or hi is not None else ""
    value = _coerce(path, value, hint, allowed)
    if value is None:  # an optional field left unset (e.g. train.max_steps: null)
        return value
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(
            f"{path}={value!r} is not allowed; choose one of: {', '.join(map(str, choices))}"
        )
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{path}={value!r} is out of range; allowed: {allowed}")
    return value


def _coerce(path: str, value: Any, hint: Any, allowed: str = "") -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(path, value, inner[0], allowed)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list of {item.__name__}, got {value!r}")
        return [_coerce(f"{path}[{i}]", v, item) for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf
        # NaN compares false with every bound, so a range check alone would let it through
        if not math.isfinite(number):
            fix = f"a number in {allowed}" if allowed else "a finite number"
            raise ConfigError(f"{path}={value!r} is not a finite number (NaN or inf); set {fix}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported config type {hint!r}")  # pragma: no cover


def _check_cross_fields(cfg: Config) -> None:
    m = cfg.model
    if m.hidden_dim % m.pixel_decoder.num_heads or m.hidden_dim % m.decoder.num_heads:
        raise ConfigError(
            f"model.hidden_dim={m.hidden_dim} must be divisible by the number of attention heads "
            f"(pixel_decoder.num_heads={m.pixel_decoder.num_heads}, "
            f"decoder.num_heads={m.decoder.num_heads})"
        )
    if m.hidden_dim % 32:
        raise ConfigError(f"model.hidden_dim={m.hidden_dim} must be a multiple of 32 (GroupNorm)")
    if m.pruning.low > m.pruning.high:
        raise ConfigError(
            f"model.pruning.low={m.pruning.low} must not exceed model.pruning.high={m.pruning.high}"
        )
    if len(m.pixel_mean) != 3 or len(m.pixel_std) != 3 or min(m.pixel_std) <= 0:
        raise ConfigError("model.pixel_mean and model.pixel_std need 3 values, std > 0")
    t = cfg.train
    if not t.short_sides or min(t.short_sides) < 32:
        raise ConfigError(f"train.short_sides={t.short_sides} needs sizes >= 32, e.g. [384, 416]")
    if t.time_schedule and t.max_minutes <= 0:
        raise ConfigError(
            "train.time_schedule=true fits the schedule to train.max_minutes, which is 0: "
            "set train.max_minutes (the budget) or turn train.time_schedule off"
        )
    if t.max_steps is None and t.max_minutes <= 0:
        raise ConfigError(
            "train.max_steps=null (no step limit) and train.max_minutes=0 (no budget): the run "
            "would never end; set train.max_steps=N or train.max_minutes"
        )
    if t.max_steps is None and not t.time_schedule and t.lr_decay != "step":
        raise ConfigError(
            f"train.lr_decay={t.lr_decay} decays to 0 at train.max_steps, which is null (no "
            "step limit): set train.max_steps=N or train.time_schedule=true"
        )
    drops_of = t.schedule_steps or t.max_steps
    if t.time_schedule and t.lr_decay == "step" and t.lr_drop_steps and drops_of is None:
        raise ConfigError(
            f"train.lr_drop_steps={t.lr_drop_steps} with train.time_schedule=true come at "
            "their fraction of train.schedule_steps (or train.max_steps), and both are null: "
            "set train.schedule_steps=N, the run length the drops are written for"
        )
    if t.lr_drop_steps != sorted(t.lr_drop_steps):
        raise ConfigError(f"train.lr_drop_steps={t.lr_drop_steps} must be increasing")


def add_set_argument(p: Any) -> None:
    """The repeatable ``--set KEY=VALUE`` config override (parsed by ``parse_set_args``)."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set model.decoder.num_queries=100 (repeatable)",
    )
