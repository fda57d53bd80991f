"""Prompt lists and their embeddings as NumPy: one validation for every text source and
backend (:func:`validate_prompts`), and :class:`TextArrays`, what the image graph takes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def validate_prompts(prompts: Sequence[str], max_prompts: int = 256, max_chars: int = 256):
    """Stripped prompts; a ValueError naming the problem and the fix otherwise."""
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, not one string; split it on ','")
    out = [str(p).strip() for p in prompts]
    if not out:
        raise ValueError("the prompt list is empty; give at least one prompt, e.g. 'person'")
    if len(out) > max_prompts:
        raise ValueError(f"{len(out)} prompts exceed the limit of {max_prompts}; split the list")
    for i, p in enumerate(out):
        if not p:
            raise ValueError(f"prompt {i} is empty; remove it")
        if len(p) > max_chars:
            raise ValueError(f"prompt {i} has {len(p)} characters, over {max_chars}; shorten it")
    dup = sorted({p for p in out if out.count(p) > 1})
    if dup:
        raise ValueError(f"duplicate prompts {dup}; give each prompt once")
    return out


@dataclass
class TextArrays:
    """Prompt embeddings as the graph takes them: tokens [K,T,Ct] float32, token_mask [K,T]
    bool, pooled [K,Ct] float32, and the K prompt strings."""

    tokens: np.ndarray
    token_mask: np.ndarray
    pooled: np.ndarray
    prompts: tuple[str, ...]

    def __post_init__(self) -> None:
        k = len(self.prompts)
        if self.tokens.ndim != 3 or self.token_mask.shape != self.tokens.shape[:2]:
            raise ValueError(
                f"text tokens {self.tokens.shape} and mask {self.token_mask.shape} do not match"
            )
        if self.pooled.shape != (self.tokens.shape[0], self.tokens.shape[2]) or k != len(
            self.pooled
        ):
            raise ValueError(
                f"pooled {self.pooled.shape} does not fit tokens {self.tokens.shape} and "
                f"{k} prompts"
            )

    @property
    def dim(self) -> int:
        return int(self.pooled.shape[1])

    def save(self, path: str | Path) -> Path:
        """An ``.npz`` a torch-free runtime can load (atomic write)."""
        import io

        from ..atomic import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(
            buf,
            tokens=self.tokens,
            token_mask=self.token_mask,
            pooled=self.pooled,
            prompts=np.array(json.dumps(list(self.prompts))),
        )
        return atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> TextArrays:
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(
                    data["tokens"].astype(np.float32),
                    data["token_mask"].astype(bool),
                    data["pooled"].astype(np.float32),
                    tuple(json.loads(str(data["prompts"]))),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(
                f"{path} is not a prompt-embeddings file ({exc}); write one with `mobius embed`"
            ) from exc

    @classmethod
    def from_embeddings(cls, text: Any) -> TextArrays:
        """From the torch ``TextEmbeddings`` of ``model.encode_text``."""
        return cls(
            text.tokens.detach().float().cpu().numpy(),
            text.token_mask.detach().cpu().numpy().astype(bool),
            text.pooled.detach().float().cpu().numpy(),
            tuple(text.prompts),
        )
