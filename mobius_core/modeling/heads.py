"""Prediction heads: language-guided classification (Eq. 3), boxes and masks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..box_ops import box_cxcywh_to_xyxy
from .layers.mlp import MLP
from .visual_prompter import prompt_grid

INVALID_LOGIT = -1e4


class TextClassifier(nn.Module):
    """Scores every query against every prompt embedding.

    ``cosine`` (MOBIUS, Eq. 3): exp(s) * cos(W q, z) + b with a learnable scale s
    (clamped at ``logit_scale_max``) -- bounded logits keep training stable.
    ``dot`` (GLEE): (W q . z) / sqrt(C) + b, unbounded; kept for the paper's ablation.
    The bias b starts at the focal-loss prior -log((1-p)/p) so that sigmoid(logit) = p.
    """

    def __init__(
        self,
        dim: int,
        kind: str = "cosine",
        logit_scale_init: float = math.log(1 / 0.07),
        logit_scale_max: float = math.log(100.0),
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        if kind not in ("cosine", "dot"):
            raise ValueError(f"classifier kind {kind!r} is unknown; choose 'cosine' or 'dot'")
        self.kind = kind
        self.proj = nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))
        self.logit_scale_max = float(logit_scale_max)
        self.bias = nn.Parameter(torch.tensor(-math.log((1 - prior_prob) / prior_prob)))

    def forward(self, queries: Tensor, text: Tensor, prompt_valid: Tensor | None = None) -> Tensor:
        """queries: [B,Q,C]; text: [K,C] pooled prompt embeddings shared by the batch, or
        [B,K,C] per image (visual prompts) -> logits [B,Q,K].

        prompt_valid: optional [K] (or [B,K]) bool; padding prompts (False) get logit -1e4
        (score 0), a value float16 engines still represent."""
        q = self.proj(queries)
        spec = "bqc,kc->bqk" if text.dim() == 2 else "bqc,bkc->bqk"
        if self.kind == "cosine":
            scale = self.logit_scale.clamp(max=self.logit_scale_max).exp()
            sim = torch.einsum(spec, F.normalize(q, dim=-1), F.normalize(text, dim=-1))
            logits = scale * sim + self.bias
        else:
            logits = torch.einsum(spec, q, text) / math.sqrt(q.shape[-1]) + self.bias
        if prompt_valid is not None:
            valid = prompt_valid if prompt_valid.dim() == 1 else prompt_valid[:, None, :]
            logits = torch.where(valid, logits, torch.full_like(logits, INVALID_LOGIT))
        return logits


class MaskHead(nn.Module):
    """mask = (MLP(q̂)) · M for every query: [B,Q,C] x [B,C,H/4,W/4] -> [B,Q,H/4,W/4]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.embed = MLP(dim, dim, dim, 3)

    def forward(self, queries: Tensor, mask_features: Tensor) -> Tensor:
        return torch.einsum("bqc,bchw->bqhw", self.embed(queries), mask_features)


