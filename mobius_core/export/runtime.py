"""Runtime backends behind one interface, and the ``Segmenter`` that drives any of them.

``torch`` (eager PyTorch, CPU or GPU), ``onnxruntime`` (CPU; the CI default) and
``tensorrt`` (NVIDIA) all take the same feed (``io_spec.IMAGE_INPUTS``) and return the same
:class:`~mobius_core.postprocess.RawOutputs`. Preprocessing (``imageops.preprocess``) and
post-processing (``postprocess.PostProcessor``) are shared, so the backends print the same
instances. This module, ``onnxruntime``'s backend and ``tensorrt``'s backend import neither
torch nor timm: with prompt embeddings from a file or the exported text graph, a deployed
robot needs no PyTorch.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..imageops import preprocess
from ..postprocess import Instances, PostProcessor, RawOutputs
from . import io_spec

BACKENDS = ("torch", "onnxruntime", "tensorrt")
ALIASES = {"ort": "onnxruntime", "trt": "tensorrt", "pytorch": "torch"}


def backend_name(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; use one of {BACKENDS} (or ort, trt)")
    return name


# ---------------------------------------------------------------------------------------------
# Prompt embeddings (the text side), as NumPy


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


class TextSource(Protocol):
    """Encodes prompts to :class:`TextArrays` (validated, cached by the implementation)."""

    dim: int

    def encode(self, prompts: Sequence[str]) -> TextArrays: ...


class TorchTextSource:
    """The model's own text encoder (validation, limits and embedding cache included).

    ``batch_size`` new prompts go through the encoder per call (padded, the padding masked
    out), which is what makes a long prompt list cheap: ``benchmarks/prompt_encoding.py``."""

    def __init__(self, text_encoder: Any, batch_size: int = 8) -> None:
        self.encoder, self.batch_size = text_encoder, batch_size
        self.dim = int(text_encoder.dim)

    def encode(self, prompts: Sequence[str]) -> TextArrays:
        emb = self.encoder.encode(list(prompts), batch_size=self.batch_size)
        return TextArrays.from_embeddings(emb)


class OnnxTextSource:
    """The exported text graph and its tokenizer (``tokenizers``; no torch, no transformers).

    Prompts run ``batch_size`` at a time, sorted by token count (each batch padded to its
    longest, the padding masked), then go back to the order asked for. A prompt longer than
    the graph's token limit is refused, as the torch encoder refuses it (never truncated)."""

    def __init__(self, model_path: str | Path, max_prompts: int = 256, batch_size: int = 8) -> None:
        from tokenizers import Tokenizer

        meta = io_spec.read_metadata(model_path)
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
        self.session = _ort_session(model_path)
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

    def encode(self, prompts: Sequence[str]) -> TextArrays:
        if tuple(p.strip() for p in prompts) != self.arrays.prompts:
            raise ValueError(
                f"this embeddings file holds the prompts {list(self.arrays.prompts)[:5]}...; "
                "other prompts need a text encoder (`--text-model text.onnx`) or a new "
                "file from `mobius embed`"
            )
        return self.arrays


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


# ---------------------------------------------------------------------------------------------
# Image-graph backends


class Backend(Protocol):
    name: str
    layers: int

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


def _ort_session(path: str | Path, providers: Sequence[str] | None = None, threads: int = 0):
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model {path} does not exist; write it with `mobius export`")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(
            str(path), options, providers=list(providers or ["CPUExecutionProvider"])
        )
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ValueError(
            f"{path} cannot be loaded by onnxruntime ({str(exc)[:200]}); the file is corrupt "
            "or not an exported MOBIUS graph: re-export it with `mobius export`"
        ) from exc


