"""Per-component FLOP accounting, as in the paper's Tab. 10 and Tab. 12.

One multiply-add counts as one FLOP (fvcore's convention: ResNet-50 at 224 is 4.1 G).
Counted: convolutions, linear layers, matrix products, einsum and attention (through
``torch.utils.flop_counter``), plus bilinear sampling in deformable attention and bilinear
upsampling at 4 multiply-adds per output element. Not counted (as in fvcore): element-wise
operations, normalisation, softmax and activations.

Components: ``vision_encoder`` (backbone), ``pixel_decoder`` (input projections, S6,
encoder blocks with their text fusion, mask-feature map), ``modality_fusion`` (the part of
the pixel decoder spent in text-image cross-attention), ``decoder`` (query selection,
decoder layers and all heads). ``total`` = vision_encoder + pixel_decoder + decoder. The
text encoder and the text projection are excluded, as in the paper: their output is cached.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from .modeling.fusion import TextImageFusion
from .modeling.mobius import Mobius
from .modeling.pruning import PruneSchedule
from .types import TextEmbeddings
from .vocab import prompt_set

aten = torch.ops.aten


def _four_madds_per_output(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    # reported in FlopCounterMode's unit (2 FLOPs per multiply-add)
    return 2 * 4 * math.prod(out_shape)


_EXTRA_FORMULAS = {
    aten.grid_sampler_2d: _four_madds_per_output,
    aten.upsample_bilinear2d: _four_madds_per_output,
}


def parse_size(size: int | str | tuple[int, int]) -> tuple[int, int]:
    """``800`` -> (800, 800); ``"384x640"`` -> (384, 640) as (H, W)."""
    if isinstance(size, tuple):
        return size
    text = str(size).lower()
    parts = text.split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"size {size!r} is not N or HxW (e.g. 800 or 384x640)") from None
    if len(dims) == 1:
        dims = (dims[0], dims[0])
    if len(dims) != 2 or min(dims) < 32:
        raise ValueError(f"size {size!r} must be N or HxW with both sides >= 32")
    return dims  # type: ignore[return-value]


def dummy_text(model: Mobius, num_prompts: int) -> TextEmbeddings:
    """Real text embeddings of ``num_prompts`` COCO names (the text cost itself is excluded)."""
    return model.encode_text(prompt_set(num_prompts))


def count_flops(
    model: Mobius,
    size: int | str | tuple[int, int] = 800,
    num_prompts: int = 80,
    kept: list[int] | None = None,
    text: TextEmbeddings | None = None,
    context: bool = True,
) -> dict[str, Any]:
    """GFLOPs per component of one forward pass at ``size`` (batch 1, eval mode).

    kept: a kept-query trajectory (one count per decoder layer) to cost the decoder with
    pruning; None runs all queries through every layer.
    context: pruned queries stay as self-attention keys/values (PruneSchedule.context).
    """
    h, w = parse_size(size)
    if h % 32 or w % 32:
        raise ValueError(f"input size {h}x{w} must be a multiple of 32 on both sides")
    num_layers = model.decoder.num_layers
    prune = None
    if kept is not None:
        if len(kept) != num_layers:
            raise ValueError(
                f"--kept needs one count per decoder layer ({num_layers}), got {len(kept)}"
            )
        if any(k < 1 for k in kept) or any(b > a for a, b in zip(kept, kept[1:])):
            raise ValueError(f"--kept must be positive and non-increasing, got {kept}")
        prune = PruneSchedule.fixed(kept, context=context)
    was_training = model.training
    model.eval()
    if text is None:
        text = dummy_text(model, num_prompts)
    images = torch.zeros(1, 3, h, w)
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as fc:
            out = model(images, text, prune=prune)
    finally:
        model.train(was_training)
    counts = fc.get_flop_counts()
    root = type(model).__name__

    def giga(path: str) -> float:
        return sum(counts.get(f"{root}.{path}", {}).values()) / 2e9

    fusion = sum(giga(name) for name, m in model.named_modules() if isinstance(m, TextImageFusion))
    result = {
        "vision_encoder": giga("backbone"),
        "pixel_decoder": giga("pixel_decoder"),
        "modality_fusion": fusion,
        "decoder": giga("query_selection") + giga("decoder"),
    }
    result["total"] = result["vision_encoder"] + result["pixel_decoder"] + result["decoder"]
    # anything counted outside the components and the excluded text projection
    unassigned = sum(counts.get("Global", {}).values()) / 2e9 - giga("text_proj") - result["total"]
    return {
        **{k: round(v, 4) for k, v in result.items()},
        "size": [h, w],
        "prompts": text.num_prompts,
        "kept": out.kept[0].tolist(),
        "unassigned": round(unassigned, 3),
    }
