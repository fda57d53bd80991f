"""A test double of the node's model: the real ``Segmenter`` and post-processing over a backend
that finds one object per prompt, and a text source whose encoding a test can hold open.

``install(monkeypatch_or_module)`` makes ``mobius_ros.node.load_model`` return it, so a
:class:`~mobius_ros.node.SegmentationNode` runs in this process (or in a child started with
``python -c``) without weights, and a test decides when encoding and inference finish
instead of depending on how fast the machine is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mobius_core.inference.prompts import TextArrays
from mobius_core.inference.segmenter import Segmenter
from mobius_core.postprocess import PostProcessor, RawOutputs
from mobius_ros.budget import Level
from mobius_ros.model import LoadedModel

SIZE = 64  # network input short side


class GatedText:
    """Encodes any prompts to zeros; a prompt starting with ``slow`` waits for ``gate``."""

    dim = 8

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.waiting = threading.Event()  # set while an encoding waits on the gate
        self.calls: list[tuple[str, ...]] = []

    def encode(self, prompts: Sequence[str]) -> TextArrays:
        prompts = tuple(prompts)
        self.calls.append(prompts)
        if any(p.startswith("slow") for p in prompts):
            self.waiting.set()
            self.gate.wait(120)
            self.waiting.clear()
        k = len(prompts)
        return TextArrays(np.zeros((k, 1, self.dim), np.float32), np.ones((k, 1), bool),
                          np.zeros((k, self.dim), np.float32), prompts)  # fmt: skip


class OnePerPrompt:
    """A backend: query i holds prompt i's object, a box in the i-th vertical strip of the
    image. ``on_infer(feed)`` runs inside each inference (after the segmenter has taken its
    prompts), where a test can change the prompts or hold the frame."""

    name = "fake"
    layers = 1
    text_dim = 0
    input_hw = (SIZE, SIZE)
    fixed_hw = max_hw = None
    accepts_visual = requires_visual = False

    def __init__(self) -> None:
        self.meta: dict[str, str] = {}
        self.on_infer: Callable[[dict[str, np.ndarray]], None] | None = None
        self.frames = 0

    def infer(self, feed: dict[str, np.ndarray]) -> RawOutputs:
        self.frames += 1
        if self.on_infer is not None:
            self.on_infer(feed)
        k = int(feed["prompt_valid"].shape[0])
        _, _, h, w = feed["image"].shape
        scores = np.eye(k, dtype=np.float32)[None] * 0.9  # [1,Q=K,K]
        boxes = np.zeros((1, k, 4), np.float32)
        masks = np.full((1, k, h // 4, w // 4), -10.0, np.float32)
        for i in range(k):
            boxes[0, i] = ((i + 0.5) / k, 0.5, 0.5 / k, 0.5)  # cxcywh, normalised
            x0, x1 = int((i + 0.25) / k * (w // 4)), max(int((i + 0.75) / k * (w // 4)), 1)
            masks[0, i, h // 16 : 3 * h // 16, x0:x1] = 10.0
        return RawOutputs(scores, boxes, masks, np.ones((1, k), bool),
                          np.full((1, 2), k, np.int64), (h, w))  # fmt: skip


def loaded_model(p: Any, text: GatedText | None = None, backend: OnePerPrompt | None = None):
    """A ``LoadedModel`` as ``mobius_ros.model.load_model`` returns, for params ``p``."""
    backend = backend or OnePerPrompt()
    seg = Segmenter(backend, text or GatedText(), SIZE,
                    post=PostProcessor(p.score_threshold, p.max_instances))  # fmt: skip
    return LoadedModel(seg, [SIZE], 1.0, Level(SIZE, None, 1), "fake model (test double)")


def install(target: Any, text: GatedText | None = None, backend: OnePerPrompt | None = None):
    """Make the node load the fake: ``target`` is pytest's ``monkeypatch`` or None (patch the
    module for good, in a child process). Returns (text, backend)."""
    import mobius_ros.node as node_module

    text, backend = text or GatedText(), backend or OnePerPrompt()

    def load(p: Any) -> LoadedModel:
        return loaded_model(p, text, backend)

    if target is None:
        node_module.load_model = load
    else:
        target.setattr(node_module, "load_model", load)
    return text, backend
