"""Prompt lists and their embeddings as NumPy: one validation for every text source and
backend (:func:`validate_prompts`), and :class:`TextArrays`, what the image graph takes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MAX_PROMPTS = 256
DEFAULT_MAX_CHARS = 200


class PromptError(ValueError):
    """A prompt list breaks a limit; the message names the prompt, the limit and the fix."""


def short(text: str, n: int = 40) -> str:
    """``text`` quoted, cut to about ``n`` characters for error messages."""
    return repr(text if len(text) <= n else text[: n - 3] + "...")


def validate_prompts(
    prompts: Any,
    max_prompts: int = DEFAULT_MAX_PROMPTS,
    max_chars: int = DEFAULT_MAX_CHARS,
    unique: bool = True,
) -> list[str]:
    """The one check of a prompt list, for every text source and backend (and, with
    ``unique=False``, for the text encoder in training, where a batch may repeat a referring
    expression). Returns the stripped prompts; raises :class:`PromptError` naming the prompt,
    the limit and the fix for: a bare string, something not a list, an empty list, more than
    ``max_prompts`` prompts, a non-string, an empty or whitespace-only prompt, one over
    ``max_chars`` characters, and (``unique``) a prompt given twice. Token limits belong to
    the encoder that counts tokens and are checked there."""
    if isinstance(prompts, str):
        raise PromptError(
            f"prompts must be a list of strings, got the single string {short(prompts)}; "
            "wrap it in a list (or split it on ',')"
        )
    try:
        prompts = list(prompts)
    except TypeError:
        raise PromptError(
            f"prompts must be a list of strings, got {type(prompts).__name__}"
        ) from None
    if not prompts:
        raise PromptError("the prompt list is empty; give at least one prompt, e.g. ['person']")
    if len(prompts) > max_prompts:
        raise PromptError(
            f"{len(prompts)} prompts exceed the limit of {max_prompts}; split the vocabulary "
            "into several sets or raise the limit (model.text_encoder.max_prompts, or the ROS "
            "node's max_prompts)"
        )
    out = []
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise PromptError(
                f"prompt {i} has type {type(p).__name__}, not str: {short(repr(p))}; "
                "give the prompt as text"
            )
        p = p.strip()
        if not p:
            raise PromptError(f"prompt {i} is empty or only whitespace; remove it")
        if len(p) > max_chars:
            raise PromptError(
                f"prompt {i} {short(p)} has {len(p)} characters, over the limit of "
                f"{max_chars}; shorten the prompt"
            )
        out.append(p)
    if unique:
        seen: set[str] = set()
        dup = sorted({p for p in out if p in seen or seen.add(p)})
        if dup:
            raise PromptError(f"duplicate prompts {dup}; give each prompt once")
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
