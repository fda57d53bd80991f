"""Losses on hand-computed cases; the calibration loss pulls scores towards the IoU."""

from __future__ import annotations

import math

import pytest
import torch

from mobius_core.build import build_model
from mobius_core.config import load_config
from mobius_core.training.criterion import SetCriterion
from mobius_core.training.losses import box_losses, calibration_loss, dice_loss, mask_bce_loss
from mobius_core.training.matcher import HungarianMatcher
from mobius_core.types import Target


def test_calibration_loss_by_hand():
    logit = torch.tensor([[0.4]])
    sigma = 1 / (1 + math.exp(-0.4))
    pos = torch.tensor([[True]])
    got = calibration_loss(logit, pos, torch.tensor([[0.5]]), num_targets=1, alpha=0.25, gamma=2)
    bce = -(0.5 * math.log(sigma) + 0.5 * math.log(1 - sigma))
    assert got.item() == pytest.approx(0.25 * abs(0.5 - sigma) ** 2 * bce, rel=1e-5)
    neg = calibration_loss(logit, ~pos, None, num_targets=2, alpha=0.25, gamma=2)
    assert neg.item() == pytest.approx(0.75 * sigma**2 * -math.log(1 - sigma) / 2, rel=1e-5)


@pytest.mark.parametrize(("start", "iou"), [(2.0, 0.3), (-2.0, 0.7), (0.0, 0.9)])
def test_calibration_gradient_moves_score_towards_iou(start, iou):
    logit = torch.tensor([[start]], requires_grad=True)
    pos = torch.tensor([[True]])
    calibration_loss(logit, pos, torch.tensor([[iou]]), num_targets=1).backward()
    sigma = torch.sigmoid(torch.tensor(start)).item()
    # gradient descent moves the logit towards the IoU
    assert (logit.grad.item() > 0) == (sigma > iou)
    # a few hundred steps land on the IoU
    x = torch.tensor([[start]], requires_grad=True)
    opt = torch.optim.SGD([x], lr=50.0)
    for _ in range(300):
        opt.zero_grad()
        calibration_loss(x, pos, torch.tensor([[iou]]), num_targets=1).backward()
        opt.step()
    assert torch.sigmoid(x).item() == pytest.approx(iou, abs=0.05)


def test_plain_focal_pushes_positives_up_regardless_of_iou():
    logit = torch.tensor([[2.0]], requires_grad=True)  # sigma 0.88 > any IoU below
    calibration_loss(logit, torch.tensor([[True]]), None, num_targets=1).backward()
    assert logit.grad.item() < 0


def test_box_and_mask_losses_by_hand():
    a = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    l1, giou = box_losses(a, a.clone(), 1)
    assert l1.item() == 0 and giou.item() == pytest.approx(0, abs=1e-6)
    l1, _ = box_losses(a, torch.tensor([[0.6, 0.5, 0.2, 0.4]]), 2)
    assert l1.item() == pytest.approx(0.3 / 2)
    empty_l1, empty_giou = box_losses(torch.zeros(0, 4), torch.zeros(0, 4), 1)
    assert empty_l1.item() == 0 and empty_giou.item() == 0
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    perfect = torch.tensor([[20.0, 20.0, -20.0, -20.0]])
    assert dice_loss(perfect, target, 1).item() == pytest.approx(0, abs=1e-4)
    # all wrong: 1 - (0 + 1) / (2 + 2 + 1)
    assert dice_loss(-perfect, target, 1).item() == pytest.approx(0.8, abs=1e-3)
    assert mask_bce_loss(perfect, target, 1).item() < 1e-6


def _batch(random_text_encoder):
    torch.manual_seed(0)
    cfg = load_config(
        "shapes_tiny",
        {
            "model.hidden_dim": 64,
            "model.decoder.num_layers": 2,
            "model.decoder.num_queries": 16,
            "model.decoder.ffn_dim": 64,
            "model.pixel_decoder.ffn_dim": 64,
        },
    )
    model = build_model(cfg, text_encoder=random_text_encoder).train()
    images = torch.full((2, 3, 96, 96), -1.0)
    masks = torch.zeros(2, 1, 96, 96, dtype=torch.bool)
    images[0, :, 10:50, 20:60] = 1.0
    masks[0, 0, 10:50, 20:60] = True
    images[1, :, 40:90, 5:45] = 1.0
    masks[1, 0, 40:90, 5:45] = True
    targets = [
        Target(torch.tensor([0]), torch.tensor([[40 / 96, 30 / 96, 40 / 96, 40 / 96]]), masks[0]),
        Target(torch.tensor([1]), torch.tensor([[25 / 96, 65 / 96, 40 / 96, 50 / 96]]), masks[1]),
    ]
    return model, images, targets


def test_criterion_covers_every_stage(random_text_encoder):
    model, images, targets = _batch(random_text_encoder)
    crit = SetCriterion(HungarianMatcher(num_points=256), num_points=256)
    out = model(images, model.text_encoder(["white square", "white box"]))
    losses = crit(out, targets)
    assert {"class", "bbox", "giou", "mask", "dice", "class_0", "mask_0", "class_sel"} <= set(
        losses
    )
    assert "mask_sel" not in losses  # query selection predicts no masks
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    with pytest.raises(ValueError, match="unknown loss weights"):
        SetCriterion(HungarianMatcher(), weights={"klass": 1.0})


def test_thirty_steps_lower_the_loss(random_text_encoder):
    model, images, targets = _batch(random_text_encoder)
    crit = SetCriterion(HungarianMatcher(num_points=256), num_points=256)
    params = [p for n, p in model.named_parameters() if not n.startswith("text_encoder.")]
    opt = torch.optim.AdamW(params, lr=5e-4)
    text = model.encode_text(["white square", "white box"])
    history = []
    for _ in range(30):
        opt.zero_grad()
        loss = crit(model(images, text), targets)["loss"]
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert sum(history[-5:]) / 5 < 0.7 * sum(history[:5]) / 5
