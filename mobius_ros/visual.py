"""Point and box prompts of the node: validate, keep, and follow the prompted objects.

A click (geometry_msgs/PointStamped from an image viewer, in image pixels) or a point/box
from the ``set_prompts`` service becomes an active visual prompt. Each frame the segmenter
answers every active prompt with one instance; the prompt then follows its answer (its box
becomes the answer's box), so the operator's "that one" stays on the object while it moves.
A prompt is checked against the latest image (inside it, same frame id, not older than
``max_age_s``) before anything changes; a refused one says why and leaves the others alone.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mobius_core.inference.segmenter import visual_prompt_box, visual_prompt_label

from .prompts import PromptResult


@dataclass
class VisualPrompt:
    """box: the prompt in image pixels, xyxy (a point: zero size); label: how it was given,
    e.g. ``"point (120, 80)"``, which its instances carry."""

    box: tuple[float, float, float, float]
    label: str


@dataclass
class FrameInfo:
    """What a prompt is checked against: the latest image's frame id, size and stamp."""

    frame_id: str
    height: int
    width: int
    stamp_s: float


class VisualPromptState:
    """The active point/box prompts of one node (thread-safe: service, subscription and
    worker threads all use it)."""

    def __init__(self, max_prompts: int = 8, max_age_s: float = 5.0, follow: bool = True) -> None:
        self.max_prompts, self.max_age_s, self.follow = max_prompts, max_age_s, follow
        self.frame: FrameInfo | None = None
        self._prompts: list[VisualPrompt] = []
        self._lock = threading.Lock()

    @property
    def prompts(self) -> list[VisualPrompt]:
        with self._lock:
            return list(self._prompts)

    def saw_frame(self, frame: FrameInfo) -> None:
        with self._lock:
            self.frame = frame

    def _check(
        self, values: Sequence[float], frame_id: str | None, stamp_s: float | None
    ) -> VisualPrompt:
        """One prompt checked against the latest frame, or ValueError saying what is wrong."""
        what = visual_prompt_label(values)
        frame = self.frame
        if frame is None:
            raise ValueError(f"{what}: no image received yet, so there is nothing to point at")
        if frame_id and frame.frame_id and frame_id != frame.frame_id:
            raise ValueError(
                f"{what} is in frame {frame_id!r} but the images are in {frame.frame_id!r}: "
                "click on this node's camera image (its frame id)"
            )
        if stamp_s is not None and stamp_s > 0 and frame.stamp_s - stamp_s > self.max_age_s:
            raise ValueError(
                f"{what} is {frame.stamp_s - stamp_s:.1f} s older than the latest image (limit "
                f"{self.max_age_s:.1f} s): the scene has moved on, click again"
            )
        box, _ = visual_prompt_box(values, frame.height, frame.width)
        return VisualPrompt(box, what)

    def click(
        self, x: float, y: float, frame_id: str = "", stamp_s: float | None = None
    ) -> PromptResult:
        """Add a point prompt (the oldest goes when ``max_prompts`` are active)."""
        try:
            prompt = self._check((x, y), frame_id, stamp_s)
        except ValueError as exc:
            return PromptResult(False, f"click ignored: {exc}")
        with self._lock:
            self._prompts = (self._prompts + [prompt])[-self.max_prompts :]
            count = len(self._prompts)
        return PromptResult(True, f"{prompt.label} added ({count} visual prompts active)")

    def replace(self, points: Sequence[float], boxes: Sequence[float]) -> PromptResult:
        """Replace the active prompts with ``points`` (x, y pairs) and ``boxes`` (xyxy
        quadruples), all in image pixels; nothing changes if any of them is refused."""
        if len(points) % 2 or len(boxes) % 4:
            return PromptResult(
                False,
                f"points must be x, y pairs and boxes x0, y0, x1, y1 quadruples; got "
                f"{len(points)} and {len(boxes)} numbers",
            )
        given = [points[i : i + 2] for i in range(0, len(points), 2)]
        given += [boxes[i : i + 4] for i in range(0, len(boxes), 4)]
        if len(given) > self.max_prompts:
            return PromptResult(
                False,
                f"{len(given)} visual prompts, at most {self.max_prompts} (max_visual_prompts)",
            )
        try:
            new = [self._check(v, None, None) for v in given]
        except ValueError as exc:
            return PromptResult(False, f"visual prompts rejected, the old ones stay: {exc}")
        with self._lock:
            self._prompts = new
        return PromptResult(True, f"{len(new)} visual prompts active")

    def clear(self) -> None:
        with self._lock:
            self._prompts = []

    @staticmethod
    def segmenter_prompts(prompts: Sequence[VisualPrompt]) -> list[list[float]]:
        """Prompts as the segmenter takes them: points as (x, y), boxes as xyxy."""
        out = []
        for p in prompts:
            x0, y0, x1, y1 = p.box
            out.append([x0, y0] if (x0, y0) == (x1, y1) else [x0, y0, x1, y1])
        return out

    def answered(self, prompts: list[VisualPrompt], boxes: np.ndarray) -> None:
        """After a frame: each prompt of ``prompts`` (those the frame was run with) follows
        its answer's box [V,4] (a prompt removed or replaced meanwhile is left alone)."""
        if not self.follow:
            return
        with self._lock:
            for p, box in zip(prompts, boxes):
                for i, q in enumerate(self._prompts):
                    if q is p:
                        b = tuple(float(v) for v in box)
                        if b[2] > b[0] and b[3] > b[1]:
                            self._prompts[i] = VisualPrompt(b, p.label)  # type: ignore[arg-type]
