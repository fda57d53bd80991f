"""Visual prompter: sampling geometry, per-image prompt scoring, the model's visual path,
prompt sampling for training and the deterministic evaluation click."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobius_core.build import build_model
from mobius_core.config import load_config
from mobius_core.data.visual_prompts import center_click, pad_prompts, sample_visual_prompts
from mobius_core.modeling.heads import TextClassifier
from mobius_core.modeling.visual_prompter import VisualPrompter, prompt_grid, sample_mean
from mobius_core.training.checkpoint import CheckpointError, load_model_weights
from mobius_core.types import Target, VisualPrompts

SMALL = {"model.hidden_dim": 64, "model.decoder.num_layers": 2, "model.decoder.num_queries": 10}


def test_grid_covers_the_box_and_collapses_on_a_point():
    boxes = torch.tensor([[[0.2, 0.4, 0.6, 0.8], [0.3, 0.5, 0.3, 0.5]]])
    pts = prompt_grid(boxes, 2)  # [1,2,4,2]
    expected = torch.tensor([[0.3, 0.5], [0.5, 0.5], [0.3, 0.7], [0.5, 0.7]])
    assert torch.allclose(pts[0, 0], expected)
    assert torch.equal(pts[0, 1], torch.tensor([[0.3, 0.5]] * 4))


def test_sampling_reads_the_feature_under_the_prompt():
    feat = torch.zeros(1, 2, 4, 4)
    feat[0, 0, 1, 2] = 1.0  # cell (row 1, col 2): centre at x=(2+0.5)/4, y=(1+0.5)/4
    feat[0, 1] = 5.0
    point = torch.tensor([[[[0.625, 0.375]]]])  # [B,V,P,2]
    assert sample_mean(feat, point)[0, 0].tolist() == pytest.approx([1.0, 5.0])
    # the 2x2-grid mean over the whole image: one of 4 samples sits on a cell quarter
    whole = prompt_grid(torch.tensor([[[0.0, 0.0, 1.0, 1.0]]]), 4)
    assert sample_mean(feat, whole)[0, 0, 0].item() == pytest.approx(1 / 16)


def test_prompter_tells_points_from_boxes_and_follows_the_location():
    torch.manual_seed(0)
    vp = VisualPrompter(8, grid=2)
    b = torch.randn(1, 8, 5, 5)
    m = torch.randn(1, 8, 20, 20)
    boxes = torch.tensor([[[0.3, 0.3, 0.3, 0.3], [0.7, 0.7, 0.7, 0.7], [0.2, 0.2, 0.4, 0.4]]])
    z = vp(b, m, boxes)
    assert z.shape == (1, 3, 8)
    assert not torch.allclose(z[0, 0], z[0, 1])  # different places, different embeddings
    assert not torch.allclose(z[0, 0], z[0, 2])


def test_classifier_scores_per_image_prompts_like_shared_ones():
    torch.manual_seed(0)
    clf = TextClassifier(8)
    q = torch.randn(2, 5, 8)
    text = torch.randn(3, 8)
    shared = clf(q, text)
    per_image = clf(q, text[None].expand(2, -1, -1))
    assert torch.allclose(shared, per_image, atol=1e-6)
    valid = torch.tensor([[True, True, False], [True, False, True]])
    masked = clf(q, text[None].expand(2, -1, -1).contiguous(), valid)
    assert (masked[0, :, 2] == -1e4).all() and (masked[1, :, 1] == -1e4).all()
    assert torch.equal(masked[0, :, :2], per_image[0, :, :2])


@pytest.fixture(scope="module")
def model(random_text_encoder):
    torch.manual_seed(0)
    cfg = load_config("shapes_tiny", SMALL)
    return build_model(cfg, text_encoder=random_text_encoder).eval()


def test_visual_prompts_add_per_image_columns_after_the_text(model):
    images = model.normalize(torch.rand(2, 3, 64, 96))
    text = model.encode_text(["red circle", "blue square"])
    visual = pad_prompts([torch.tensor([[0.2, 0.2, 0.2, 0.2]]), torch.zeros(0, 4)])
    assert visual.valid.tolist() == [[True], [False]]
    visual.classify_text = True
    out = model(images, text, visual=visual)
    assert out.logits.shape[-1] == 3
    assert (out.logits[1, :, 2] == -1e4).all()  # image 1 has no visual prompt
    alone = model(
        images, model.text_encoder.empty(), visual=VisualPrompts(visual.boxes, visual.valid, False)
    )
    assert alone.logits.shape[-1] == 1
    with pytest.raises(ValueError, match=r"\[B,V,4\]"):
        model(
            images, text, visual=VisualPrompts(torch.zeros(2, 4), torch.ones(2, dtype=torch.bool))
        )


def test_visual_path_refuses_weights_without_a_trained_prompter(random_text_encoder):
    cfg = load_config("shapes_tiny", SMALL)
    trained = build_model(cfg, text_encoder=random_text_encoder)
    state = {k: v for k, v in trained.state_dict().items() if not k.startswith("visual_prompter.")}
    fresh = build_model(cfg, text_encoder=random_text_encoder).eval()
    load_model_weights(fresh, {"model": state}, "old.pt")
    visual = pad_prompts([torch.tensor([[0.5, 0.5, 0.5, 0.5]])])
    text = fresh.encode_text(["red circle"])
    images = fresh.normalize(torch.rand(1, 3, 64, 64))
    fresh(images, text)  # text prompts still work
    with pytest.raises(ValueError, match="no trained visual prompter"):
        fresh(images, text, visual=visual)
    state["decoder.bogus"] = torch.zeros(1)  # other mismatches still fail loudly
    with pytest.raises(CheckpointError, match="unexpected"):
        load_model_weights(fresh, {"model": state}, "bad.pt")


def test_training_prompts_fall_inside_their_instances():
    masks = torch.zeros(2, 40, 50, dtype=torch.bool)
    masks[0, 5:15, 5:20] = True
    masks[1, 20:38, 30:48] = True
    boxes = torch.tensor(
        [[12.5 / 50, 10 / 40, 15 / 50, 10 / 40], [39 / 50, 29 / 40, 18 / 50, 18 / 40]]
    )
    targets = [
        Target(torch.tensor([3, 1]), boxes, masks),
        Target(
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, 4),
            torch.zeros(0, 40, 50, dtype=torch.bool),
        ),
    ]
    for seed in range(20):
        rng = np.random.default_rng(seed)
        visual, new = sample_visual_prompts(targets, rng, per_image=2, box_prob=0.5)
        assert visual.boxes.shape == (2, 2, 4) and visual.valid.tolist() == [
            [True, True],
            [False, False],
        ]
        assert not visual.classify_text
        assert new[0].labels.tolist() == [0, 1] and len(new[1]) == 0
        for j in range(2):
            x0, y0, x1, y1 = visual.boxes[0, j].tolist()
            mask = new[0].masks[j]
            if x0 == x1 and y0 == y1:  # a point: inside its own instance's mask
                assert mask[int(y0 * 40), int(x0 * 50)]
            else:  # a box: overlaps its instance's box well
                ys, xs = torch.nonzero(mask, as_tuple=True)
                gt = [xs.min() / 50, ys.min() / 40, (xs.max() + 1) / 50, (ys.max() + 1) / 40]
                ix = max(0.0, min(x1, gt[2]) - max(x0, gt[0])) * max(
                    0.0, min(y1, gt[3]) - max(y0, gt[1])
                )
                union = (x1 - x0) * (y1 - y0) + (gt[2] - gt[0]) * (gt[3] - gt[1]) - ix
                assert ix / union > 0.5


def test_center_click_is_the_point_deepest_inside():
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:12, 3:25] = True  # 10 x 22 rectangle: deepest row 6 or 7
    x, y = center_click(mask)
    assert mask[int(y), int(x)] and 6 <= int(y) <= 7 and 7 <= int(x) <= 20
    ring = np.zeros((30, 30), dtype=bool)
    ring[5:25, 5:25] = True
    ring[10:20, 10:20] = False  # a hole: the click never lands in it
    x, y = center_click(ring)
    assert ring[int(y), int(x)]
    edge = np.zeros((10, 10), dtype=bool)
    edge[:, :3] = True  # touching the image border: the border counts as boundary
    assert int(center_click(edge)[0]) == 1
