"""The one I/O contract of the exported image-side graph (and of the text-encoder graph).

The ONNX exporter, the TensorRT engine builder, every runtime backend and the ROS node read
names, dtypes and axes from here. Prompts and the pruning schedule are *inputs*: a robot
changes what it looks for, or how hard it prunes, without re-exporting or rebuilding.

Image graph
-----------
inputs
  image            float32 [B,3,H,W]  RGB in [0,1], resized and padded (bottom/right) to
                                       multiples of 32 by ``imageops.preprocess``;
                                       normalisation happens inside the graph
  text_tokens      float32 [K,T,Ct]   prompt token embeddings (padding rows zero)
  text_token_mask  bool    [K,T]      True where a token is real
  text_pooled      float32 [K,Ct]     pooled prompt embeddings
  prompt_valid     bool    [K]        False for padding prompts (their scores are 0)
  prune_low        float32 [1]        b_low of the schedule
  prune_high       float32 [1]        b_high (low = high = 0 turns pruning off)
  prune_beta       float32 [1]        steepness
  min_keep         int64   [1]        the least number of queries an image keeps
outputs
  prompt_scores    float32 [B,Q',K]   sigmoid class score of every (query, prompt) pair
  scores           float32 [B,Q']     best prompt score per query
  labels           int64   [B,Q']     best prompt index per query
  boxes            float32 [B,Q',4]   normalised cxcywh of the padded input
  masks            float32 [B,Q',H/4,W/4]  mask logits at stride 4
  query_valid      bool    [B,Q']     False for padding slots of images that kept fewer
  kept             int64   [B,L]      queries kept after each decoder layer

Visual-prompt image graph (``--visual``)
----------------------------------------
The image graph with two more inputs; the K text prompts are scored first, the V visual
prompts after them (``prompt_scores`` [B,Q',K+V]; a visual prompt's answer is its best query)
  visual_boxes     float32 [B,V,4]    point/box prompts, normalised xyxy of the padded input;
                                       a point is a box of zero size
  visual_valid     bool    [B,V]      False for padding slots

Text graph (``--text-encoder``)
-------------------------------
inputs   input_ids [K,T] int64, attention_mask [K,T] int64 (from the encoder's tokenizer)
outputs  text_tokens [K,T,Ct], text_pooled [K,Ct]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DTYPES = ("float32", "int64", "bool")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype and shape (ints are fixed, strings are
    named dynamic axes, shared by name across tensors)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    doc: str = ""

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


IMAGE_INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("image", "float32", ("batch", 3, "height", "width"), "RGB in [0,1], padded"),
    TensorSpec("text_tokens", "float32", ("prompts", "tokens", "text_dim")),
    TensorSpec("text_token_mask", "bool", ("prompts", "tokens")),
    TensorSpec("text_pooled", "float32", ("prompts", "text_dim")),
    TensorSpec("prompt_valid", "bool", ("prompts",)),
    TensorSpec("prune_low", "float32", (1,)),
    TensorSpec("prune_high", "float32", (1,)),
    TensorSpec("prune_beta", "float32", (1,)),
    TensorSpec("min_keep", "int64", (1,)),
)

IMAGE_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("prompt_scores", "float32", ("batch", "kept_queries", "prompts")),
    TensorSpec("scores", "float32", ("batch", "kept_queries")),
    TensorSpec("labels", "int64", ("batch", "kept_queries")),
    TensorSpec("boxes", "float32", ("batch", "kept_queries", 4)),
    TensorSpec("masks", "float32", ("batch", "kept_queries", "mask_height", "mask_width")),
    TensorSpec("query_valid", "bool", ("batch", "kept_queries")),
    TensorSpec("kept", "int64", ("batch", "layers")),
)

VISUAL_INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("visual_boxes", "float32", ("batch", "visual_prompts", 4), "xyxy, points 0-size"),
    TensorSpec("visual_valid", "bool", ("batch", "visual_prompts")),
)
VISUAL_GRAPH_INPUTS = IMAGE_INPUTS + VISUAL_INPUTS
VISUAL_GRAPH_OUTPUTS: tuple[TensorSpec, ...] = tuple(
    TensorSpec(s.name, s.dtype, tuple("scored_prompts" if d == "prompts" else d for d in s.shape))
    for s in IMAGE_OUTPUTS
)

TEXT_INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("input_ids", "int64", ("prompts", "tokens")),
    TensorSpec("attention_mask", "int64", ("prompts", "tokens")),
)

TEXT_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("text_tokens", "float32", ("prompts", "tokens", "text_dim")),
    TensorSpec("text_pooled", "float32", ("prompts", "text_dim")),
)

SIZE_DIVISOR = 32  # H and W of ``image`` are multiples of this
MASK_STRIDE = 4  # masks are at H/4 x W/4
NO_PRUNING = {"prune_low": 0.0, "prune_high": 0.0, "prune_beta": 1.0}

# metadata keys stored in the ONNX model (and checked by the runtimes)
META_FORMAT = "mobius.format"
META_CONFIG = "mobius.config"
META_SCHEDULE = "mobius.schedule"
META_TEXT_ENCODER = "mobius.text_encoder"
META_TEXT_DIM = "mobius.text_dim"
META_INPUT_SIZE = "mobius.input_size"
META_LAYERS = "mobius.decoder_layers"
META_PROMPTS = "mobius.default_prompts"
META_DEFAULT_PRUNING = "mobius.default_pruning"
META_VISUAL = "mobius.visual_prompts"  # "1" in graphs with the visual_* inputs
FORMAT_VERSION = "1"
# Bump when the exported graph changes for the same weights (cached exports are keyed on it).
# 2: pruned queries stay as self-attention context; box head on the chosen queries only.
GRAPH_VERSION = 2


def pruning_values(p: Any) -> dict[str, float]:
    """A pruning config (``low``, ``high``, ``beta``, ``min_keep``) under the graph's input
    names, as stored in ``META_DEFAULT_PRUNING``."""
    return {"prune_low": p.low, "prune_high": p.high, "prune_beta": p.beta, "min_keep": p.min_keep}


def split_pruning(values: dict[str, float]) -> tuple[dict[str, float], int]:
    """Pruning values -> (the ``prune_low/high/beta`` dict a ``Segmenter`` takes, min_keep)."""
    return {k: values[k] for k in ("prune_low", "prune_high", "prune_beta")}, int(
        values["min_keep"]
    )


def default_pruning(meta: dict[str, Any], p: Any) -> dict[str, float]:
    """The default pruning an exported graph records in its metadata, else config ``p``'s."""
    if META_DEFAULT_PRUNING in meta:
        return json.loads(meta[META_DEFAULT_PRUNING])
    return pruning_values(p)


