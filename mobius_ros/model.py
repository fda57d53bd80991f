"""Params -> a ready :class:`~mobius_core.export.runtime.Segmenter` and its budget ladder.

The default model is the shipped one: for onnxruntime it is exported once to an ONNX graph
with dynamic input size (cached under ``~/.cache/mobius/onnx`` by checkpoint hash; needs
torch that one time), so the budget controller may step to smaller inputs. A graph exported
for one fixed size keeps that size and the budget uses pruning alone. The text encoder runs
as its ONNX graph too, cached the same way (``cached_text_export``), where the config's
encoder has one; else in torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from mobius_core.export import io_spec
from mobius_core.export.runtime import (
    FileTextSource,
    OnnxTextSource,
    Segmenter,
    backend_name,
    load_backend,
)
from mobius_core.postprocess import PostProcessor

from .budget import Level, build_ladder
from .params import NodeParams


@dataclass
class LoadedModel:
    segmenter: Segmenter
    sizes: list[int]  # input sizes the budget may use, largest first
    beta: float  # the model's pruning-schedule beta
    default_level: Level  # used when the budget is off
    description: str

    @property
    def visual(self) -> bool:
        """Whether point/box prompts work (a graph with their inputs, or torch)."""
        return self.segmenter.takes_visual_prompts

    def ladder(self, p: NodeParams) -> list[Level]:
        """The budget ladder for the pruning ranges in ``p`` (rebuilt when they change)."""
        return build_ladder(self.sizes, tuple(p.prune_low_range), tuple(p.prune_high_range),
                            tuple(p.min_keep_range), p.prune_steps, self.beta)  # fmt: skip


def _config(name: str):
    from mobius_core.config import load_config

    return load_config(name or "shapes_tiny")


def budget_sizes(p: NodeParams, size: int, dynamic: bool) -> list[int]:
    """The input sizes the budget may use: the parameter if set, else steps of 32 from
    ``size`` down to ``budget_min_size`` (only ``size`` for a fixed-size graph)."""
    if not dynamic:
        return [size]
    if p.budget_sizes:
        return sorted({s for s in p.budget_sizes if s <= size} | {size}, reverse=True)
    floor = p.budget_min_size or size // 2
    return list(range(size, min(floor, size) - 1, -32)) or [size]


def load_model(p: NodeParams) -> LoadedModel:
    """Build the backend, text source and post-processor the parameters ask for."""
    name = backend_name(p.backend)
    post = PostProcessor(p.score_threshold, p.max_instances)
    if name == "torch":
        from mobius_core.cli import _load_model
        from mobius_core.export.runtime import TorchBackend, TorchTextSource

        cfg = _config(p.config)
        model = _load_model(cfg, p.model or None, [])
        backend = TorchBackend(model, cfg.model.pruning.schedule)
        text = TorchTextSource(model.text_encoder)
        backend.visual = backend.visual and p.visual_prompts
        d = io_spec.pruning_values(cfg.model.pruning)
        size, dynamic = p.input_size or cfg.model.input_size, True
        what = f"torch, {cfg.name}" + (f" from {p.model}" if p.model else " (shipped weights)")
    else:
        model_path = p.model
        if not model_path:
            if name != "onnxruntime":
                raise ValueError(
                    "the tensorrt backend needs model:=<engine>; build one with "
                    "`mobius build-engine model.onnx`"
                )
            model_path = str(_shipped_onnx(p))
        backend = load_backend(name, model_path, threads=p.threads)
        meta = getattr(backend, "meta", {})
        cfg_name = p.config or meta.get(io_spec.META_CONFIG, "")
        d = io_spec.default_pruning(meta, _config(cfg_name).model.pruning)
        fixed = getattr(backend, "fixed_hw", None)
        exported = getattr(backend, "input_hw", (0, 0)) or (0, 0)
        size = p.input_size or (min(fixed) if fixed else min(exported) or 320)
        dynamic = fixed is None
        if p.embeddings:
            text = FileTextSource(p.embeddings)
        elif p.text_model:
            text = OnnxTextSource(p.text_model, p.max_prompts)
        else:
            text = _default_text_source(_config(cfg_name), p)
        what = f"{name}, {model_path}"
    pad_to = getattr(backend, "fixed_hw", None)
    pre = None
    if name == "onnxruntime":  # the same preprocessing in ORT's kernels: ~3 ms less per frame
        from mobius_core.export.preprocess_graph import OrtPreprocessor

        pre = OrtPreprocessor()
    seg = Segmenter(backend, text, size, post=post, pad_to=pad_to, preprocessor=pre)
    default_prune = (d["prune_low"], d["prune_high"], d["prune_beta"])
    default = Level(size, default_prune if p.pruning else None, int(d["min_keep"]))
    apply_level(seg, default)
    return LoadedModel(seg, budget_sizes(p, size, dynamic), d["prune_beta"], default, what)


def _default_text_source(cfg, p: NodeParams):
    """The config's text encoder: its ONNX graph (exported once and cached beside the image
    graph; several times faster on a CPU) where it has one, else the encoder in torch."""
    from mobius_core.export.onnx import cached_text_export

    path = cached_text_export(cfg)
    if path is not None:
        return OnnxTextSource(path, p.max_prompts)
    from mobius_core.build import build_text_encoder_from_config
    from mobius_core.export.runtime import TorchTextSource

    return TorchTextSource(build_text_encoder_from_config(cfg.model))


def apply_level(seg: Segmenter, level: Level) -> None:
    """Point the segmenter at a budget level (call from the thread that runs it)."""
    if seg.pad_to is None:
        seg.short_side = level.size
    seg.prune = level.prune_dict()
    seg.min_keep = level.min_keep if level.prune is not None else 1


def _shipped_onnx(p: NodeParams):
    from mobius_core.training.checkpoint import shipped_checkpoint

    cfg = _config(p.config)
    ckpt = shipped_checkpoint(cfg.name)
    if ckpt is None:
        raise ValueError(
            f"no shipped weights for config {cfg.name!r}; set model:=<file.onnx> "
            "(from `mobius export`)"
        )
    try:
        from mobius_core.export.onnx import cached_export
    except ImportError as exc:
        raise ValueError(
            "the shipped model must be exported to ONNX once, which needs torch; run "
            f"`mobius export {cfg.name} --dynamic-hw --out model.onnx` where torch is "
            "installed and set model:=model.onnx"
        ) from exc
    from mobius_core.training.checkpoint import has_visual_prompter, load_checkpoint

    visual = p.visual_prompts and has_visual_prompter(load_checkpoint(ckpt))
    size = p.input_size or cfg.model.input_size
    return cached_export(cfg, ckpt, size, dynamic_hw=True, visual=visual)
