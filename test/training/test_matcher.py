"""Hungarian matcher: hand-built costs, batched equals one-by-one, empty targets."""

from __future__ import annotations

import pytest
import torch

from mobius_core.training.matcher import HungarianMatcher, focal_class_cost, mask_costs
from mobius_core.types import Target


def _target(labels, boxes, masks=None):
    return Target(torch.tensor(labels), torch.tensor(boxes, dtype=torch.float32), masks)


def test_box_only_costs_pick_the_obvious_assignment():
    m = HungarianMatcher(cost_class=0.0, cost_giou=0.0)
    gt = [[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2]]
    boxes = torch.tensor([[[0.7, 0.7, 0.2, 0.2], [0.5, 0.1, 0.3, 0.3], [0.21, 0.2, 0.1, 0.1]]])
    logits = torch.zeros(1, 3, 2)
    ((rows, cols),) = m(logits, boxes, None, [_target([0, 1], gt)])
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 2: 0}


def test_cost_matrix_terms_by_hand():
    m = HungarianMatcher(cost_class=0.0, cost_bbox=1.0, cost_giou=0.0)
    t = _target([0], [[0.5, 0.5, 0.2, 0.2]])
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.6, 0.4, 0.2, 0.4]])
    cost = m.cost_matrix(torch.zeros(2, 1), boxes, None, t)
    torch.testing.assert_close(cost, torch.tensor([[0.0], [0.1 + 0.1 + 0.0 + 0.2]]))
    # the focal class cost prefers confident queries for the target's label
    c = focal_class_cost(torch.tensor([[4.0, -4.0], [-4.0, 4.0]]), torch.tensor([0]))
    assert c[0, 0] < c[1, 0]


def test_batched_equals_one_by_one():
    torch.manual_seed(0)
    m = HungarianMatcher(num_points=0)
    b, q, k = 3, 7, 4
    logits, boxes = torch.randn(b, q, k), torch.rand(b, q, 4) * 0.5 + 0.25
    masks = torch.randn(b, q, 8, 8)
    targets = []
    for n in (3, 1, 5):
        gt_masks = torch.rand(n, 32, 32) > 0.5
        targets.append(Target(torch.randint(0, k, (n,)), torch.rand(n, 4) * 0.5 + 0.25, gt_masks))
    batched = m(logits, boxes, masks, targets)
    for i in range(b):
        ((rows, cols),) = m(logits[i : i + 1], boxes[i : i + 1], masks[i : i + 1], [targets[i]])
        assert torch.equal(rows, batched[i][0]) and torch.equal(cols, batched[i][1])
        assert len(rows) == min(q, len(targets[i]))


def test_empty_targets_and_broken_predictions():
    m = HungarianMatcher()
    empty = Target(torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4))
    ((rows, cols),) = m(torch.randn(1, 5, 2), torch.rand(1, 5, 4), None, [empty])
    assert rows.numel() == 0 and cols.numel() == 0
    boxes = torch.rand(1, 5, 4)
    boxes[0, 2, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="image 0"):
        m(torch.randn(1, 5, 2), boxes, None, [_target([0], [[0.5, 0.5, 0.1, 0.1]])])


def test_mask_costs_prefer_the_overlapping_mask():
    target = torch.zeros(1, 16, 16)
    target[0, :8] = 1
    good = torch.full((16, 16), -8.0)
    good[:8] = 8.0
    pred = torch.stack([good, -good])
    for points in (0, 512):
        bce, dice = mask_costs(pred, target, points, torch.Generator().manual_seed(0))
        assert bce[0, 0] < bce[1, 0] and dice[0, 0] < dice[1, 0]
