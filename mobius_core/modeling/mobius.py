"""The MOBIUS model: backbone -> pixel decoder -> query selection -> decoder -> heads.

``forward`` returns raw predictions only (``ModelOutput``); losses live in the criterion
and thresholds in the post-processor. The text path is apart from the image path: prompts
are encoded once (``encode_text``, cached) and the per-frame ``forward`` only projects the
cached embeddings.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..types import LayerPrediction, ModelOutput, Target, TextEmbeddings, VisualPrompts
from .backbone import Backbone
from .decoder import TransformerDecoder
from .denoising import build_denoising_queries, training_attention_mask
from .fusion import flatten_text_tokens
from .pruning import PruneSchedule
from .query_selection import LanguageGuidedQuerySelection
from .text_encoder import TextEncoder
from .visual_prompter import VisualPrompter


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
        visual_prompter: VisualPrompter | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.text_encoder = text_encoder
        self.text_proj = nn.Linear(text_encoder.dim, dim)
        self.pixel_decoder = pixel_decoder
        self.query_selection = query_selection
        self.decoder = decoder
        self.decode_levels = tuple(decode_levels)
        self.visual_prompter = visual_prompter
        # False when the loaded weights had no trained visual prompter (load_model_weights)
        self.visual_prompter_trained = visual_prompter is not None
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False
        )
        # training-only extra queries (see denoising.py); off until the trainer sets them
        self.dn_number = 0
        self.dn_label_noise = 0.2
        self.dn_box_noise = 0.4
        self.hybrid_queries = 0

    def configure_training_queries(
        self,
        dn_number: int = 0,
        dn_label_noise: float = 0.2,
        dn_box_noise: float = 0.4,
        hybrid_queries: int = 0,
    ) -> None:
        """Turn on query denoising (about ``dn_number`` DN queries per image) and the
        one-to-many branch (``hybrid_queries`` extra queries) for training forwards that
        are given targets. Inference never uses either."""
        if dn_number < 0 or hybrid_queries < 0:
            raise ValueError(
                f"dn_number and hybrid_queries must be >= 0, got {dn_number}, {hybrid_queries}"
            )
        self.dn_number, self.dn_label_noise = int(dn_number), float(dn_label_noise)
        self.dn_box_noise, self.hybrid_queries = float(dn_box_noise), int(hybrid_queries)

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
        targets: list[Target] | None = None,
        prompt_valid: Tensor | None = None,
        visual: VisualPrompts | None = None,
    ) -> ModelOutput:
        """images: [B,3,H,W] normalised (H, W multiples of 32); text: K prompts.

        prune: a pruning schedule (ignored in training mode); with_aux: also return the
        per-layer predictions (default: in training mode); targets: in training mode, the
        ground truth that the denoising queries are built from (see
        :meth:`configure_training_queries`); prompt_valid: optional [K] bool, False for
        padding prompts (exported graphs pad K); visual: point/box prompts per image, scored
        after the K text prompts (or alone, see VisualPrompts). -> ModelOutput with Q'
        queries and K (+ V) prompt columns.
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
        if visual is not None:
            z_text, prompt_valid = self.visual_prompt_embeddings(
                pix.levels[self.decode_levels[-1]], pix.mask_features, z_text, prompt_valid, visual
            )
        training_queries = self.training and targets is not None
        hybrid = self.hybrid_queries if training_queries else 0
        selection = self.query_selection(
            memory, shapes, z_text, extra=hybrid, prompt_valid=prompt_valid
        )
        if not training_queries or (self.dn_number == 0 and hybrid == 0):
            result = self.decoder(
                selection.queries,
                selection.boxes,
                memory,
                shapes,
                z_text,
                pix.mask_features,
                prune=prune,
                with_aux=with_aux,
                prompt_valid=prompt_valid,
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
        return self._forward_training_queries(
            selection, memory, shapes, z_text, pix.mask_features, targets, images.shape[-2:]
        )

    def visual_prompt_embeddings(
        self,
        bottleneck: Tensor,
        mask_features: Tensor,
        z_text: Tensor,
        prompt_valid: Tensor | None,
        visual: VisualPrompts,
    ) -> tuple[Tensor, Tensor]:
        """Per-image prompt embeddings [B,K+V,C] (or [B,V,C]) and their validity [B,K+V]."""
        if self.visual_prompter is None:
            raise ValueError(
                "this model has no visual prompter (model.visual_prompter=false): point and box "
                "prompts need a model built and trained with it"
            )
        if not self.visual_prompter_trained:
            raise ValueError(
                "the loaded weights have no trained visual prompter: train one with "
                "`mobius train CONFIG --checkpoint WEIGHTS --set train.visual_prob=1 --set "
                "train.trainable=[visual_prompter.]` (benchmarks/RESULTS.md) or use text prompts"
            )
        boxes = visual.boxes
        if boxes.dim() != 3 or boxes.shape[-1] != 4 or visual.valid.shape != boxes.shape[:2]:
            raise ValueError(
                f"visual prompts must be boxes [B,V,4] with valid [B,V], got "
                f"{tuple(boxes.shape)} and {tuple(visual.valid.shape)}"
            )
        z_vis = self.visual_prompter(bottleneck, mask_features, boxes)  # [B,V,C]
        valid = visual.valid.to(torch.bool)
        if not visual.classify_text:
            return z_vis, valid
        b, k = boxes.shape[0], z_text.shape[0]
        text_valid = (
            prompt_valid.to(torch.bool)
            if prompt_valid is not None
            else torch.ones(k, dtype=torch.bool, device=boxes.device)
        )
        z = torch.cat([z_text[None].expand(b, -1, -1).to(z_vis.dtype), z_vis], dim=1)
        return z, torch.cat([text_valid[None].expand(b, -1), valid], dim=1)  # [B,K+V]

    def _forward_training_queries(
        self, selection, memory, shapes, z_text, mask_features, targets, image_size
    ) -> ModelOutput:
        """Decoder pass over ``[DN | one-to-one | one-to-many]`` queries, split back apart."""
        dn = None
        if self.dn_number > 0 and z_text.shape[0] > 0:
            dn = build_denoising_queries(
                targets, z_text, self.dn_number, self.dn_label_noise, self.dn_box_noise
            )
        n_dn = dn.size if dn is not None else 0
        total = selection.queries.shape[1]
        n_main = min(self.query_selection.num_queries, total)
        n_hybrid = total - n_main
        queries, boxes = selection.queries, selection.boxes
        if dn is not None:
            queries = torch.cat([dn.queries.to(queries.dtype), queries], dim=1)
            boxes = torch.cat([dn.boxes.to(boxes.dtype), boxes], dim=1)
        mask = training_attention_mask(
            dn.groups if dn else 0, dn.group_size if dn else 0, n_main, n_hybrid, queries.device
        )
        result = self.decoder(
            queries, boxes, memory, shapes, z_text, mask_features, with_aux=True, attn_mask=mask
        )
        layers = [*result.aux, LayerPrediction(result.logits, result.boxes, result.masks)]
        parts = {"dn": slice(0, n_dn), "main": slice(n_dn, n_dn + n_main)}
        parts["hybrid"] = slice(n_dn + n_main, n_dn + total)
        split = {
            name: [LayerPrediction(p.logits[:, sl], p.boxes[:, sl], p.masks[:, sl]) for p in layers]
            for name, sl in parts.items()
        }
        main = split["main"]
        b = queries.shape[0]
        sel = selection
        if n_hybrid:
            sel = type(selection)(
                queries=selection.queries[:, :n_main],
                boxes=selection.boxes[:, :n_main],
                logits=selection.logits[:, :n_main],
                box_logits=selection.box_logits[:, :n_main],
                indices=selection.indices[:, :n_main],
            )
        return ModelOutput(
            logits=main[-1].logits,
            boxes=main[-1].boxes,
            masks=main[-1].masks,
            query_valid=torch.ones(b, n_main, dtype=torch.bool, device=queries.device),
            kept=torch.full_like(result.kept, n_main),
            aux=main[:-1],
            selection=sel,
            image_size=(int(image_size[0]), int(image_size[1])),
            denoising=split["dn"] if dn is not None else [],
            dn_assignment=list(zip(dn.slots, dn.instances)) if dn is not None else [],
            hybrid=split["hybrid"] if n_hybrid else [],
        )
