"""Params -> a ready :class:`~mobius_core.inference.segmenter.Segmenter` and its budget ladder.

``mobius_core.inference.build_segmenter`` makes the Segmenter, as it does for the CLI and
the benchmarks. The default model is the shipped one: for onnxruntime it is exported once to
an ONNX graph with dynamic input size (cached under ``~/.cache/mobius/onnx`` by checkpoint
hash), so the budget controller may step to smaller inputs. A graph exported for one fixed
size keeps that size and the budget uses pruning alone. The text encoder runs as its ONNX
graph too, cached the same way, where the config's encoder has one; else in torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from mobius_core.inference import Segmenter, SegmenterSpec, build_segmenter

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


def budget_sizes(p: NodeParams, size: int, dynamic: bool) -> list[int]:
    """The input sizes the budget may use: the parameter if set, else steps of 32 from
    ``size`` down to ``budget_min_size`` (only ``size`` for a fixed-size graph)."""
    if not dynamic:
        return [size]
    if p.budget_sizes:
        return sorted({s for s in p.budget_sizes if s <= size} | {size}, reverse=True)
    floor = p.budget_min_size or size // 2
    return list(range(size, min(floor, size) - 1, -32)) or [size]


def spec_from_params(p: NodeParams) -> SegmenterSpec:
    """The node's parameters as a SegmenterSpec (for torch, ``model`` is the checkpoint)."""
    torch = p.backend in ("torch", "pytorch")
    return SegmenterSpec(
        backend=p.backend,
        model=None if torch else (p.model or None),
        checkpoint=(p.model or None) if torch else None,
        config=p.config or None,
        text_model=p.text_model or None,
        embeddings=p.embeddings or None,
        size=p.input_size or None,
        prune=p.pruning,
        score_threshold=p.score_threshold,
        max_instances=p.max_instances,
        threads=p.threads,
        max_prompts=p.max_prompts,
        visual=p.visual_prompts,
    )


def load_model(p: NodeParams) -> LoadedModel:
    """Build the backend, text source and post-processor the parameters ask for."""
    seg = build_segmenter(spec_from_params(p))
    info = seg.info
    d = info.default_pruning
    default_prune = (d["prune_low"], d["prune_high"], d["prune_beta"])
    default = Level(seg.short_side, default_prune if p.pruning else None, int(d["min_keep"]))
    apply_level(seg, default)
    sizes = budget_sizes(p, seg.short_side, info.dynamic)
    return LoadedModel(seg, sizes, d["prune_beta"], default, info.description)


def apply_level(seg: Segmenter, level: Level) -> None:
    """Point the segmenter at a budget level (call from the thread that runs it)."""
    if seg.pad_to is None:
        seg.short_side = level.size
    seg.prune = level.prune_dict()
    seg.min_keep = level.min_keep if level.prune is not None else 1
