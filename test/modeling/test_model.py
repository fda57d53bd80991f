"""The assembled model: shapes for every zoo config, gradients, query selection, pruning."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from mobius_core.build import build_model
from mobius_core.config import load_config
from mobius_core.modeling.heads import TextClassifier
from mobius_core.modeling.pruning import PruneSchedule
from mobius_core.modeling.query_selection import LanguageGuidedQuerySelection
from mobius_core.types import ModelOutput, TextEmbeddings, VisualPrompts

PROMPTS = ["red circle", "blue square", "person"]
ZOO = [
    "shapes_tiny",
    "mini_m",
    "mini_l",
    "r50",
    "glee_maskdino",
    "glee_rtdetr",
    "glee_maskdino_mini",
    "glee_rtdetr_mini",
    "mobius_0",
    "mobius_1",
    "mobius_2",
    "mobius_3",
]
SIZE = 128


def _check_output(out: ModelOutput, batch: int, k: int, size: int, max_q: int) -> None:
    q = out.logits.shape[1]
    assert 1 <= q <= max_q
    assert out.logits.shape == (batch, q, k)
    assert out.boxes.shape == (batch, q, 4)
    assert torch.all((out.boxes >= 0) & (out.boxes <= 1))
    assert out.masks.shape == (batch, q, size // 4, size // 4)
    assert out.query_valid.shape == (batch, q) and out.query_valid.dtype == torch.bool
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.masks).all()


@pytest.mark.parametrize("name", ZOO)
def test_zoo_forward_shapes(name, random_text_encoder):
    cfg = load_config(name)
    model = build_model(cfg, text_encoder=random_text_encoder).eval()
    text = model.encode_text(PROMPTS)
    with torch.no_grad():
        out = model(torch.randn(2, 3, SIZE, SIZE), text)
    _check_output(out, 2, len(PROMPTS), SIZE, cfg.model.decoder.num_queries)
    assert out.kept.shape == (2, cfg.model.decoder.num_layers)
    assert out.aux == []


def _small(kind: str, scales: str):
    return load_config(
        "shapes_tiny",
        {
            "model.hidden_dim": 64,
            "model.pixel_decoder.kind": kind,
            "model.pixel_decoder.num_blocks": 1,
            "model.pixel_decoder.ffn_dim": 64,
            "model.decoder.num_layers": 2,
            "model.decoder.num_queries": 12,
            "model.decoder.ffn_dim": 64,
            "model.decoder.scales": scales,
        },
    )


@pytest.mark.parametrize(
    ("kind", "scales"),
    [("bottleneck", "single"), ("bottleneck", "multi"), ("maskdino", "multi"), ("rtdetr", "multi")],
)
def test_gradients_reach_every_trainable_parameter(kind, scales, random_text_encoder):
    torch.manual_seed(0)
    model = build_model(_small(kind, scales), text_encoder=random_text_encoder).train()
    # the zero-initialised last box layer would block gradients to the layers before it
    torch.nn.init.normal_(model.decoder.box_head.layers[-1].weight, std=0.01)
    if model.decoder.shape_head is not None:  # zero-initialised output too
        torch.nn.init.normal_(model.decoder.shape_head.embed.layers[-1].weight, std=0.01)
    text = model.text_encoder(PROMPTS)
    out = model(torch.randn(2, 3, 96, 96), text)
    assert len(out.aux) == 1
    loss = out.logits.sum() + out.boxes.sum() + out.masks.mean()
    for layer in out.aux:
        loss = loss + layer.logits.sum() + layer.boxes.sum() + layer.masks.mean()
    loss = loss + out.selection.logits.sum() + out.selection.box_logits.sum()
    # point/box prompts: the visual prompter's parameters learn through the prompt scores
    boxes = torch.tensor([[[0.3, 0.3, 0.3, 0.3], [0.2, 0.1, 0.7, 0.6]]]).expand(2, -1, -1)
    visual = VisualPrompts(boxes, torch.ones(2, 2, dtype=torch.bool), classify_text=False)
    loss = loss + model(torch.randn(2, 3, 96, 96), text, visual=visual).logits.sum()
    loss.backward()
    missing = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad
        and not n.startswith("text_encoder.")
        and (p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0)
    ]
    assert missing == []
    text_grads = [p.grad for n, p in model.named_parameters() if n.startswith("text_encoder.")]
    assert any(g is not None and g.abs().sum() > 0 for g in text_grads)


def test_query_selection_picks_the_most_similar_tokens():
    torch.manual_seed(0)
    dim, k = 32, 2
    clf = TextClassifier(dim)
    sel = LanguageGuidedQuerySelection(dim, num_queries=3, classifier=clf)
    with torch.no_grad():
        for lin in (sel.enc_output, clf.proj):
            lin.weight.copy_(torch.eye(dim))
            lin.bias.zero_()
    text = torch.randn(k, dim)
    text = text - text.mean(dim=1, keepdim=True)
    memory = torch.randn(1, 64, dim) * 0.3
    memory = memory - memory.mean(dim=2, keepdim=True)  # zero mean: LayerNorm only rescales
    planted = [5, 17, 40]
    memory[0, 5] = 3 * text[0]
    memory[0, 17] = 2 * text[1]
    memory[0, 40] = text[0]
    out = sel(memory, [(8, 8)], text)
    assert sorted(out.indices[0].tolist()) == planted
    assert out.queries.shape == (1, 3, dim) and not out.queries.requires_grad
    assert out.logits.shape == (1, 3, k)


def test_query_selection_boxes_equal_every_token_boxes_gathered():
    """The box head runs on the chosen tokens only; it must equal predicting a box for
    every token and gathering the chosen ones (Eq. 2b), values and gradients."""
    from mobius_core.modeling.heads import inverse_sigmoid
    from mobius_core.modeling.pruning import gather_queries
    from mobius_core.modeling.query_selection import anchor_boxes

    torch.manual_seed(1)
    dim = 16
    sel = LanguageGuidedQuerySelection(dim, num_queries=7, classifier=TextClassifier(dim))
    shapes = [(6, 6), (3, 3)]
    memory = torch.randn(2, 45, dim, requires_grad=True)
    text = torch.randn(3, dim)
    out = sel(memory, shapes, text)
    feats = sel.enc_norm(sel.enc_output(memory))
    every = sel.box_head(feats) + inverse_sigmoid(anchor_boxes(shapes, memory))  # [B,S,4]
    reference = gather_queries(every, out.indices)
    assert out.indices.shape == (2, 7)
    torch.testing.assert_close(out.box_logits, reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.boxes, reference.sigmoid().detach(), rtol=1e-6, atol=1e-6)
    (grad,) = torch.autograd.grad(out.box_logits.square().sum(), memory)
    (ref_grad,) = torch.autograd.grad(reference.square().sum(), memory)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_model(random_text_encoder):
    torch.manual_seed(0)
    cfg = load_config("shapes_tiny", {"model.decoder.num_queries": 40})
    return build_model(cfg, text_encoder=random_text_encoder).eval()


def test_zero_thresholds_change_nothing(tiny_model):
    text = tiny_model.encode_text(PROMPTS)
    images = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        ref = tiny_model(images, text)
        pruned = tiny_model(images, text, prune=PruneSchedule.create("sigmoid", 0.0, 0.0, 1.0, 1))
    torch.testing.assert_close(pruned.logits, ref.logits)
    torch.testing.assert_close(pruned.boxes, ref.boxes)
    torch.testing.assert_close(pruned.masks, ref.masks)
    assert pruned.kept.tolist() == ref.kept.tolist() == [[40, 40, 40]] * 2


@pytest.mark.parametrize("kind", ["sigmoid", "exponential", "logarithmic"])
def test_pruning_is_monotone_and_respects_min_keep(tiny_model, kind):
    text = tiny_model.encode_text(PROMPTS)
    images = torch.randn(3, 3, 160, 160)
    min_keep = 7
    with torch.no_grad():
        out = tiny_model(images, text, prune=PruneSchedule.create(kind, 0.4, 0.9, 2.0, min_keep))
    kept = out.kept
    assert torch.all(kept[:, 1:] <= kept[:, :-1])
    assert torch.all(kept >= min_keep)
    assert out.logits.shape[1] == kept[:, -1].max().item()
    assert out.query_valid.sum(dim=1).tolist() == kept[:, -1].tolist()
    # a stricter schedule keeps no more queries
    with torch.no_grad():
        strict = tiny_model(images, text, prune=PruneSchedule.create(kind, 0.9, 1.0, 2.0, min_keep))
    assert torch.all(strict.kept <= kept)


def test_pruning_is_off_in_training(tiny_model):
    text = tiny_model.encode_text(PROMPTS)
    tiny_model.train()
    try:
        out = tiny_model(torch.randn(1, 3, 128, 128), text, prune=PruneSchedule.fixed([5, 3, 2]))
    finally:
        tiny_model.eval()
    assert out.kept[0].tolist() == [out.logits.shape[1]] * 3
    assert len(out.aux) == 2


def test_fixed_schedule_sets_the_kept_trajectory(tiny_model):
    text = tiny_model.encode_text(PROMPTS)
    with torch.no_grad():
        out = tiny_model(torch.randn(1, 3, 128, 128), text, prune=PruneSchedule.fixed([30, 12, 4]))
    assert out.kept[0].tolist() == [30, 12, 4]
    assert out.masks.shape[1] == 4


def test_pruned_queries_stay_as_self_attention_context(random_text_encoder):
    """Two layers, 12 of 40 queries kept after the first: with the pruned ones as frozen
    keys/values, the second layer sees exactly the context of the unpruned run, so every
    survivor's prediction equals its unpruned one; removing them changes the survivors."""
    torch.manual_seed(0)
    cfg = load_config(
        "shapes_tiny", {"model.decoder.num_queries": 40, "model.decoder.num_layers": 2}
    )
    # float64: a random network amplifies float32 rounding (key order) to ~1e-4 in boxes
    model = build_model(cfg, text_encoder=copy.deepcopy(random_text_encoder)).eval().double()
    t = model.encode_text(PROMPTS)
    text = TextEmbeddings(t.tokens.double(), t.token_mask, t.pooled.double(), t.prompts)
    images = torch.randn(2, 3, 160, 160, dtype=torch.float64)

    def distance_to_unpruned(out, ref):
        # each survivor's (logits, box) against the closest unpruned query's
        a, b = (torch.cat([x.logits, x.boxes], dim=-1) for x in (out, ref))
        return torch.stack([torch.cdist(o, r).min(dim=1).values for o, r in zip(a, b)])

    with torch.no_grad():
        ref = model(images, text)
        kept = model(images, text, prune=PruneSchedule.fixed([12, 12]))
        alone = model(images, text, prune=PruneSchedule.fixed([12, 12], context=False))
    assert kept.kept.tolist() == alone.kept.tolist() == [[12, 12]] * 2
    assert distance_to_unpruned(kept, ref).max() < 1e-6
    assert distance_to_unpruned(alone, ref).max() > 1e-3


