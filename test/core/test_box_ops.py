"""Box conversions, IoU / GIoU (hand-computed and vs torchvision) and mask-derived boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobius_core.box_ops import (
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    masks_to_boxes,
)


def _random_xyxy(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 50
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 30 + 0.5
    return torch.cat((xy, xy + wh), dim=1)


def test_cxcywh_xyxy_values():
    cxcywh = torch.tensor([[5.0, 6.0, 4.0, 2.0]])
    xyxy = box_cxcywh_to_xyxy(cxcywh)
    assert torch.equal(xyxy, torch.tensor([[3.0, 5.0, 7.0, 7.0]]))
    assert torch.equal(box_xyxy_to_cxcywh(xyxy), cxcywh)


def test_conversions_roundtrip_with_batch_dims():
    boxes = _random_xyxy(24, 0).reshape(2, 3, 4, 4)
    back = box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(boxes))
    torch.testing.assert_close(back, boxes)
    c = box_xyxy_to_cxcywh(boxes)
    torch.testing.assert_close(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(c)), c)


def test_box_area():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 5.0]])
    assert torch.equal(box_area(boxes), torch.tensor([6.0, 0.0]))


def test_iou_and_giou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor(
        [
            [1.0, 1.0, 3.0, 3.0],  # inter 1, union 7, hull 9
            [0.0, 0.0, 2.0, 2.0],  # identical
            [3.0, 0.0, 4.0, 1.0],  # disjoint: inter 0, union 5, hull 4*2=8
            [0.5, 0.5, 1.5, 1.5],  # inside: inter 1, union 4
        ]
    )
    iou, union = box_iou(a, b)
    assert iou.shape == (1, 4) and union.shape == (1, 4)
    torch.testing.assert_close(iou[0], torch.tensor([1 / 7, 1.0, 0.0, 0.25]))
    torch.testing.assert_close(union[0], torch.tensor([7.0, 4.0, 5.0, 4.0]))
    giou = generalized_box_iou(a, b)
    expected = torch.tensor([1 / 7 - 2 / 9, 1.0, 0.0 - 3 / 8, 0.25])
    torch.testing.assert_close(giou[0], expected)


def test_iou_empty_inputs_and_degenerate_boxes():
    a = _random_xyxy(3, 1)
    assert box_iou(a, a[:0])[0].shape == (3, 0)
    assert generalized_box_iou(a[:0], a).shape == (0, 3)
    point = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    iou, _ = box_iou(point, point)
    giou = generalized_box_iou(point, point)
    assert torch.isfinite(iou).all() and torch.isfinite(giou).all()
    assert iou.item() == 0.0


def test_giou_range_and_gradients():
    a = _random_xyxy(7, 2).requires_grad_(True)
    b = _random_xyxy(5, 3).requires_grad_(True)
    g = generalized_box_iou(a, b)
    assert g.shape == (7, 5)
    assert (g <= 1 + 1e-9).all() and (g >= -1 - 1e-9).all()
    (1 - g).sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()
    assert b.grad is not None and torch.isfinite(b.grad).all()


def test_against_torchvision():
    ops = pytest.importorskip("torchvision.ops")
    a = _random_xyxy(11, 4)
    b = _random_xyxy(9, 5)
    iou, _ = box_iou(a, b)
    torch.testing.assert_close(iou, ops.box_iou(a, b))
    torch.testing.assert_close(generalized_box_iou(a, b), ops.generalized_box_iou(a, b))
    torch.testing.assert_close(box_area(a), ops.box_area(a))
    c = ops.box_convert(a, "xyxy", "cxcywh")
    torch.testing.assert_close(box_xyxy_to_cxcywh(a), c)
    torch.testing.assert_close(box_cxcywh_to_xyxy(c), a)


def test_masks_to_boxes():
    masks = torch.zeros(4, 6, 8, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True  # rows 1-2, cols 2-4
    masks[1, 4, 7] = True  # single pixel
    masks[3] = True  # full
    boxes = masks_to_boxes(masks)
    assert boxes.dtype == torch.float32
    expected = torch.tensor(
        [[2.0, 1.0, 5.0, 3.0], [7.0, 4.0, 8.0, 5.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 8.0, 6.0]]
    )
    assert torch.equal(boxes, expected)
    assert masks_to_boxes(torch.zeros(0, 5, 5, dtype=torch.bool)).shape == (0, 4)
    with pytest.raises(ValueError):
        masks_to_boxes(torch.zeros(5, 5, dtype=torch.bool))


def test_masks_to_boxes_matches_pycocotools_tobbox():
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 13, 17), dtype=bool)
    for m in masks:
        y, x = rng.integers(0, 12), rng.integers(0, 16)
        m[y : y + rng.integers(1, 6), x : x + rng.integers(1, 6)] = True
        m[rng.integers(0, 13), rng.integers(0, 17)] = True
    rles = mask_api.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    xywh = torch.from_numpy(mask_api.toBbox(rles)).float()
    ref = torch.cat((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), dim=1)
    assert torch.equal(masks_to_boxes(torch.from_numpy(masks)), ref)