class OnnxRuntimeBackend:
    """An exported image graph in onnxruntime (CPU by default)."""

    name = "onnxruntime"

    def __init__(
        self, model_path: str | Path, providers: Sequence[str] | None = None, threads: int = 0
    ) -> None:
        self.path = Path(model_path)
        self.meta = io_spec.read_metadata(self.path)
        if self.meta.get(io_spec.META_FORMAT) != io_spec.FORMAT_VERSION:
            raise ValueError(
                f"{self.path} is not a MOBIUS image graph of format {io_spec.FORMAT_VERSION} "
                f"(metadata {self.meta.get(io_spec.META_FORMAT)!r}); re-export it"
            )
        self.session = _ort_session(self.path, providers, threads)
        got = [i.name for i in self.session.get_inputs()]
        self.visual = got == io_spec.names(io_spec.VISUAL_GRAPH_INPUTS)
        self.requires_visual = self.visual  # its visual inputs are always fed
        if got != io_spec.names(io_spec.IMAGE_INPUTS) and not self.visual:
            raise ValueError(f"{self.path} has inputs {got}, not the io_spec image inputs")
        self.layers = int(self.meta.get(io_spec.META_LAYERS, 0))
        self.text_dim = int(self.meta.get(io_spec.META_TEXT_DIM, 0))
        self.input_hw = tuple(json.loads(self.meta.get(io_spec.META_INPUT_SIZE, "[0, 0]")))
        shape = self.session.get_inputs()[0].shape
        self.fixed_hw = (
            (int(shape[2]), int(shape[3])) if all(isinstance(s, int) for s in shape[2:]) else None
        )

    def infer(self, feed: dict[str, np.ndarray]) -> RawOutputs:
        io_spec.check_feed(feed, feed_specs(feed, self.visual, self.visual, self.path))
        hw = feed["image"].shape[2:]
        if self.fixed_hw is not None and tuple(hw) != self.fixed_hw:
            raise ValueError(
                f"{self.path} was exported for {self.fixed_hw[0]}x{self.fixed_hw[1]} inputs, "
                f"got {hw[0]}x{hw[1]}; pad to that size or export with --dynamic-hw"
            )
        return outputs_from_list(self.session.run(None, feed), hw)


class TorchBackend:
    """The eager model behind the same feed (the reference the others are checked against)."""

    name = "torch"

    def __init__(self, model: Any, schedule: str = "sigmoid", device: str | None = None) -> None:
        import torch

        from .onnx import ImageGraph

        self.torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.graph = ImageGraph(model.to(self.device), schedule).eval()
        self.layers = int(model.decoder.num_layers)
        self.text_dim = int(model.text_encoder.dim)
        self.visual = model.visual_prompter is not None and bool(model.visual_prompter_trained)

    def infer(self, feed: dict[str, np.ndarray]) -> RawOutputs:
        specs = feed_specs(feed, self.visual, False, "the torch model")
        io_spec.check_feed(feed, specs)
        torch = self.torch
        args = [
            torch.from_numpy(np.ascontiguousarray(feed[n])).to(self.device)
            for n in io_spec.names(specs)
        ]
        with torch.no_grad():
            values = [v.cpu().numpy() for v in self.graph(*args)]
        return outputs_from_list(values, feed["image"].shape[2:])


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


def load_backend(name: str, model: str | Path | None = None, **kwargs: Any) -> Backend:
    """The backend ``name`` on ``model`` (an ONNX file, an engine file; for ``torch`` a
    Mobius module passed as ``torch_model=``)."""
    name = backend_name(name)
    if name == "torch":
        if "torch_model" not in kwargs:
            raise ValueError("the torch backend runs a built model; pass torch_model=")
        return TorchBackend(kwargs["torch_model"], kwargs.get("schedule", "sigmoid"))
    if model is None:
        raise ValueError(f"the {name} backend needs --model (an .onnx file or an engine)")
    if name == "onnxruntime":
        return OnnxRuntimeBackend(model, kwargs.get("providers"), kwargs.get("threads", 0))
    from .tensorrt import TensorRTBackend

    return TensorRTBackend(model)


# ---------------------------------------------------------------------------------------------
# The segmenter


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
    it (short side and long side capped) and zero-padded to it.
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
        self.last_times: StageTimes | None = None
        self.last_outputs: RawOutputs | None = None
        #: (prompts, task) the last call inferred with: a caller that labels results reads
        #: them here, not from ``prompts``, which a concurrent set_prompts may have changed
        self.last_prompts: tuple[tuple[str, ...], str] = ((), "")
        dim = getattr(backend, "text_dim", 0)
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
        arrays = self.text.encode(validate_prompts(prompts))
        with self._lock:
            self._prompts = (arrays, task)
        return time.perf_counter() - start

    @property
    def prompts(self) -> tuple[str, ...]:
        return self._prompts[0].prompts if self._prompts else ()

    @property
    def takes_visual_prompts(self) -> bool:
        """Whether the backend takes point/box prompts (a ``--visual`` graph, or torch)."""
        return bool(getattr(self.backend, "visual", False))

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
        batch, sizes = self.preprocess(images, self.short_side, self.max_size)
        if self.pad_to is not None:
            batch = pad_batch(batch, self.pad_to)
        feed = make_feed(batch, arrays, self.prune, self.min_keep)
        image_sizes = [im.shape[:2] for im in images]
        names: list[list[str]] = []
        if visual is not None or getattr(self.backend, "requires_visual", False):
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
