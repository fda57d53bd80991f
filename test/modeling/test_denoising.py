"""Training-only extra queries: denoising groups, one-to-many queries, their isolation."""

from __future__ import annotations

import pytest
import torch

from mobius_core.build import build_model
from mobius_core.config import load_config
from mobius_core.modeling.denoising import (
    build_denoising_queries,
    noise_boxes,
    training_attention_mask,
)
from mobius_core.training.criterion import repeat_target
from mobius_core.training.engine import build_criterion
from mobius_core.types import Target

PROMPTS = ["red circle", "blue square", "green star"]


def _target(n: int, k: int = 3, size: int = 64) -> Target:
    g = torch.Generator().manual_seed(n)
    centres = torch.rand(n, 2, generator=g) * 0.5 + 0.25
    wh = torch.rand(n, 2, generator=g) * 0.2 + 0.1
    masks = torch.zeros(n, size, size)
    for i in range(n):
        cx, cy = (centres[i] * size).long().tolist()
        masks[i, max(cy - 5, 0) : cy + 5, max(cx - 5, 0) : cx + 5] = 1
    return Target(torch.arange(n) % k, torch.cat([centres, wh], 1), masks)


def test_groups_slots_and_exact_copies_without_noise():
    emb = torch.randn(3, 8)
    targets = [_target(2), _target(4)]
    dn = build_denoising_queries(targets, emb, dn_number=10, label_noise=0.0, box_noise=0.0)
    assert dn.groups == 10 // 4 and dn.group_size == 4 and dn.size == 8
    assert dn.queries.shape == (2, 8, 8) and dn.boxes.shape == (2, 8, 4)
    # image 0 has 2 instances: slots 0,1 of group 0 and 4,5 of group 1
    assert dn.slots[0].tolist() == [0, 1, 4, 5]
    assert dn.instances[0].tolist() == [0, 1, 0, 1]
    assert dn.slots[1].tolist() == list(range(8))
    for b, t in enumerate(targets):
        s, i = dn.slots[b], dn.instances[b]
        torch.testing.assert_close(dn.queries[b, s], emb[t.labels[i]])
        torch.testing.assert_close(dn.boxes[b, s], t.boxes[i])


def test_no_queries_without_instances_or_budget():
    emb = torch.randn(3, 8)
    assert build_denoising_queries([_target(0)], emb, dn_number=10) is None
    assert build_denoising_queries([_target(2)], emb, dn_number=0) is None


def test_label_noise_flips_about_the_asked_fraction():
    emb = torch.eye(50)
    t = Target(torch.zeros(100, dtype=torch.long), torch.full((100, 4), 0.5), None)
    g = torch.Generator().manual_seed(0)
    dn = build_denoising_queries([t], emb, dn_number=100, label_noise=0.5, generator=g)
    labels = dn.queries[0, dn.slots[0]].argmax(-1)
    flipped = (labels != 0).float().mean().item()
    assert 0.35 < flipped < 0.6  # 0.5 * 49/50 expected


def test_box_noise_stays_within_its_bounds():
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4]]).repeat(500, 1)
    noisy = noise_boxes(boxes, 0.4, torch.Generator().manual_seed(0))
    shift = (noisy[:, :2] - boxes[:, :2]).abs()
    assert torch.all(shift <= boxes[:, 2:] * 0.2 + 1e-6)
    ratio = noisy[:, 2:] / boxes[:, 2:]
    assert torch.all((ratio >= 0.6 - 1e-6) & (ratio <= 1.4 + 1e-6))
    assert shift.max() > 0.05  # the noise is real
    assert torch.equal(noise_boxes(boxes, 0.0), boxes)


def test_attention_mask_isolates_the_parts():
    mask = training_attention_mask(2, 3, 4, 5)  # [DN 6 | main 4 | hybrid 5]
    assert mask.shape == (15, 15)
    main, hyb = slice(6, 10), slice(10, 15)
    assert not mask[main, main].any() and mask[main, :6].all() and mask[main, hyb].all()
    assert not mask[hyb, hyb].any() and mask[hyb, :10].all()
    assert not mask[:3, :3].any() and mask[:3, 3:].all()  # group 0 sees only itself
    assert not mask[3:6, 3:6].any() and mask[3:6, :3].all()
    assert training_attention_mask(0, 0, 4, 0) is None
    assert training_attention_mask(0, 0, 4, 2).shape == (6, 6)


