"""The MOBIUS model: backbone -> pixel decoder -> query selection -> decoder -> heads.

``forward`` returns raw predictions only (``ModelOutput``); losses live in the criterion
and thresholds in the post-processor. The text path is apart from the image path: prompts
are encoded once (``encode_text``, cached) and the per-frame ``forward`` only projects the
cached embeddings.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..types import ModelOutput, TextEmbeddings
from .backbone import Backbone
from .decoder import TransformerDecoder
from .fusion import flatten_text_tokens
from .pruning import PruneSchedule
from .query_selection import LanguageGuidedQuerySelection
from .text_encoder import TextEncoder


class Mobius(nn.Module):
    """Open-vocabulary universal instance segmentation model (and its GLEE baselines).

    decode_levels: which pixel-decoder output levels the transformer decoder reads: the
        bottleneck level only (single-scale decoding) or all of them (multi-scale).
    """

    def __init__(
        self,
        backbone: Backbone,
        text_encoder: TextEncoder,
        pixel_decoder: nn.Module,
        query_selection: LanguageGuidedQuerySelection,
        decoder: TransformerDecoder,
        dim: int,
        decode_levels: tuple[int, ...],
        pixel_mean: tuple[float, ...] = (0.485, 0.456, 0.406),
        pixel_std: tuple[float, ...] = (0.229, 0.224, 0.225),
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.text_encoder = text_encoder
        self.text_proj = nn.Linear(text_encoder.dim, dim)
        self.pixel_decoder = pixel_decoder
        self.query_selection = query_selection
        self.decoder = decoder
        self.decode_levels = tuple(decode_levels)
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False
        )

    # -- text path (run once per prompt set) -------------------------------------------
    def encode_text(self, prompts: list[str]) -> TextEmbeddings:
        """Validated, cached, no-grad prompt encoding (the deployment path)."""
        return self.text_encoder.encode(prompts)

    def project_text(self, text: TextEmbeddings) -> tuple[Tensor, Tensor, Tensor]:
        """TextEmbeddings -> (tokens [K,T,C], token_mask [K,T], z_text [K,C]) at hidden size."""
        tokens = self.text_proj(text.tokens) * text.token_mask[..., None].to(text.tokens.dtype)
        return tokens, text.token_mask, self.text_proj(text.pooled)

    # -- image path ---------------------------------------------------------------------
    def normalize(self, images: Tensor) -> Tensor:
        """images: [B,3,H,W] RGB in [0,1] -> normalised with the backbone's mean/std."""
        return (images - self.pixel_mean) / self.pixel_std

    def forward(
        self,
        images: Tensor,
        text: TextEmbeddings,
        prune: PruneSchedule | None = None,
        with_aux: bool | None = None,
    ) -> ModelOutput:
        """images: [B,3,H,W] normalised (H, W multiples of 32); text: K prompts.

        prune: a pruning schedule (ignored in training mode); with_aux: also return the
        per-layer predictions (default: in training mode). -> ModelOutput with Q' queries.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B,3,H,W], got {tuple(images.shape)}")
        if with_aux is None:
            with_aux = self.training
        if self.training:
            prune = None
        tokens, token_mask, z_text = self.project_text(text)
        features = self.backbone(images)
        fused_text = (
            flatten_text_tokens(tokens, token_mask, images.shape[0]) if tokens.numel() else None
        )
        pix = self.pixel_decoder(features, fused_text)
        maps = [pix.levels[i] for i in self.decode_levels]
        shapes = [(m.shape[-2], m.shape[-1]) for m in maps]
        memory = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)  # -> [B,S,C]
        selection = self.query_selection(memory, shapes, z_text)
        result = self.decoder(
            selection.queries,
            selection.boxes,
            memory,
            shapes,
            z_text,
            pix.mask_features,
            prune=prune,
            with_aux=with_aux,
        )
        return ModelOutput(
            logits=result.logits,
            boxes=result.boxes,
            masks=result.masks,
            query_valid=result.valid,
            kept=result.kept,
            aux=result.aux,
            selection=selection,
            image_size=(images.shape[-2], images.shape[-1]),
        )
