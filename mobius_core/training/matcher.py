"""Hungarian matching between predictions and ground truth (DETR / MaskDINO costs).

cost = w_class * focal class cost + w_bbox * L1(cxcywh) + w_giou * (-GIoU)
       + w_mask * BCE + w_dice * Dice   (masks compared at shared sample points)
Box-only targets (masks None) skip the mask terms.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from ..types import Target
from .point_sampling import point_sample, random_points


def focal_class_cost(
    logits: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """logits: [Q,K], labels: [N] -> [Q,N] (lower is better), as in Deformable-DETR."""
    prob = logits.sigmoid()
    neg = (1 - alpha) * prob.pow(gamma) * -(1 - prob + 1e-8).log()
    pos = alpha * (1 - prob).pow(gamma) * -(prob + 1e-8).log()
    return pos[:, labels] - neg[:, labels]


def mask_costs(
    pred: Tensor, target: Tensor, num_points: int, generator=None
) -> tuple[Tensor, Tensor]:
    """pred: [Q,h,w] logits, target: [N,H,W] -> (BCE cost [Q,N], Dice cost [Q,N]).

    With ``num_points`` > 0 both are sampled at the same random points; with 0 the target
    is resized to the prediction's grid and every pixel counts (deterministic).
    """
    if num_points > 0:
        coords = random_points(1, num_points, pred.device, generator)
        p = point_sample(pred, coords.expand(pred.shape[0], -1, -1))  # [Q,P]
        t = point_sample(target.float(), coords.expand(target.shape[0], -1, -1))  # [N,P]
    else:
        p = pred.flatten(1)
        t = F.interpolate(target[:, None].float(), size=pred.shape[-2:], mode="bilinear")
        t = t[:, 0].flatten(1)
    num = p.shape[1]
    pos = F.binary_cross_entropy_with_logits(p, torch.ones_like(p), reduction="none")
    neg = F.binary_cross_entropy_with_logits(p, torch.zeros_like(p), reduction="none")
    bce = (pos @ t.T + neg @ (1 - t).T) / num
    prob = p.sigmoid()
    dice = 1 - (2 * prob @ t.T + 1) / (prob.sum(-1)[:, None] + t.sum(-1)[None, :] + 1)
    return bce, dice


class HungarianMatcher:
    """One-to-one assignment per image minimising the weighted cost."""

    def __init__(
        self,
        cost_class: float = 4.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        num_points: int = 12544,
        alpha: float = 0.25,
        gamma: float = 2.0,
    ) -> None:
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.cost_mask, self.cost_dice = cost_mask, cost_dice
        self.num_points, self.alpha, self.gamma = num_points, alpha, gamma

    def cost_matrix(
        self, logits: Tensor, boxes: Tensor, masks: Tensor | None, target: Target, generator=None
    ) -> Tensor:
        """One image: logits [Q,K], boxes [Q,4], masks [Q,h,w] or None -> cost [Q,N]."""
        cost = self.cost_class * focal_class_cost(logits, target.labels, self.alpha, self.gamma)
        cost = cost + self.cost_bbox * torch.cdist(boxes, target.boxes, p=1)
        giou = generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(target.boxes))
        cost = cost - self.cost_giou * giou
        if masks is not None and target.masks is not None:
            bce, dice = mask_costs(masks, target.masks, self.num_points, generator)
            cost = cost + self.cost_mask * bce + self.cost_dice * dice
        return cost

    @torch.no_grad()
    def __call__(
        self,
        logits: Tensor,
        boxes: Tensor,
        masks: Tensor | None,
        targets: list[Target],
        generator=None,
    ) -> list[tuple[Tensor, Tensor]]:
        """logits [B,Q,K], boxes [B,Q,4], masks [B,Q,h,w] or None -> per image
        (prediction indices [M], target indices [M]) with M = min(Q, N)."""
        out = []
        for b, target in enumerate(targets):
            if len(target) == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                out.append((empty, empty))
                continue
            cost = self.cost_matrix(
                logits[b].float(),
                boxes[b].float(),
                None if masks is None else masks[b],
                target,
                generator,
            )
            if not torch.isfinite(cost).all():
                raise FloatingPointError(
                    f"matching cost of image {b} has NaN/inf entries; the predictions are broken"
                )
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            out.append(
                (
                    torch.as_tensor(rows, dtype=torch.int64),
                    torch.as_tensor(np.asarray(cols), dtype=torch.int64),
                )
            )
        return out
