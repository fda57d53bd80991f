"""Stage I/O dataclasses handed between the parts of the model.

Shape glossary (docs/ARCHITECTURE.md §1): B batch, C hidden, L levels, S tokens of the
bottleneck scale, Q queries, Q' kept queries, K prompts, T text tokens,
N ground-truth targets, H/W image size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class BackboneFeatures:
    """Backbone feature maps S2..S5, finest first.

    maps: four tensors [B,C_i,H_i,W_i] for S2, S3, S4, S5.
    strides: stride of each map relative to the input image, e.g. (4, 8, 16, 32).
    """

    maps: list[Tensor]
    strides: tuple[int, ...]


@dataclass
class TextEmbeddings:
    """Prompt embeddings from a text encoder, before projection to the hidden size.

    tokens: [K,T,C_text] token embeddings E_text (padding positions are zero).
    token_mask: [K,T] bool, True where a token is real.
    pooled: [K,C_text] category-wise pooled embeddings z_text.
    prompts: the K prompt strings, in order (prompt index -> text lives here only).
    """

    tokens: Tensor
    token_mask: Tensor
    pooled: Tensor
    prompts: tuple[str, ...] = ()

    @property
    def num_prompts(self) -> int:
        return int(self.pooled.shape[0])

    def to(self, device: torch.device | str) -> TextEmbeddings:
        return TextEmbeddings(
            self.tokens.to(device), self.token_mask.to(device), self.pooled.to(device), self.prompts
        )


@dataclass
class PixelDecoderOutput:
    """What a pixel decoder hands to query selection and the transformer decoder.

    levels: the output feature maps [B,C,H_l,W_l], finest first. For the bottleneck
        encoder the bottleneck level is the enhanced bottleneck B̂ and the others are the
        projected backbone maps; baselines return their own enhanced levels.
    strides: stride of each level.
    mask_features: [B,C,H/4,W/4] the per-pixel embedding map M.
    """

    levels: list[Tensor]
    strides: tuple[int, ...]
    mask_features: Tensor


@dataclass
class QuerySelection:
    """Top-K tokens chosen as decoder queries (Eq. 2).

    queries: [B,Q,C] selected token features (detached content queries).
    boxes: [B,Q,4] initial boxes, normalised cxcywh in [0,1].
    logits: [B,Q,K] scaled-cosine logits of the selected tokens (for the auxiliary loss).
    box_logits: [B,Q,4] un-squashed boxes (inverse-sigmoid space) before detaching.
    indices: [B,Q] indices of the selected tokens inside the memory.
    """

    queries: Tensor
    boxes: Tensor
    logits: Tensor
    box_logits: Tensor
    indices: Tensor


@dataclass
class LayerPrediction:
    """Predictions of one decoder layer (used for auxiliary losses).

    logits: [B,Q',K]; boxes: [B,Q',4] normalised cxcywh; masks: [B,Q',H/4,W/4] or None.
    """

    logits: Tensor
    boxes: Tensor
    masks: Tensor | None = None


@dataclass
class VisualPrompts:
    """Point and box prompts, per image, in the frame of the padded network input.

    boxes: [B,V,4] normalised xyxy in [0,1]; a point prompt is a box of zero size.
    valid: [B,V] bool, False for padding slots (images with fewer prompts).
    classify_text: also score the queries against the text prompts (columns 0..K-1 of the
        logits, the visual prompts after them); False scores the visual prompts only, the
        text then only conditions the pixel decoder.
    """

    boxes: Tensor
    valid: Tensor
    classify_text: bool = True

    @property
    def num_prompts(self) -> int:
        return int(self.boxes.shape[1])


@dataclass
class ModelOutput:
    """Raw predictions of the model (no losses, no thresholds).

    logits: [B,Q',K] scaled-cosine logits of the final layer (sigmoid -> confidence).
    boxes: [B,Q',4] normalised cxcywh.
    masks: [B,Q',H/4,W/4] mask logits at stride 4.
    query_valid: [B,Q'] bool, False for padding slots of images that kept fewer queries.
    kept: [B,L_dec] int64, queries each image kept after each decoder layer.
    aux: per-layer predictions before the last layer (training only, else empty).
    selection: the query-selection stage output.
    image_size: (H, W) of the padded network input.
    denoising: training only, every decoder layer's predictions for the denoising queries.
    dn_assignment: per image (DN slots, instance indices), the known matching of those.
    hybrid: training only, every decoder layer's predictions for the one-to-many queries.
    """

    logits: Tensor
    boxes: Tensor
    masks: Tensor
    query_valid: Tensor
    kept: Tensor
    aux: list[LayerPrediction] = field(default_factory=list)
    selection: QuerySelection | None = None
    image_size: tuple[int, int] = (0, 0)
    denoising: list[LayerPrediction] = field(default_factory=list)
    dn_assignment: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    hybrid: list[LayerPrediction] = field(default_factory=list)


@dataclass
class Target:
    """Ground truth of one image, in the frame of the padded network input.

    labels: [N] int64 indices into the batch's prompt list (K prompts).
    boxes: [N,4] normalised cxcywh in [0,1].
    masks: [N,H,W] bool or float at input resolution, or None for box-only datasets.
    """

    labels: Tensor
    boxes: Tensor
    masks: Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])
