"""The training criterion: matching, then class / box / mask losses on every stage.

Stages: the final decoder layer, every earlier decoder layer (auxiliary) and the query
selection (class and box only: it predicts no masks). Each stage is matched on its own.
In training with the extra queries of ``modeling/denoising.py`` two more families join:
the denoising queries of every layer (known assignment, no matching; terms ``*_dn``) and
the one-to-many queries of every layer (matched against the ground truth repeated
``hybrid_k`` times; terms ``*_o2m``), each summed over layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..types import ModelOutput, Target
from .losses import box_losses, calibration_loss, dice_loss, mask_bce_loss, matched_iou
from .matcher import HungarianMatcher
from .point_sampling import point_sample, random_points

DEFAULT_WEIGHTS = {"class": 4.0, "bbox": 5.0, "giou": 2.0, "mask": 5.0, "dice": 5.0}


class SetCriterion(nn.Module):
    """Weighted sum of the losses of every stage (``loss``) plus each term for logging.

    calibration: True for the paper's calibration loss (Eq. 4, IoU targets), False for
    the plain focal loss (the Tab. 4 / Tab. 14 ablation).
    """

    def __init__(
        self,
        matcher: HungarianMatcher,
        weights: dict[str, float] | None = None,
        calibration: bool = True,
        alpha: float = 0.25,
        gamma: float = 2.0,
        num_points: int = 12544,
        hybrid_k: int = 6,
    ) -> None:
        super().__init__()
        self.matcher = matcher
        self.weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        unknown = set(self.weights) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(
                f"unknown loss weights {sorted(unknown)}; known: {sorted(DEFAULT_WEIGHTS)}"
            )
        self.calibration, self.alpha, self.gamma = calibration, alpha, gamma
        self.num_points = num_points
        if hybrid_k < 1:
            raise ValueError(f"hybrid_k must be >= 1, got {hybrid_k}")
        self.hybrid_k = hybrid_k

    def stage_losses(
        self,
        logits: Tensor,
        boxes: Tensor,
        masks: Tensor | None,
        targets: list[Target],
        num_targets: float,
    ) -> dict[str, Tensor]:
        """One stage: logits [B,Q,K], boxes [B,Q,4], masks [B,Q,h,w] or None."""
        indices = self.matcher(logits, boxes, masks, targets)
        return self.assigned_losses(logits, boxes, masks, targets, indices, num_targets)

    def assigned_losses(
        self,
        logits: Tensor,
        boxes: Tensor,
        masks: Tensor | None,
        targets: list[Target],
        indices: list[tuple[Tensor, Tensor]],
        num_targets: float,
    ) -> dict[str, Tensor]:
        """Losses for a given assignment: per image (query indices, target indices)."""
        positive = torch.zeros_like(logits, dtype=torch.bool)
        iou_target = torch.zeros_like(logits)
        pred_boxes, gt_boxes = [], []
        for b, (qi, ti) in enumerate(indices):
            qi, ti = qi.to(logits.device), ti.to(logits.device)
            labels = targets[b].labels[ti]
            positive[b, qi, labels] = True
            pb, gb = boxes[b, qi], targets[b].boxes[ti]
            iou_target[b, qi, labels] = matched_iou(pb, gb).to(logits.dtype)
            pred_boxes.append(pb)
            gt_boxes.append(gb)
        losses = {
            "class": calibration_loss(
                logits,
                positive,
                iou_target if self.calibration else None,
                num_targets,
                self.alpha,
                self.gamma,
            )
        }
        losses["bbox"], losses["giou"] = box_losses(
            torch.cat(pred_boxes), torch.cat(gt_boxes), num_targets
        )
        if masks is not None:
            losses["mask"], losses["dice"] = self._mask_losses(masks, targets, indices, num_targets)
        return losses

    def _mask_losses(
        self, masks: Tensor, targets: list[Target], indices, num_targets: float
    ) -> tuple[Tensor, Tensor]:
        preds, gts = [], []
        for b, (qi, ti) in enumerate(indices):
            if targets[b].masks is None or qi.numel() == 0:
                continue
            preds.append(masks[b, qi.to(masks.device)])
            gts.append(targets[b].masks[ti.to(masks.device)].float())
        if not preds:
            zero = masks.sum() * 0
            return zero, zero
        # masks differ in size between images only through padding: sample per image
        pred_pts, gt_pts = [], []
        for p, g in zip(preds, gts):
            coords = random_points(p.shape[0], self.num_points, p.device)
            pred_pts.append(point_sample(p, coords))
            gt_pts.append(point_sample(g, coords))
        pp, gp = torch.cat(pred_pts), torch.cat(gt_pts)
        return mask_bce_loss(pp, gp, num_targets), dice_loss(pp, gp, num_targets)

    def forward(
        self, outputs: ModelOutput, targets: list[Target], num_targets: float | None = None
    ) -> dict[str, Tensor]:
        """Losses of all stages: ``loss`` (weighted total) and ``<term>`` / ``<term>_<stage>``.

        num_targets: the normaliser (default: the instances in ``targets``; in distributed
        training, the mean over processes)."""
        if num_targets is None:
            num_targets = float(sum(len(t) for t in targets))
        stages: list[tuple[str, Tensor, Tensor, Tensor | None]] = [
            ("", outputs.logits, outputs.boxes, outputs.masks)
        ]
        stages += [(f"_{i}", a.logits, a.boxes, a.masks) for i, a in enumerate(outputs.aux)]
        if outputs.selection is not None:
            sel = outputs.selection
            stages.append(("_sel", sel.logits, sel.box_logits.sigmoid(), None))
        result: dict[str, Tensor] = {}
        total = outputs.logits.sum() * 0
        for suffix, logits, boxes, masks in stages:
            for name, value in self.stage_losses(
                logits, boxes, masks, targets, num_targets
            ).items():
                result[f"{name}{suffix}"] = value
                total = total + self.weights[name] * value
        if outputs.denoising:
            n_dn = float(sum(len(slot) for slot, _ in outputs.dn_assignment))
            for layer in outputs.denoising:
                terms = self.assigned_losses(
                    layer.logits, layer.boxes, layer.masks, targets, outputs.dn_assignment, n_dn
                )
                total = self._accumulate(result, terms, "_dn", total)
        if outputs.hybrid:
            repeated = [repeat_target(t, self.hybrid_k) for t in targets]
            for layer in outputs.hybrid:
                terms = self.stage_losses(
                    layer.logits, layer.boxes, layer.masks, repeated, num_targets * self.hybrid_k
                )
                total = self._accumulate(result, terms, "_o2m", total)
        result["loss"] = total
        return result

    def _accumulate(
        self, result: dict[str, Tensor], terms: dict[str, Tensor], suffix: str, total: Tensor
    ) -> Tensor:
        """Add ``terms`` into ``result[<term><suffix>]`` (summed over layers) and the total."""
        for name, value in terms.items():
            key = f"{name}{suffix}"
            result[key] = result[key] + value if key in result else value
            total = total + self.weights[name] * value
        return total


def repeat_target(target: Target, k: int) -> Target:
    """The ground truth of one image with every instance repeated ``k`` times (one-to-many)."""
    masks = target.masks.repeat(k, 1, 1) if target.masks is not None else None
    return Target(target.labels.repeat(k), target.boxes.repeat(k, 1), masks)