def config_metadata(cfg: Any) -> dict[str, str]:
    """Metadata a runtime needs from the config: its name and default pruning."""
    return {
        META_CONFIG: cfg.name,
        META_DEFAULT_PRUNING: json.dumps(pruning_values(cfg.model.pruning)),
    }


def input_size(meta: dict[str, Any]) -> tuple[int, int]:
    """The (H, W) an exported graph was traced at (``META_INPUT_SIZE``; (0, 0) if absent)."""
    h, w = json.loads(meta.get(META_INPUT_SIZE, "[0, 0]"))
    return int(h), int(w)


def names(specs: tuple[TensorSpec, ...]) -> list[str]:
    return [s.name for s in specs]


def dynamic_axes(*groups: tuple[TensorSpec, ...]) -> dict[str, dict[int, str]]:
    """``torch.onnx.export``'s ``dynamic_axes`` for the given specs."""
    return {s.name: s.dynamic_axes() for g in groups for s in g if s.dynamic_axes()}


def check_feed(feed: dict, specs: tuple[TensorSpec, ...] = IMAGE_INPUTS) -> None:
    """Raise a ValueError naming the tensor when a feed (name -> numpy array) breaks the
    contract: missing or unknown names, wrong dtype, wrong rank or fixed size, or
    inconsistent named axes."""
    expected = {s.name: s for s in specs}
    missing = sorted(set(expected) - set(feed))
    unknown = sorted(set(feed) - set(expected))
    if missing or unknown:
        raise ValueError(f"graph inputs: missing {missing}, unknown {unknown}")
    axes: dict[str, tuple[int, str]] = {}
    for name, spec in expected.items():
        array = feed[name]
        dtype = str(getattr(array, "dtype", type(array).__name__))
        if dtype != spec.dtype:
            raise ValueError(f"input {name!r} must be {spec.dtype}, got {dtype}")
        shape = tuple(array.shape)
        if len(shape) != len(spec.shape):
            raise ValueError(f"input {name!r} must have shape {spec.shape}, got {shape}")
        for size, want in zip(shape, spec.shape):
            if isinstance(want, int) and size != want:
                raise ValueError(f"input {name!r} must have shape {spec.shape}, got {shape}")
            if isinstance(want, str):
                if want in axes and axes[want][0] != size:
                    other = axes[want][1]
                    raise ValueError(
                        f"axis {want!r} is {size} in {name!r} but {axes[want][0]} in {other!r}"
                    )
                axes.setdefault(want, (size, name))
    if "image" not in feed:
        return
    h, w = feed["image"].shape[2:]
    if h % SIZE_DIVISOR or w % SIZE_DIVISOR:
        raise ValueError(
            f"image height and width must be multiples of {SIZE_DIVISOR}, got {h}x{w} "
            "(preprocess pads them)"
        )