def test_bad_image_shape_is_a_clear_error(tiny_model):
    text = tiny_model.encode_text(PROMPTS)
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        tiny_model(torch.randn(3, 64, 64), text)


def test_separable_mask_conv_costs_a_fraction_and_keeps_the_shape(random_text_encoder):
    from mobius_core.flops import count_flops
    from mobius_core.modeling.feature_projection import MaskFeatures

    torch.manual_seed(0)
    full, sep = MaskFeatures(24, 64), MaskFeatures(24, 64, "separable")
    src, s2 = torch.randn(2, 64, 4, 5), torch.randn(2, 24, 16, 20)
    assert full(src, s2).shape == sep(src, s2).shape == (2, 64, 16, 20)
    n_full = sum(p.numel() for p in full.output.parameters())
    n_sep = sum(p.numel() for p in sep.output.parameters())
    assert n_sep < n_full / 5  # 64*9 + 64*64 (+ biases, norm) against 64*64*9
    # the full variant keeps the parameter names of checkpoints trained before the option
    assert "output.0.0.weight" in dict(full.named_parameters())
    with pytest.raises(ValueError, match="separable"):
        MaskFeatures(24, 64, "dilated")
    costs = {
        m: count_flops(build_model(load_config("shapes_tiny", {
            "model.pixel_decoder.mask_conv": m}), text_encoder=random_text_encoder), (320, 320),
            num_prompts=4)["pixel_decoder"]
        for m in ("full", "separable")
    }  # fmt: skip
    assert costs["separable"] < 0.4 * costs["full"]


