"""ONNX export of the image-side graph and of the text encoder (contract: ``io_spec``).

The image graph takes the prompt embeddings and the pruning schedule as inputs, so one
exported file serves every prompt set and every threshold setting. The text encoder is a
separate graph: a prompt change costs one text pass, never a re-export.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..atomic import atomic_write_bytes
from ..inference import io_spec
from ..inference.io_spec import GRAPH_VERSION, config_metadata, tokenizer_path  # noqa: F401 - re-exported
from ..inference.torch_backend import ImageGraph
from ..modeling.mobius import Mobius

DEFAULT_OPSET = 17
# GRAPH_VERSION (bump it when the graph changes for the same weights) lives in io_spec:
# mobius_core.bundle keys the cached exports on it without torch.


def example_inputs(
    model: Mobius,
    size: tuple[int, int],
    prompts: int = 3,
    tokens: int = 8,
    batch: int = 1,
    visual: int = 0,
) -> tuple[Tensor, ...]:
    """Dummy inputs in the contract's order (for tracing and tests); ``visual`` > 0 adds
    that many point/box prompts per image (the visual graph's inputs)."""
    h, w = (-(-s // io_spec.SIZE_DIVISOR) * io_spec.SIZE_DIVISOR for s in size)
    dim = model.text_encoder.dim
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(prompts, tokens, dtype=torch.bool)
    mask[:, tokens // 2 + 1 :] = False
    return (
        torch.rand(batch, 3, h, w, generator=g),
        torch.randn(prompts, tokens, dim, generator=g),
        mask,
        torch.nn.functional.normalize(torch.randn(prompts, dim, generator=g), dim=-1),
        torch.ones(prompts, dtype=torch.bool),
        torch.tensor([0.05]),
        torch.tensor([0.2]),
        torch.tensor([1.0]),
        torch.tensor([10], dtype=torch.int64),
    ) + (_example_visual(batch, visual, g) if visual else ())


def _example_visual(batch: int, count: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Half points, half boxes, the last slot padding."""
    lo = torch.rand(batch, count, 2, generator=g) * 0.5
    hi = lo + torch.rand(batch, count, 2, generator=g) * 0.5
    hi[:, ::2] = lo[:, ::2]  # every other prompt a point
    valid = torch.ones(batch, count, dtype=torch.bool)
    valid[:, -1] = count == 1
    return torch.cat([lo, hi], dim=-1), valid


def export_image_graph(
    model: Mobius,
    out: str | Path,
    size: tuple[int, int],
    metadata: dict[str, str] | None = None,
    schedule: str = "sigmoid",
    opset: int = DEFAULT_OPSET,
    dynamic_hw: bool = False,
    dynamo: bool = False,
    context: bool = True,
    visual: bool = False,
) -> Path:
    """Write the image graph to ``out`` (atomically). Batch and prompts are dynamic; H/W
    are fixed at ``size`` (rounded up to multiples of 32) unless ``dynamic_hw``; ``context``
    as ``PruneSchedule.context`` (a property of the graph, not an input); ``visual``: the
    graph with point/box prompt inputs (needs the model's trained visual prompter)."""
    if visual and not (model.visual_prompter is not None and model.visual_prompter_trained):
        raise ValueError(
            "--visual: this model has no trained visual prompter (see `mobius eval --task "
            "visual` in benchmarks/RESULTS.md for how one is trained)"
        )
    graph = ImageGraph(model, schedule, context).eval()
    inputs = example_inputs(model, size, visual=3 if visual else 0)
    in_specs = io_spec.VISUAL_GRAPH_INPUTS if visual else io_spec.IMAGE_INPUTS
    out_specs = io_spec.VISUAL_GRAPH_OUTPUTS if visual else io_spec.IMAGE_OUTPUTS
    axes = io_spec.dynamic_axes(in_specs, out_specs)
    if not dynamic_hw:
        axes["image"] = {k: v for k, v in axes["image"].items() if v not in ("height", "width")}
        axes["masks"] = {
            k: v for k, v in axes["masks"].items() if v not in ("mask_height", "mask_width")
        }
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            graph,
            inputs,
            buf,
            input_names=io_spec.names(in_specs),
            output_names=io_spec.names(out_specs),
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=dynamo,
        )
    meta = {
        io_spec.META_FORMAT: io_spec.FORMAT_VERSION,
        io_spec.META_SCHEDULE: schedule,
        io_spec.META_TEXT_DIM: str(model.text_encoder.dim),
        io_spec.META_TEXT_ENCODER: model.text_encoder.name,
        io_spec.META_LAYERS: str(model.decoder.num_layers),
        io_spec.META_INPUT_SIZE: json.dumps(list(inputs[0].shape[2:])),
        **({io_spec.META_VISUAL: "1"} if visual else {}),
        **(metadata or {}),
    }
    return _write_with_metadata(buf.getvalue(), out, meta)


class TextGraph(nn.Module):
    """input_ids, attention_mask -> text_tokens, text_pooled (the encoder's ``embed_ids``)."""

    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        if not hasattr(text_encoder, "embed_ids"):
            raise ValueError(
                f"{type(text_encoder).__name__} cannot be exported as a graph; export prompt "
                "embeddings instead (`mobius embed`)"
            )
        self.encoder = text_encoder.eval()

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder.embed_ids(input_ids, attention_mask)


def export_text_graph(text_encoder, out: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Write the text encoder graph and, beside it, its tokenizer (``<out>.tokenizer.json``)."""
    graph = TextGraph(text_encoder)
    batch = text_encoder.tokenize(["a red circle", "the leftmost blue square on the table"])
    ids = torch.from_numpy(batch["input_ids"])
    mask = torch.from_numpy(batch["attention_mask"])
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            graph,
            (ids, mask),
            buf,
            input_names=io_spec.names(io_spec.TEXT_INPUTS),
            output_names=io_spec.names(io_spec.TEXT_OUTPUTS),
            dynamic_axes=io_spec.dynamic_axes(io_spec.TEXT_INPUTS, io_spec.TEXT_OUTPUTS),
            opset_version=opset,
            dynamo=False,
        )
    out = Path(out)
    tokenizer = getattr(text_encoder.tokenizer, "backend_tokenizer", None)
    if tokenizer is None:
        raise ValueError("the text encoder has no fast tokenizer to ship beside its graph")
    atomic_write_bytes(tokenizer_path(out), tokenizer.to_str().encode())
    meta = {
        io_spec.META_FORMAT: io_spec.FORMAT_VERSION,
        io_spec.META_TEXT_ENCODER: text_encoder.name,
        io_spec.META_TEXT_DIM: str(text_encoder.dim),
        "mobius.max_tokens": str(text_encoder.max_tokens),
    }
    return _write_with_metadata(buf.getvalue(), out, meta)


def _write_with_metadata(data: bytes, out: str | Path, meta: dict[str, str]) -> Path:
    import onnx

    proto = onnx.load_from_string(data)
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    return atomic_write_bytes(out, proto.SerializeToString())


def export_config_model(
    cfg: Any, model: Mobius, out: str | Path, size: int, dynamic_hw: bool = False,
    opset: int = DEFAULT_OPSET, visual: bool = False,
) -> Path:  # fmt: skip
    """Export ``model`` built from ``cfg`` with the config's metadata and pruning schedule."""
    return export_image_graph(
        model, out, (size, size), config_metadata(cfg), cfg.model.pruning.schedule, opset,
        dynamic_hw, context=cfg.model.pruning.context, visual=visual,
    )  # fmt: skip


def _export_checkpoint(
    cfg: Any, checkpoint: Path, path: Path, size: int, dynamic_hw: bool, visual: bool
) -> Path:
    import warnings

    from ..build import build_model
    from ..training.checkpoint import load_checkpoint, load_model_weights

    model = build_model(cfg)
    load_model_weights(model, load_checkpoint(checkpoint), f"{checkpoint} (config {cfg.name})")
    with warnings.catch_warnings():  # the tracer's notes on constant shapes are expected
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return export_config_model(cfg, model.eval(), path, size, dynamic_hw, visual=visual)
