"""Plain values -> a ready :class:`~mobius_core.inference.segmenter.Segmenter`.

:func:`build_segmenter` is the one place where a backend, a text source, the
post-processor, the input size and the default pruning are chosen: ``mobius predict`` /
``mobius bench``, the ROS node, replay and the benchmarks all call it with a
:class:`SegmenterSpec`, so they cannot drift apart.

Defaults, in order: the backend's model file (``model``) or, for onnxruntime, the shipped
model of the config exported once to a cached ONNX graph; the config named by ``config``,
else the one the graph records, else ``shapes_tiny``; prompt embeddings from ``embeddings``,
else the text graph ``text_model``, else the config's text encoder (its cached ONNX graph
where it has one, else in torch); the input size ``size``, else the graph's fixed size, else
its export size, else the config's ``model.input_size``; capped by an engine profile's
``max_hw``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..postprocess import PostProcessor
from . import io_spec
from .backend import Backend, backend_name
from .segmenter import Segmenter
from .text import FileTextSource, OnnxTextSource, TextSource


@dataclass(frozen=True)
class SegmenterSpec:
    """What to run, as plain values (a CLI's flags, a node's parameters).

    backend: torch, onnxruntime (ort) or tensorrt (trt). model: the .onnx (ort) or the
    engine (trt); None = the shipped model (ort only). checkpoint: torch weights (None = the
    shipped ones). overrides: ``KEY=VALUE`` config overrides (``--set``). size: the short side
    images are resized to (None = the model's). prune: the model's default pruning on, else
    every query through every layer. visual: use point/box prompt inputs where the model has
    them. threads: onnxruntime intra-op threads (0 = its default). device: torch device
    (None = cuda if available). ort_preprocess: resize/normalise in onnxruntime's kernels
    (None = where the backend is onnxruntime).
    """

    backend: str = "onnxruntime"
    model: str | None = None
    checkpoint: str | None = None
    config: str | None = None
    overrides: tuple[str, ...] = ()
    text_model: str | None = None
    embeddings: str | None = None
    size: int | None = None
    max_size: int = 1333
    prune: bool = True
    score_threshold: float = 0.3
    max_instances: int = 100
    threads: int = 0
    max_prompts: int = 256
    visual: bool = True
    device: str | None = None
    ort_preprocess: bool | None = None


@dataclass
class ModelInfo:
    """What :func:`build_segmenter` chose (``Segmenter.info``).

    default_pruning: ``prune_low/prune_high/prune_beta/min_keep`` of the model (whether or
    not ``spec.prune`` switched it on). dynamic: whether the input size may change at run time
    (False for a graph exported for one size)."""

    backend: str
    config: Any
    description: str
    default_pruning: dict[str, float]
    size: int
    dynamic: bool
    model_path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def build_segmenter(spec: SegmenterSpec) -> Segmenter:
    """The Segmenter ``spec`` asks for, with ``.info`` (:class:`ModelInfo`) set."""
    from ..config import load_config, parse_set_args

    name = backend_name(spec.backend)
    overrides = parse_set_args(list(spec.overrides))

    def config(recorded: str | None = None):
        return load_config(spec.config or recorded or "shapes_tiny", overrides)

    if name == "torch":
        from ..build import load_trained_model
        from .torch_backend import TorchBackend

        cfg = config()
        model = load_trained_model(cfg, spec.checkpoint, spec.overrides)
        backend: Backend = TorchBackend(
            model, cfg.model.pruning.schedule, spec.device, cfg.model.input_size
        )
        text: TextSource = _torch_text(model.text_encoder)
        if spec.embeddings:
            text = FileTextSource(spec.embeddings)
        elif spec.text_model:
            text = OnnxTextSource(spec.text_model, spec.max_prompts)
        pruning = io_spec.pruning_values(cfg.model.pruning)
        weights = f"from {spec.checkpoint}" if spec.checkpoint else "(shipped weights)"
        what, model_path = f"torch, {cfg.name} {weights}", spec.checkpoint or ""
    else:
        model_path = spec.model or str(_shipped_graph(name, config(), spec))
        backend = _file_backend(name, model_path, spec)
        cfg = config(backend.meta.get(io_spec.META_CONFIG))
        pruning = io_spec.default_pruning(backend.meta, cfg.model.pruning)
        if spec.embeddings:
            text = FileTextSource(spec.embeddings)
        elif spec.text_model:
            text = OnnxTextSource(spec.text_model, spec.max_prompts)
        else:
            text = default_text_source(cfg, spec.max_prompts)
        what = f"{name}, {model_path}"
    if not spec.visual:
        backend.accepts_visual = backend.accepts_visual and backend.requires_visual
    fixed = backend.fixed_hw
    size = spec.size or (min(fixed) if fixed else min(backend.input_hw) or cfg.model.input_size)
    pre = None
    if spec.ort_preprocess or (spec.ort_preprocess is None and name == "onnxruntime"):
        from .preprocess import OrtPreprocessor  # the same resize in ORT: ~3 ms less per frame

        pre = OrtPreprocessor()
    prune, min_keep = io_spec.split_pruning(pruning)
    seg = Segmenter(
        backend,
        text,
        size,
        spec.max_size,
        PostProcessor(spec.score_threshold, spec.max_instances),
        prune if spec.prune else None,
        min_keep,
        pad_to=fixed,
        preprocessor=pre,
    )
    # an engine's profile caps what each call feeds (Segmenter.input_limits): start there,
    # so the size reported (and the top of the node's budget ladder) is the one used
    seg.short_side, seg.max_size = seg.input_limits()
    seg.info = ModelInfo(name, cfg, what, pruning, seg.short_side, fixed is None, model_path)
    return seg


def _file_backend(name: str, path: str, spec: SegmenterSpec) -> Backend:
    if name == "onnxruntime":
        from .ort_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, threads=spec.threads)
    from .trt_backend import TensorRTBackend

    return TensorRTBackend(path)


def _torch_text(encoder: Any) -> TextSource:
    from .text import TorchTextSource

    return TorchTextSource(encoder)


def _shipped_graph(name: str, cfg: Any, spec: SegmenterSpec):
    """The shipped checkpoint of ``cfg`` as a cached ONNX graph (``mobius_core.bundle``: found
    without torch, exported the first time). With ``spec.visual`` the graph has point/box
    inputs where the checkpoint has a trained visual prompter (the bundle's manifest records
    which). The bundle's text graph is :func:`default_text_source`'s to find (each file of
    the bundle is checked once)."""
    if name != "onnxruntime":
        raise ValueError(
            f"the {name} backend needs a model (an engine); build one with "
            "`mobius build-engine model.onnx`"
        )
    from ..bundle import shipped_bundle

    return shipped_bundle(cfg, spec.size or cfg.model.input_size, spec.visual, text=False).image


def default_text_source(cfg: Any, max_prompts: int = 256) -> TextSource:
    """The config's text encoder: its ONNX graph (exported once and cached; several times
    faster on a CPU) where it has one, else the encoder in torch."""
    from ..bundle import cached_text_graph

    path = cached_text_graph(cfg)  # found without torch; exported (torch) the first time
    if path is not None:
        return OnnxTextSource(path, max_prompts)
    from ..build import build_text_encoder_from_config

    return _torch_text(build_text_encoder_from_config(cfg.model))