def test_shape_head_reads_the_mask_outline_and_starts_as_a_no_op():
    from mobius_core.modeling.heads import ShapeHead

    torch.manual_seed(0)
    head = ShapeHead(32, grid=8)
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    disc = ((yy - 20) ** 2 + (xx - 20) ** 2 < 15**2).float()
    square = ((yy - 20).abs() < 15) & ((xx - 20).abs() < 15)
    masks = (torch.stack([disc, square.float()]) * 20 - 10)[None].requires_grad_()  # [1,2,40,40]
    boxes = torch.tensor([[[0.5, 0.5, 0.75, 0.75]] * 2])  # both shapes fill the same box
    assert torch.equal(head(masks, boxes), torch.zeros(1, 2, 32))  # zero-initialised output
    torch.nn.init.normal_(head.embed.layers[-1].weight)
    out = head(masks, boxes)
    assert not torch.allclose(out[0, 0], out[0, 1], atol=1e-3)  # circle != square
    out.sum().backward()
    assert masks.grad is None  # classification does not pull on the masks
    # the same shape twice as large in a box twice as large reads the same
    big = torch.nn.functional.interpolate(disc[None, None], size=(80, 80), mode="nearest")[0, 0]
    canvas = torch.zeros(80, 80)
    canvas[:80, :80] = big
    twice = head((canvas * 20 - 10)[None, None], torch.tensor([[[0.5, 0.5, 0.75, 0.75]]]))
    torch.testing.assert_close(twice[0, 0], out[0, 0].detach(), atol=0.05, rtol=0.05)
    with pytest.raises(ValueError, match="grid"):
        ShapeHead(32, grid=1)


