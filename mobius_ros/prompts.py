"""Prompt state of the node: validate, encode once, swap atomically between frames.

A request is checked (count, length, empty strings, duplicates) and encoded before anything
changes; only then does the segmenter switch to it, under its lock, so the frame being
processed finishes with the old prompts and the next one uses the new. A failed request
leaves the old prompts in force and says why. One change encodes at a time: a caller that
must not wait (a parameter change on the executor thread) is refused with the reason while
another change encodes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from mobius_core.inference.prompts import validate_prompts
from mobius_core.inference.segmenter import Segmenter

from .params import MODES


@dataclass
class PromptResult:
    success: bool
    message: str
    encode_ms: float = 0.0


class PromptState:
    """The active prompts and mode of one segmenter."""

    def __init__(self, segmenter: Segmenter, max_prompts: int = 64, max_chars: int = 200) -> None:
        self.segmenter = segmenter
        self.max_prompts, self.max_chars = max_prompts, max_chars
        self.mode = "category"
        self.version = 0  # bumped at every successful change
        self._lock = threading.Lock()  # one change at a time

    @property
    def prompts(self) -> tuple[str, ...]:
        return self.segmenter.prompts

    def set(self, prompts: Sequence[str], mode: str = "", wait: bool = True) -> PromptResult:
        """Validate, encode and swap in ``prompts``. ``wait=False``: refuse at once, with the
        reason, while another change is encoding (instead of waiting for it)."""
        mode = mode.strip() or self.mode
        if mode not in MODES:
            return PromptResult(False, f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        try:
            clean = validate_prompts(list(prompts), self.max_prompts, self.max_chars)
        except ValueError as exc:
            return PromptResult(False, f"prompts rejected, the old ones stay: {exc}")
        if not self._lock.acquire(blocking=wait):
            return PromptResult(False, "a set_prompts request is being encoded; the prompts stay "
                                "as they are: try again when it has answered")  # fmt: skip
        try:
            try:
                seconds = self.segmenter.set_prompts(clean, mode)
            except Exception as exc:  # an encoder failure must not replace the old prompts
                return PromptResult(False, f"encoding failed, the old prompts stay: {exc}")
            self.mode = mode
            self.version += 1
        finally:
            self._lock.release()
        ms = seconds * 1e3
        return PromptResult(True, f"{len(clean)} prompts ({mode}) encoded in {ms:.1f} ms", ms)
