"""Box conversions, IoU / generalised IoU and mask-derived boxes (pure torch).

Conventions:

- ``xyxy`` boxes are ``(x0, y0, x1, y1)`` with ``x1 >= x0`` and ``y1 >= y0``; ``cxcywh`` boxes
  are ``(cx, cy, w, h)``. Both may be normalised or in pixels; the functions do not care.
- Pixel boxes use continuous pixel-edge coordinates: pixel ``(y, x)`` covers
  ``[x, x + 1) x [y, y + 1)`` (the COCO convention).
- The functions take any leading batch shape ``[..., 4]`` where noted and are differentiable
  w.r.t. the box coordinates (except :func:`masks_to_boxes`, which reads boolean masks).
- Nothing is asserted: degenerate boxes (``x1 < x0``) give meaningless but finite IoUs, and
  zero-area unions are clamped to ``eps`` so empty boxes give IoU 0 instead of NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "box_area",
    "box_cxcywh_to_xyxy",
    "box_iou",
    "box_xyxy_to_cxcywh",
    "generalized_box_iou",
    "masks_to_boxes",
]


def _eps(t: Tensor) -> float:
    return torch.finfo(t.dtype).eps if t.is_floating_point() else 1e-7


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``[..., 4]`` ``(cx, cy, w, h)`` -> ``[..., 4]`` ``(x0, y0, x1, y1)``."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``[..., 4]`` ``(x0, y0, x1, y1)`` -> ``[..., 4]`` ``(cx, cy, w, h)``."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``[..., 4]`` xyxy boxes -> ``[...]``. Degenerate boxes are not clamped."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of xyxy boxes.

    Args:
        boxes1: ``[N, 4]`` xyxy.
        boxes2: ``[M, 4]`` xyxy.

    Returns:
        ``(iou, union)``, both ``[N, M]``. The union is returned unclamped; the division uses
        ``union.clamp(min=eps)`` so two empty boxes give IoU 0, not NaN.
    """
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # [N,M,2]
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # [N,M,2]
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    iou = inter / union.clamp(min=_eps(union))
    return iou, union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalised IoU (Rezatofighi et al., 2019) of xyxy boxes.

    ``giou = iou - (|C| - union) / |C|`` with ``C`` the smallest box enclosing both; the result
    lies in ``[-1, 1]`` for well-formed boxes. Boxes are expected to satisfy ``x1 >= x0`` and
    ``y1 >= y0`` (not asserted, so the function stays traceable and cheap inside losses).

    Args:
        boxes1: ``[N, 4]`` xyxy.
        boxes2: ``[M, 4]`` xyxy.

    Returns:
        ``[N, M]`` generalised IoU.
    """
    iou, union = box_iou(boxes1, boxes2)
    lt = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing.clamp(min=_eps(enclosing))


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight xyxy pixel-edge boxes around boolean masks.

    A mask whose pixels span columns ``x_min..x_max`` and rows ``y_min..y_max`` (inclusive)
    gets the box ``(x_min, y_min, x_max + 1, y_max + 1)``, so a single pixel has area 1 (the same
    as ``pycocotools.mask.toBbox``; note ``torchvision.ops.masks_to_boxes`` returns the inclusive
    ``x_max``/``y_max`` instead).

    Args:
        masks: ``[N, H, W]`` bool (any dtype is read as ``!= 0``).

    Returns:
        ``[N, 4]`` float32 xyxy boxes on the masks' device; all zeros for an empty mask.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be [N,H,W], got shape {tuple(masks.shape)}")
    n, h, w = masks.shape
    if n == 0 or h == 0 or w == 0:
        return torch.zeros((n, 4), dtype=torch.float32, device=masks.device)
    m = masks != 0
    rows = m.any(dim=2)  # [N,H]
    cols = m.any(dim=1)  # [N,W]
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    big_y, big_x = h + 1, w + 1
    y0 = torch.where(rows, ys, big_y).amin(dim=1)
    y1 = torch.where(rows, ys, -1).amax(dim=1) + 1
    x0 = torch.where(cols, xs, big_x).amin(dim=1)
    x1 = torch.where(cols, xs, -1).amax(dim=1) + 1
    boxes = torch.stack((x0, y0, x1, y1), dim=1).to(torch.float32)
    nonempty = rows.any(dim=1)
    return torch.where(nonempty[:, None], boxes, torch.zeros_like(boxes))
