"""The ``Segmenter``: images + prompts -> Instances with any backend.

Preprocessing (``imageops.preprocess`` or the onnxruntime ``OrtPreprocessor``) and
post-processing (``postprocess.PostProcessor``) are shared, so every backend prints the same
instances.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..imageops import preprocess
from ..postprocess import Instances, PostProcessor, RawOutputs
from .backend import Backend, make_feed
from .prompts import TextArrays
from .text import TextSource


@dataclass
class StageTimes:
    """Seconds spent in each stage of one call."""

    preprocess: float
    inference: float
    postprocess: float


class Segmenter:
    """Images + prompts -> Instances with any backend; prompts swap atomically.

    prune: ``{"prune_low", "prune_high", "prune_beta"}`` or None (off); ``min_keep``.
    pad_to: the (H, W) of a graph exported for one size; images are resized to fit inside
    it (short side and long side capped) and zero-padded to it. A backend's ``max_hw`` caps
    the short and long side the same way at every call (``short_side`` may change).
    preprocessor: a callable like ``imageops.preprocess`` (the default), e.g. the
    onnxruntime ``OrtPreprocessor`` that computes the same thing faster.
    """

    def __init__(
        self,
        backend: Backend,
        text: TextSource,
        short_side: int,
        max_size: int = 1333,
        post: PostProcessor | None = None,
        prune: dict[str, float] | None = None,
        min_keep: int = 100,
        pad_to: tuple[int, int] | None = None,
        preprocessor: Any = None,
    ) -> None:
        self.backend = backend
        self.preprocess = preprocessor or preprocess
        self.text = text
        self.short_side, self.max_size = short_side, max_size
        self.post = post or PostProcessor()
        self.prune, self.min_keep = prune, min_keep
        self.pad_to = pad_to
        if pad_to is not None:  # a fixed-size graph: fit every image inside it
            self.short_side = min(short_side, *pad_to)
            self.max_size = min(max_size, max(pad_to))
        self._lock = threading.Lock()
        self._prompts: tuple[TextArrays, str] | None = None
        self.info: Any = None  # a ModelInfo where build_segmenter made it
        self.last_times: StageTimes | None = None
        self.last_outputs: RawOutputs | None = None
        #: (prompts, task) the last call inferred with: a caller that labels results reads
        #: them here, not from ``prompts``, which a concurrent set_prompts may have changed
        self.last_prompts: tuple[tuple[str, ...], str] = ((), "")
        dim = backend.text_dim
        if dim and text.dim and dim != text.dim:
            raise ValueError(
                f"the text encoder gives {text.dim}-d embeddings but the image graph takes "
                f"{dim}-d ones: they come from different models"
            )

    def set_prompts(self, prompts: Sequence[str], task: str = "category") -> float:
        """Encode and swap in a new prompt set; returns the encoding time in seconds. On an
        error the previous prompts stay in force."""
        from ..postprocess import TASKS

        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; use one of {TASKS}")
        start = time.perf_counter()
        arrays = self.text.encode(prompts)  # every text source validates (validate_prompts)
        with self._lock:
            self._prompts = (arrays, task)
        return time.perf_counter() - start

    def input_limits(self) -> tuple[int, int]:
        """(short side, long-side cap) images are resized to now: ``short_side`` and
        ``max_size``, capped by the backend's ``max_hw`` where it has one (an engine's
        profile), so every frame stays inside it."""
        short_side, max_size = self.short_side, self.max_size
        max_hw = self.backend.max_hw
        if max_hw is not None:
            short_side, max_size = min(short_side, *max_hw), min(max_size, max(max_hw))
        return short_side, max_size

    @property
    def prompts(self) -> tuple[str, ...]:
        return self._prompts[0].prompts if self._prompts else ()

    @property
    def takes_visual_prompts(self) -> bool:
        """Whether the backend takes point/box prompts (a ``--visual`` graph, or torch)."""
        return bool(self.backend.accepts_visual)

    def __call__(
        self,
        images: Sequence[np.ndarray],
        visual: Sequence[Sequence[Sequence[float]]] | None = None,
    ) -> list[Instances]:
        """Instances of each image for the current text prompts and, with ``visual``, one
        more instance per point/box prompt (per image: ``(x, y)`` points or ``(x0, y0, x1,
        y1)`` boxes in that image's pixels), labelled after the text prompts with the
        prompt written out (``"point (x, y)"``, ``"box (x0, y0, x1, y1)"``)."""
        with self._lock:
            current = self._prompts
        if current is None:
            raise ValueError("no prompts set; call set_prompts first")
        arrays, task = current
        t0 = time.perf_counter()
        short_side, max_size = self.input_limits()
        batch, sizes = self.preprocess(images, short_side, max_size)
        if self.pad_to is not None:
            batch = pad_batch(batch, self.pad_to)
        feed = make_feed(batch, arrays, self.prune, self.min_keep)
        image_sizes = [im.shape[:2] for im in images]
        names: list[list[str]] = []
        if visual is not None or self.backend.requires_visual:
            if visual is not None and not self.takes_visual_prompts:
                raise ValueError(
                    "point/box prompts need a graph exported with `mobius export --visual` "
                    "(or the torch backend) from a model with a trained visual prompter"
                )
            prompts = list(visual) if visual is not None else [[] for _ in images]
            if len(prompts) != len(images):
                raise ValueError(f"{len(prompts)} visual prompt lists for {len(images)} images")
            boxes, valid, names = visual_feed(prompts, image_sizes, sizes, batch.shape[2:])
            feed.update(visual_boxes=boxes, visual_valid=valid)
        t1 = time.perf_counter()
        raw = self.backend.infer(feed)
        t2 = time.perf_counter()
        k = len(arrays.prompts)
        text_raw = replace(raw, prompt_scores=raw.prompt_scores[..., :k])
        result = self.post(text_raw, task, image_sizes, sizes, arrays.prompts)
        if any(names):
            v = raw.prompt_scores.shape[-1] - k
            vis_raw = replace(raw, prompt_scores=raw.prompt_scores[..., k:])
            padded = [n + [""] * (v - len(n)) for n in names]
            for i, got in enumerate(self.post(vis_raw, "referring", image_sizes, sizes, padded[0])):
                keep = [j for j, label in enumerate(got.labels) if label < len(names[i])]
                answers = got.select(keep)
                answers.label_texts = [names[i][int(j)] for j in answers.labels]
                result[i] = result[i].concat(answers, label_offset=k)
        t3 = time.perf_counter()
        self.last_times = StageTimes(t1 - t0, t2 - t1, t3 - t2)
        self.last_outputs = raw
        self.last_prompts = (arrays.prompts, task)
        return result


def visual_prompt_label(values: Sequence[float]) -> str:
    """How a point/box prompt is written in instance labels: ``point (x, y)``, ``box (...)``."""
    if len(values) == 2:
        return "point ({:.0f}, {:.0f})".format(*values)
    if len(values) == 4:
        return "box ({:.0f}, {:.0f}, {:.0f}, {:.0f})".format(*values)
    raise ValueError(f"a visual prompt is (x, y) or (x0, y0, x1, y1), got {list(values)}")


def visual_prompt_box(
    values: Sequence[float], height: int, width: int
) -> tuple[tuple[float, float, float, float], str]:
    """A point ``(x, y)`` or box ``(x0, y0, x1, y1)`` in pixels of a ``height`` x ``width``
    image -> (xyxy box, a point as a zero-size one; its label); ValueError saying what is
    wrong when it is malformed, not finite or not inside the image."""
    label = visual_prompt_label(values)
    box = [float(c) for c in values] * (2 if len(values) == 2 else 1)
    if not all(np.isfinite(box)):
        raise ValueError(f"{label}: coordinates must be finite numbers")
    x0, y0, x1, y1 = box
    if not (0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height):
        raise ValueError(
            f"{label} is outside the {width}x{height} image or its corners are swapped "
            "(x1 < x0 or y1 < y0): give pixel coordinates inside it"
        )
    return (x0, y0, x1, y1), label


def visual_feed(
    prompts: Sequence[Sequence[Sequence[float]]],
    image_sizes: Sequence[tuple[int, int]],
    input_sizes: Sequence[tuple[int, int]],
    padded: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """Point/box prompts in each image's pixels -> (visual_boxes [B,V,4] normalised xyxy of
    the padded input, visual_valid [B,V], the prompts written out per image). V >= 1."""
    v = max([len(p) for p in prompts] + [1])
    boxes = np.zeros((len(prompts), v, 4), dtype=np.float32)
    valid = np.zeros((len(prompts), v), dtype=bool)
    names: list[list[str]] = []
    for i, (plist, (h, w), (ih, iw)) in enumerate(zip(prompts, image_sizes, input_sizes)):
        sx, sy = iw / w / padded[1], ih / h / padded[0]
        names.append([])
        for j, p in enumerate(plist):
            (x0, y0, x1, y1), label = visual_prompt_box(p, h, w)
            names[i].append(label)
            boxes[i, j] = [x0 * sx, y0 * sy, x1 * sx, y1 * sy]
            valid[i, j] = True
    return boxes, valid, names


def pad_batch(batch: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Zero-pad a preprocessed batch to a fixed (H, W) (graphs exported for one size)."""
    h, w = batch.shape[2:]
    if (h, w) == tuple(size):
        return batch
    if h > size[0] or w > size[1]:
        raise ValueError(
            f"the preprocessed image is {h}x{w}, larger than the graph's {size[0]}x{size[1]}; "
            "use a smaller --size or export for a larger one"
        )
    out = np.zeros(batch.shape[:2] + tuple(size), dtype=batch.dtype)
    out[:, :, :h, :w] = batch
    return out