def _polygon(sides: int, turn: float, radius: float = 20.0, size: int = 80):
    yy, xx = torch.meshgrid(torch.arange(size * 1.0), torch.arange(size * 1.0), indexing="ij")
    c = size / 2
    angle = torch.remainder(torch.atan2(yy - c, xx - c) - turn, 2 * math.pi / sides)
    edge = radius * math.cos(math.pi / sides) / torch.cos(angle - math.pi / sides)
    return (torch.sqrt((yy - c) ** 2 + (xx - c) ** 2) < edge).float()


def _tight_box(mask):
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    x0, x1, y0, y1 = xs.min().item(), xs.max().item() + 1, ys.min().item(), ys.max().item() + 1
    n = mask.shape[-1]
    return [(x0 + x1) / 2 / n, (y0 + y1) / 2 / n, (x1 - x0) / n, (y1 - y0) / n]


def test_polar_shape_head_is_rotation_invariant_and_tells_outlines_apart():
    from mobius_core.modeling.heads import ShapeHead

    torch.manual_seed(0)
    head = ShapeHead(32, grid=12, kind="polar")
    assert head.embed.layers[0].in_features == 12 * 12 + 12  # the grid + 12 harmonics
    torch.nn.init.normal_(head.embed.layers[-1].weight)
    for sides in (3, 4, 5, 6):
        spectra = [_harmonics(head, _polygon(sides, turn)) for turn in (0.0, 0.1, 0.3, 0.5, 0.7)]
        for spectrum in spectra:
            assert int(spectrum.argmax()) + 1 == sides  # the polygon's own harmonic leads
            # rotating the object barely changes the description
            assert (spectrum - spectra[0]).abs().max() < 0.5 * spectra[0].max()
    with pytest.raises(ValueError, match="'grid', 'polar', 'spectrum' or 'outline'"):
        ShapeHead(32, grid=4, kind="ring")
    # ``spectrum`` reads the same harmonics, without the grid
    spectrum_head = ShapeHead(32, grid=12, kind="spectrum")
    assert spectrum_head.embed.layers[0].in_features == 12
    hexagon = _polygon(6, 0.3)
    only = spectrum_head.features(
        (hexagon * 20 - 10)[None, None], torch.tensor([[_tight_box(hexagon)]])
    )
    assert only.shape == (1, 1, 12)
    assert torch.allclose(only[0, 0], _harmonics(head, hexagon))
    # detached inputs, and the whole head runs on a batch
    masks = (torch.stack([_polygon(4, 0.2), _polygon(6, 0.0)]) * 20 - 10)[None].requires_grad_()
    boxes = torch.tensor([[_tight_box(_polygon(4, 0.2)), _tight_box(_polygon(6, 0.0))]])
    out = head(masks, boxes)
    assert out.shape == (1, 2, 32) and torch.isfinite(out).all()
    out.sum().backward()
    assert masks.grad is None