def tokenizer_path(text_graph: str | Path) -> Path:
    """Where the tokenizer of an exported text graph lives (``<stem>.tokenizer.json``)."""
    p = Path(text_graph)
    return p.with_name(p.stem + ".tokenizer.json")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``mobius.*`` metadata of an exported graph; a clear error for a broken file.

    Reads only the ``metadata_props`` of the ModelProto from the protobuf wire format (the
    graph, the bulk of the file, is skipped by its length, never parsed or read into
    memory), so it needs neither the ``onnx`` package nor a model's worth of memory. A file
    that does not parse as a ModelProto (truncated, overwritten) is a ValueError."""
    import mmap

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model {path} does not exist; write it with `mobius export`")
    try:
        with open(path, "rb") as f:
            if path.stat().st_size == 0:
                return {}  # an empty ModelProto, as onnx.load reads it
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _metadata_props(buf)
    except ValueError as exc:
        raise ValueError(
            f"{path} is not a readable ONNX model ({str(exc)[:200]}); re-export it with "
            "`mobius export`"
        ) from exc


# ModelProto fields (onnx.proto) and their wire types: 0 varint, 2 length-delimited
_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2}
_METADATA_PROPS = 14  # repeated StringStringEntryProto {1: key, 2: value}


def _varint(buf: Any, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def _fields(buf: Any, start: int, end: int):
    """(field number, wire type, value or (start, end) of the bytes) of one message."""
    i = start
    while i < end:
        tag, i = _varint(buf, i, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ValueError(f"field number 0 at byte {i}")
        if wire == 0:
            value, i = _varint(buf, i, end)
            yield number, wire, value
            continue
        if wire == 2:
            n, i = _varint(buf, i, end)
            span, i = (i, i + n), i + n
        elif wire in (1, 5):
            span, i = (i, i + (8 if wire == 1 else 4)), i + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"wire type {wire} of field {number}")
        if i > end:
            raise ValueError(f"field {number} runs past the end ({i} > {end} bytes)")
        yield number, wire, span


def _metadata_props(buf: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for number, wire, value in _fields(buf, 0, len(buf)):
        if _MODEL_FIELDS.get(number, wire) != wire:
            raise ValueError(f"field {number} has wire type {wire}")
        if number != _METADATA_PROPS:
            continue
        entry = {1: "", 2: ""}
        for n, w, span in _fields(buf, *value):
            if n in entry:
                if w != 2:
                    raise ValueError(f"metadata entry field {n} has wire type {w}")
                entry[n] = bytes(buf[span[0] : span[1]]).decode("utf-8")
        out[entry[1]] = entry[2]
    return out
