"""What every image-graph backend is: the :class:`Backend` protocol, the feed it takes
(``io_spec.IMAGE_INPUTS``, or ``VISUAL_GRAPH_INPUTS`` with point/box prompts) and the
:class:`~mobius_core.postprocess.RawOutputs` it returns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from ..postprocess import RawOutputs
from . import io_spec
from .prompts import TextArrays

BACKENDS = ("torch", "onnxruntime", "tensorrt")
ALIASES = {"ort": "onnxruntime", "trt": "tensorrt", "pytorch": "torch"}


def backend_name(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; use one of {BACKENDS} (or ort, trt)")
    return name


class Backend(Protocol):
    """An image graph behind the ``io_spec`` feed. Every backend sets every attribute (the
    Segmenter and the ROS node read them directly, no defaults):

    name             ``torch``, ``onnxruntime`` or ``tensorrt``
    layers           decoder layers (the length of the ``kept`` output)
    text_dim         the width of the prompt embeddings it takes
    input_hw         the (H, W) it was exported or built for (its natural size)
    fixed_hw         the only (H, W) it takes, or None where any multiple of 32 is taken
    max_hw           the largest (H, W) it takes, or None for no limit (an engine's profile)
    accepts_visual   whether it has point/box prompt inputs (``visual_boxes``/``visual_valid``)
    requires_visual  whether those inputs must always be fed (a ``--visual`` graph)
    meta             the graph's ``mobius.*`` metadata (config name, default pruning, ...)

    Optional: ``close()``, which frees what the backend holds outside Python's memory
    (device buffers, page-locked host memory, streams: the TensorRT backend) and is safe to
    call twice. Backends without such resources need not have it; callers that end a
    backend's use (the ROS node at cleanup and shutdown, once no frame is running) call it
    where it exists: ``getattr(backend, "close", None)``.
    """

    name: str
    layers: int
    text_dim: int
    input_hw: tuple[int, int]
    fixed_hw: tuple[int, int] | None
    max_hw: tuple[int, int] | None
    accepts_visual: bool
    requires_visual: bool
    meta: dict[str, str]

    def infer(self, feed: dict[str, np.ndarray]) -> RawOutputs: ...


def make_feed(
    batch: np.ndarray, text: TextArrays, prune: dict[str, float] | None, min_keep: int
) -> dict[str, np.ndarray]:
    """The ``io_spec`` feed for a preprocessed batch, prompts and a pruning setting
    (``prune`` None = off)."""
    p = dict(io_spec.NO_PRUNING) if prune is None else prune
    return {
        "image": np.ascontiguousarray(batch, dtype=np.float32),
        "text_tokens": text.tokens.astype(np.float32, copy=False),
        "text_token_mask": text.token_mask.astype(bool, copy=False),
        "text_pooled": text.pooled.astype(np.float32, copy=False),
        "prompt_valid": np.ones(len(text.prompts), dtype=bool),
        "prune_low": np.array([p["prune_low"]], dtype=np.float32),
        "prune_high": np.array([p["prune_high"]], dtype=np.float32),
        "prune_beta": np.array([p["prune_beta"]], dtype=np.float32),
        "min_keep": np.array([max(1, int(min_keep))], dtype=np.int64),
    }


def outputs_from_list(values: Sequence[np.ndarray], image_hw: tuple[int, int]) -> RawOutputs:
    """RawOutputs from the graph's outputs in ``io_spec.IMAGE_OUTPUTS`` order."""
    named = dict(zip(io_spec.names(io_spec.IMAGE_OUTPUTS), values))
    return RawOutputs(
        prompt_scores=named["prompt_scores"],
        boxes=named["boxes"],
        masks=named["masks"],
        query_valid=named["query_valid"].astype(bool),
        kept=named["kept"],
        image_size=(int(image_hw[0]), int(image_hw[1])),
    )


def feed_specs(
    feed: dict, accepts_visual: bool, requires_visual: bool, what: Any
) -> tuple[io_spec.TensorSpec, ...]:
    """The input contract a feed follows: with point/box prompts (``visual_*``) or without;
    a clear error when the backend cannot take them."""
    if "visual_boxes" not in feed and "visual_valid" not in feed:
        if requires_visual:
            raise ValueError(
                f"{what} takes point/box prompts: feed visual_boxes/visual_valid (all invalid "
                "for none), as Segmenter does"
            )
        return io_spec.IMAGE_INPUTS
    if not accepts_visual:
        raise ValueError(
            f"{what} has no point/box prompt inputs: export the graph with `mobius export "
            "--visual` (the model needs a trained visual prompter)"
        )
    return io_spec.VISUAL_GRAPH_INPUTS
