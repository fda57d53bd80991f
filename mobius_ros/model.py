"""Params -> a ready :class:`~mobius_core.inference.segmenter.Segmenter` and its budget ladder.

``mobius_core.inference.build_segmenter`` makes the Segmenter, as it does for the CLI and
the benchmarks. The default model is the shipped one: for onnxruntime the image graph of its
cached bundle (``mobius_core.bundle``, under ``~/.cache/mobius/onnx`` by checkpoint hash; built
on first use), with dynamic input size, so the budget controller may step to smaller inputs.
A graph exported for one fixed size keeps that size and the budget uses pruning alone; a
TensorRT engine's profile bounds the sizes it may use. The text encoder runs as the bundle's
text graph where the config's encoder has one; else in torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mobius_core.inference import Segmenter, SegmenterSpec, build_segmenter
from mobius_core.inference.io_spec import SIZE_DIVISOR

from .budget import Level, build_ladder
from .params import NodeParams


@dataclass
class LoadedModel:
    segmenter: Segmenter
    sizes: list[int]  # input sizes the budget may use, largest first
    beta: float  # the model's pruning-schedule beta
    default_level: Level  # used when the budget is off
    description: str
    notes: list[str] = field(default_factory=list)  # lines for the node log at configure

    @property
    def visual(self) -> bool:
        """Whether point/box prompts work (a graph with their inputs, or torch)."""
        return self.segmenter.takes_visual_prompts

    def ladder(self, p: NodeParams) -> list[Level]:
        """The budget ladder for the pruning ranges in ``p`` (rebuilt when they change)."""
        return build_ladder(self.sizes, tuple(p.prune_low_range), tuple(p.prune_high_range),
                            tuple(p.min_keep_range), p.prune_steps, self.beta)  # fmt: skip


def budget_sizes(p: NodeParams, size: int, dynamic: bool, min_side: int = 0) -> list[int]:
    """The input sizes the budget may use: the parameter if set, else steps of 32 from
    ``size`` down to ``budget_min_size`` (only ``size`` for a fixed-size graph). ``min_side``:
    the smallest padded side the backend takes (an engine's profile, :func:`profile_min_side`);
    sizes whose padded short side falls below it are left out (``size`` itself stays)."""
    if not dynamic:
        return [size]
    if p.budget_sizes:
        sizes = sorted({s for s in p.budget_sizes if s <= size} | {size}, reverse=True)
    else:
        floor = p.budget_min_size or size // 2
        sizes = list(range(size, min(floor, size) - 1, -32)) or [size]
    return [s for s in sizes if s == size or _padded(s) >= min_side]


def _padded(side: int) -> int:
    """A short side as the Segmenter feeds it: padded up to a multiple of 32."""
    return -(-side // SIZE_DIVISOR) * SIZE_DIVISOR


def profile_min_side(backend: Any) -> int:
    """The smallest H/W an engine's profile takes (its ``image_range``); 0 for a backend
    without a profile (torch, onnxruntime) or one built for a single size."""
    ranges = getattr(backend, "image_range", None)
    if backend.max_hw is None or ranges is None:
        return 0
    (h0, _), (w0, _) = ranges
    return min(h0, w0)


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
    min_side = profile_min_side(seg.backend)
    sizes = budget_sizes(p, seg.short_side, info.dynamic, min_side)
    notes = []
    dropped = sorted(set(budget_sizes(p, seg.short_side, info.dynamic)) - set(sizes))
    if dropped:
        (h0, h1), (w0, w1) = seg.backend.image_range
        notes.append(
            f"budget: input sizes {', '.join(map(str, dropped[::-1]))} left out, below the "
            f"engine's profile (H {h0}..{h1}, W {w0}..{w1}); rebuild it with `mobius "
            "build-engine MODEL.onnx --min-size N` to use them"
        )
    return LoadedModel(seg, sizes, d["prune_beta"], default, info.description, notes)


def apply_level(seg: Segmenter, level: Level) -> None:
    """Point the segmenter at a budget level (call from the thread that runs it)."""
    if seg.pad_to is None:
        seg.short_side = level.size
    seg.prune = level.prune_dict()
    seg.min_keep = level.min_keep if level.prune is not None else 1