class ShapeHead(nn.Module):
    """Shape evidence for classification: each query's own mask (its probabilities, detached)
    sampled over its box (detached), -> MLP -> [C], added to the query before the
    classifier. A mask outlines its object long before the query embedding tells a hexagon
    from a circle; the head starts as a no-op (zero-initialised output).

    ``grid``: the mask on a G x G grid over the box. ``polar`` adds a rotation-invariant
    description of the outline: from the mask's centroid (over that grid), 2G rays out to
    twice the box's larger half-side (in pixels of the mask map, so circles stay circles),
    each sampled at 2G points; the mask's extent along each ray, divided by its mean over the
    rays (so the size drops out), and the magnitudes of its discrete Fourier transform over
    the angle, harmonics 1..G (a square shows harmonic 4, a hexagon 6, a circle none):
    what a rotated object does not have to be learned for. ``spectrum``: those harmonics
    alone, without the grid (the grid's G*G samples, which change as the object turns,
    outweigh the G harmonics in the MLP and are what it fits; a probe on one model's
    predicted masks told the shapes apart from the harmonics alone 87% of the time, from
    the grid alone 65%, from both 79%; benchmarks/shape_probe.py).
    ``outline``: the harmonics 1..G from 4G rays (finer angles, the corners of small
    stars and hexagons stop falling between rays) and the rays' extents sorted, G of them
    from the shortest to the longest -- how far in the dents reach and how far out the
    points stick, whichever way the object faces. A probe on the fifth side-by-side
    model's masks told the shapes apart 90% of the time from these, 86% from ``spectrum``'s.
    """

    def __init__(self, dim: int, grid: int = 12, kind: str = "grid") -> None:
        super().__init__()
        if grid < 2:
            raise ValueError(f"the shape head's grid needs >= 2 cells a side, got {grid}")
        if kind not in ("grid", "polar", "spectrum", "outline"):
            raise ValueError(
                f"shape head kind {kind!r} is unknown; "
                "choose 'grid', 'polar', 'spectrum' or 'outline'"
            )
        self.grid, self.kind = grid, kind
        features = grid * grid if kind in ("grid", "polar") else 0
        if kind != "grid":
            rays = (4 if kind == "outline" else 2) * grid
            angle = torch.arange(rays, dtype=torch.float32) * (2 * math.pi / rays)
            phase = angle[:, None] * torch.arange(1, grid + 1, dtype=torch.float32)[None]
            self.register_buffer("cos", torch.cos(phase) / rays, persistent=False)  # [A,G]
            self.register_buffer("sin", torch.sin(phase) / rays, persistent=False)
            directions = torch.stack([angle.cos(), angle.sin()], -1)  # [A,2]
            steps = 2 * grid  # samples along each ray
            radii = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps * 2.0  # [R = 2G]
            self.register_buffer("offsets", radii[:, None, None] * directions, persistent=False)
            features += grid
        if kind == "outline":  # G of the sorted extents, the shortest and the longest among them
            ranks = torch.linspace(0, rays - 1, grid).round().long()
            self.register_buffer("ranks", ranks, persistent=False)
            features += grid
        self.embed = MLP(features, dim, dim, 3)
        nn.init.zeros_(self.embed.layers[-1].weight)
        nn.init.zeros_(self.embed.layers[-1].bias)

    def forward(self, masks: Tensor, boxes: Tensor) -> Tensor:
        """masks: [B,Q,H/4,W/4] logits; boxes: [B,Q,4] normalised cxcywh in the same (padded
        input) frame -> [B,Q,C]."""
        return self.embed(self.features(masks, boxes))

    def features(self, masks: Tensor, boxes: Tensor) -> Tensor:
        """What the MLP reads: [B,Q,G*G] grid samples (``grid``), then harmonics 1..G
        (``polar``); the harmonics alone, [B,Q,G] (``spectrum``); the harmonics and G
        sorted extents, each minus 1, [B,Q,2G] (``outline``)."""
        b, q, h, w = masks.shape
        boxes = boxes.detach()
        probs = masks.detach().sigmoid().reshape(b * q, 1, h, w)
        points = prompt_grid(box_cxcywh_to_xyxy(boxes), self.grid)  # [B,Q,G*G,2]
        on_grid = _sample(probs, points).reshape(b, q, -1)  # [B,Q,G*G]
        if self.kind == "grid":
            return on_grid
        weight = on_grid[..., None]
        eps = 1e-3  # an empty mask falls back to the box centre
        centre = ((weight * points).sum(2) + eps * boxes[..., :2]) / (weight.sum(2) + eps)
        half = torch.maximum(boxes[..., 2] * w, boxes[..., 3] * h) * 0.5  # [B,Q] pixels
        pixel = torch.tensor([1.0 / w, 1.0 / h], dtype=boxes.dtype, device=boxes.device)
        offsets = self.offsets.to(boxes.dtype) * pixel  # [R,A,2] per pixel of half-side
        rays = centre[..., None, None, :] + half[..., None, None, None] * offsets  # [B,Q,R,A,2]
        along = _sample(probs, rays.flatten(2, 3)).reshape(b, q, self.offsets.shape[0], -1)
        extent = along.sum(2)  # [B,Q,A]
        extent = extent / (extent.mean(-1, keepdim=True) + eps)
        re, im = extent @ self.cos.to(extent.dtype), extent @ self.sin.to(extent.dtype)
        # harmonics 1..G; x8 brings their typical 0.05-0.15 to the grid samples' range
        spectrum = 8.0 * (re * re + im * im + 1e-8).sqrt()  # [B,Q,G]
        if self.kind == "spectrum":
            return spectrum
        if self.kind == "outline":
            ordered = extent.topk(extent.shape[-1], dim=-1, largest=False).values  # [B,Q,A]
            return torch.cat([spectrum, ordered[..., self.ranks] - 1.0], dim=-1)
        return torch.cat([on_grid, spectrum], dim=-1)


def _sample(probs: Tensor, points: Tensor) -> Tensor:
    """probs: [B*Q,1,H,W]; points: [B,Q,P,2] normalised (x, y) -> [B*Q,1,1,P] bilinear."""
    grid = points.reshape(probs.shape[0], 1, -1, 2) * 2.0 - 1.0  # grid_sample's [-1,1] frame
    return F.grid_sample(probs, grid.to(probs.dtype), mode="bilinear", align_corners=False)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
