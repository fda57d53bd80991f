"""The torch backend: the eager model behind the same feed (the reference the others are
checked against), and :class:`ImageGraph`, the model wrapped to the ``io_spec`` contract
(what ``mobius export`` traces)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..modeling.mobius import Mobius
from ..modeling.pruning import PruneSchedule
from ..postprocess import RawOutputs
from ..types import TextEmbeddings, VisualPrompts
from . import io_spec
from .backend import feed_specs, outputs_from_list


class ImageGraph(nn.Module):
    """The model behind the ``io_spec`` image contract (normalisation and scoring inside)."""

    def __init__(self, model: Mobius, schedule: str = "sigmoid", context: bool = True) -> None:
        super().__init__()
        if schedule == "fixed":
            raise ValueError("a 'fixed' schedule cannot be a graph input; use sigmoid, ...")
        self.model = model.eval()
        self.schedule = schedule
        self.context = context

    def forward(
        self,
        image: Tensor,
        text_tokens: Tensor,
        text_token_mask: Tensor,
        text_pooled: Tensor,
        prompt_valid: Tensor,
        prune_low: Tensor,
        prune_high: Tensor,
        prune_beta: Tensor,
        min_keep: Tensor,
        visual_boxes: Tensor | None = None,
        visual_valid: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        """``io_spec.IMAGE_INPUTS`` in order; with ``visual_boxes``/``visual_valid`` too
        (``io_spec.VISUAL_GRAPH_INPUTS``), the point/box prompts are scored after the text.
        Traced with 9 inputs it is the plain graph, with 11 the point/box one."""
        text = TextEmbeddings(text_tokens, text_token_mask & prompt_valid[:, None], text_pooled)
        prune = PruneSchedule(
            self.schedule,
            prune_low.reshape(()),
            prune_high.reshape(()),
            prune_beta.reshape(()),
            min_keep.reshape(()),
            context=self.context,
        )
        visual = None
        if visual_boxes is not None and visual_valid is not None:
            visual = VisualPrompts(visual_boxes, visual_valid)
        out = self.model(
            self.model.normalize(image), text, prune=prune, prompt_valid=prompt_valid, visual=visual
        )
        prompt_scores = out.logits.sigmoid() * out.query_valid[..., None].to(out.logits.dtype)
        scores, labels = prompt_scores.max(dim=-1)
        return prompt_scores, scores, labels, out.boxes, out.masks, out.query_valid, out.kept


class TorchBackend:
    """The eager model behind the same feed (the reference the others are checked against)."""

    name = "torch"

    def __init__(
        self, model: Any, schedule: str = "sigmoid", device: str | None = None, input_size: int = 0
    ) -> None:
        self.torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.graph = ImageGraph(model.to(self.device), schedule).eval()
        self.layers = int(model.decoder.num_layers)
        self.text_dim = int(model.text_encoder.dim)
        self.accepts_visual = model.visual_prompter is not None and bool(
            model.visual_prompter_trained
        )
        self.requires_visual = False
        self.input_hw = (int(input_size), int(input_size))
        self.fixed_hw = self.max_hw = None
        self.meta = {}

    def infer(self, feed: dict[str, np.ndarray]) -> RawOutputs:
        specs = feed_specs(feed, self.accepts_visual, False, "the torch model")
        io_spec.check_feed(feed, specs)
        torch = self.torch
        args = [
            torch.from_numpy(np.ascontiguousarray(feed[n])).to(self.device)
            for n in io_spec.names(specs)
        ]
        with torch.no_grad():
            values = [v.cpu().numpy() for v in self.graph(*args)]
        return outputs_from_list(values, feed["image"].shape[2:])