@pytest.fixture(scope="module")
def small_model(random_text_encoder):
    cfg = load_config(
        "shapes_tiny",
        {"model.hidden_dim": 64, "model.decoder.num_queries": 6, "model.decoder.ffn_dim": 64},
    )
    torch.manual_seed(0)
    return build_model(cfg, text_encoder=random_text_encoder)


def test_extra_queries_leave_the_one_to_one_predictions_unchanged(small_model):
    model = small_model.train()
    text = model.encode_text(PROMPTS)
    images = torch.randn(2, 3, 64, 64)
    targets = [_target(2), _target(3)]
    model.configure_training_queries(0, hybrid_queries=0)
    plain = model(images, text, targets=targets)
    model.configure_training_queries(dn_number=6, hybrid_queries=5)
    try:
        out = model(images, text, targets=targets)
    finally:
        model.configure_training_queries(0, hybrid_queries=0)
    torch.testing.assert_close(out.logits, plain.logits)
    torch.testing.assert_close(out.boxes, plain.boxes)
    torch.testing.assert_close(out.masks, plain.masks)
    for a, b in zip(out.aux, plain.aux):
        torch.testing.assert_close(a.logits, b.logits)
    layers = model.decoder.num_layers
    assert len(out.denoising) == layers and len(out.hybrid) == layers
    assert out.denoising[0].logits.shape == (2, 6, 3)  # 6 // 3 = 2 groups of 3 slots
    assert out.hybrid[-1].masks.shape == (2, 5, 16, 16)
    assert out.selection.logits.shape[1] == 6
    assert [len(s) for s, _ in out.dn_assignment] == [4, 6]
    # inference ignores targets and the training queries
    model.eval()
    with torch.no_grad():
        ev = model(images, text, targets=targets)
    assert ev.logits.shape[1] == 6 and ev.denoising == [] and ev.hybrid == []


def test_criterion_adds_denoising_and_one_to_many_terms(small_model):
    cfg = load_config("shapes_tiny", {"train.num_points": 64, "train.hybrid_k": 2})
    criterion = build_criterion(cfg)
    model = small_model.train()
    text = model.encode_text(PROMPTS)
    targets = [_target(2), _target(3)]
    model.configure_training_queries(dn_number=6, hybrid_queries=5)
    try:
        out = model(torch.randn(2, 3, 64, 64), text, targets=targets)
    finally:
        model.configure_training_queries(0, hybrid_queries=0)
    losses = criterion(out, targets)
    for term in ("class", "bbox", "giou", "mask", "dice"):
        assert torch.isfinite(losses[f"{term}_dn"]) and torch.isfinite(losses[f"{term}_o2m"])
    plain = sum(
        criterion.weights[k.split("_")[0]] * v
        for k, v in losses.items()
        if k != "loss" and not k.endswith(("_dn", "_o2m"))
    )
    extra = sum(
        criterion.weights[k.split("_")[0]] * v
        for k, v in losses.items()
        if k.endswith(("_dn", "_o2m"))
    )
    torch.testing.assert_close(losses["loss"], plain + extra)
    assert extra > 0
    losses["loss"].backward()
    assert model.text_proj.weight.grad is not None  # DN content comes from the prompts
    model.zero_grad(set_to_none=True)


def test_denoising_box_loss_is_zero_for_exact_reconstruction():
    cfg = load_config("shapes_tiny", {"train.num_points": 64})
    criterion = build_criterion(cfg)
    t = _target(3)
    assignment = [(torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([0, 1, 2, 0, 1, 2]))]
    boxes = t.boxes.repeat(2, 1)[None]
    logits = torch.zeros(1, 6, 3)
    losses = criterion.assigned_losses(logits, boxes, None, [t], assignment, 6.0)
    assert losses["bbox"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["giou"].item() == pytest.approx(0.0, abs=1e-5)


def test_repeat_target_repeats_every_field():
    t = _target(2)
    r = repeat_target(t, 3)
    assert r.labels.tolist() == t.labels.tolist() * 3
    torch.testing.assert_close(r.boxes[2:4], t.boxes)
    assert r.masks.shape == (6, 64, 64)
    assert repeat_target(Target(t.labels, t.boxes, None), 2).masks is None
