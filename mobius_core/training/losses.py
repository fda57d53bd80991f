"""Loss functions, each a plain function on tensors.

``calibration_loss`` is the language-guided uncertainty calibration loss of the paper
(Eq. 4): a focal loss on the scaled-cosine scores whose target for a matched query's
own prompt is the IoU between its box and the ground-truth box (sigma_loc), and 0 for
every other (query, prompt) pair. It is minimised when a query's confidence equals its
localisation quality, which is what makes confidence-based query pruning safe.
With ``iou_targets=None`` it is the plain sigmoid focal loss (target 1), the ablation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..box_ops import box_cxcywh_to_xyxy, box_iou, generalized_box_iou


def calibration_loss(
    logits: Tensor,
    positive: Tensor,
    iou_targets: Tensor | None,
    num_targets: float,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> Tensor:
    """Focal loss towards soft targets (Eq. 4).

    logits: [Q,K] (or [B,Q,K]); positive: bool, same shape, True at each matched query's
    ground-truth prompt; iou_targets: the target value at those entries (same shape, read
    only where ``positive``), or None for hard targets 1 (plain focal loss).
    Loss per entry: w * BCE(sigma, t), w = alpha_t * |t - sigma|^gamma, alpha_t = alpha on
    positives and 1 - alpha elsewhere; summed and divided by ``num_targets``.
    """
    prob = logits.sigmoid()
    target = torch.zeros_like(prob)
    if iou_targets is None:
        target = torch.where(positive, torch.ones_like(prob), target)
    else:
        target = torch.where(positive, iou_targets.to(prob.dtype), target)
    weight = (target - prob).abs().pow(gamma).detach()
    weight = weight * torch.where(positive, alpha, 1 - alpha)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (weight * bce).sum() / max(num_targets, 1.0)


def box_losses(pred: Tensor, target: Tensor, num_targets: float) -> tuple[Tensor, Tensor]:
    """Matched boxes pred, target: [M,4] cxcywh -> (L1 sum, (1 - GIoU) sum), each / num_targets."""
    if pred.shape[0] == 0:
        zero = pred.sum() * 0
        return zero, zero
    l1 = F.l1_loss(pred, target, reduction="sum")
    giou = generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target)).diagonal()
    return l1 / max(num_targets, 1.0), (1 - giou).sum() / max(num_targets, 1.0)


def matched_iou(pred: Tensor, target: Tensor) -> Tensor:
    """IoU of each matched pair: pred, target [M,4] cxcywh -> [M] (no gradient)."""
    with torch.no_grad():
        iou, _ = box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target))
        return iou.diagonal().clamp(0, 1)


def mask_bce_loss(pred_points: Tensor, target_points: Tensor, num_targets: float) -> Tensor:
    """pred_points (logits), target_points: [M,P] -> mean BCE per mask, summed / num_targets."""
    bce = F.binary_cross_entropy_with_logits(pred_points, target_points, reduction="none")
    return bce.mean(1).sum() / max(num_targets, 1.0)


def dice_loss(pred_points: Tensor, target_points: Tensor, num_targets: float) -> Tensor:
    """pred_points (logits), target_points: [M,P] -> (1 - soft Dice) summed / num_targets."""
    prob = pred_points.sigmoid()
    num = 2 * (prob * target_points).sum(1) + 1
    den = prob.sum(1) + target_points.sum(1) + 1
    return (1 - num / den).sum() / max(num_targets, 1.0)