def test_outline_shape_head_reads_sorted_extents_that_do_not_turn_with_the_object():
    from mobius_core.modeling.heads import ShapeHead

    head = ShapeHead(32, grid=12, kind="outline")
    assert head.embed.layers[0].in_features == 12 + 12  # harmonics + sorted extents
    assert head.offsets.shape[:2] == (24, 48)  # 2G samples along each of 4G rays

    def describe(mask):
        boxes = torch.tensor([[_tight_box(mask)]])
        return head.features((mask * 20 - 10)[None, None], boxes)[0, 0]

    upright = {sides: describe(_polygon(sides, 0.0)) for sides in (3, 4, 6)}
    for sides in (3, 4, 6):
        for turn in (0.2, 0.45):
            view = describe(_polygon(sides, turn))
            assert int(view[:12].argmax()) + 1 == sides
            ordered = view[12:]
            assert (ordered[1:] >= ordered[:-1]).all()  # shortest to longest
            assert ordered[0] < 0 < ordered[-1]  # extents about their mean (the -1)
            # turned, it still reads nearest to its own upright description
            nearest = min(upright, key=lambda k: float((upright[k] - view).norm()))
            assert nearest == sides
    # a triangle's corners stick out further and its sides dip in deeper than a hexagon's
    triangle, hexagon = describe(_polygon(3, 0.1))[12:], describe(_polygon(6, 0.1))[12:]
    assert triangle[0] < hexagon[0] - 0.1 and triangle[-1] > hexagon[-1] + 0.1
    # a disc reads nearly flat
    disc = describe(_polygon(64, 0.0))[12:]
    assert disc.abs().max() < 0.1


def _harmonics(head, mask):
    """Harmonics 1..12 of the polar head's features for one mask in its tight box."""
    feats = head.features((mask * 20 - 10)[None, None], torch.tensor([[_tight_box(mask)]]))
    return feats[0, 0, 144:]


def test_shape_head_decoder_with_pruning_keeps_masks_and_logits_together(random_text_encoder):
    from mobius_core.modeling.pruning import PruneSchedule

    cfg = load_config(
        "shapes_tiny",
        {"model.hidden_dim": 64, "model.decoder.num_queries": 12, "model.decoder.ffn_dim": 64,
         "model.pixel_decoder.ffn_dim": 64, "model.decoder.shape_grid": 6},
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg, text_encoder=random_text_encoder).eval()
    torch.nn.init.normal_(model.decoder.shape_head.embed.layers[-1].weight, std=0.5)
    text = model.encode_text(PROMPTS)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full = model(images, text)
        pruned = model(images, text, prune=PruneSchedule.fixed([12, 12, 5]))
    _check_output(full, 2, len(PROMPTS), 64, 12)
    assert pruned.logits.shape[1] == 5
    # each kept query keeps its own logits and mask (gathered together)
    for b in range(2):
        for q in range(5):
            match = (full.masks[b] - pruned.masks[b, q]).abs().flatten(1).amax(1).argmin()
            torch.testing.assert_close(full.masks[b, match], pruned.masks[b, q], atol=1e-4, rtol=0)
            torch.testing.assert_close(full.logits[b, match], pruned.logits[b, q], atol=1e-4,
                                       rtol=0)  # fmt: skip
    assert model.decoder.shape_head is not None
    plain = build_model(
        load_config("shapes_tiny", {"model.decoder.shape_grid": 0}),
        text_encoder=random_text_encoder,
    )
    assert plain.decoder.shape_head is None  # shape_grid 0: the paper's decoder
