"""PostProcessor on hand-built ModelOutputs whose answers are known; COCO result dicts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mobius_core.postprocess import TASKS, Instances, PostProcessor, instances_to_coco
from mobius_core.rle import decode_rle
from mobius_core.types import ModelOutput

PAD = (64, 64)  # padded network input (H, W); masks at stride 4 are 16x16


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _output(logits, boxes=None, masks=None, valid=None, pad=PAD) -> ModelOutput:
    logits = torch.as_tensor(logits, dtype=torch.float32)
    b, q, _ = logits.shape
    if boxes is None:
        boxes = torch.tensor([0.5, 0.5, 0.2, 0.2]).expand(b, q, 4).clone()
    if masks is None:
        masks = torch.full((b, q, pad[0] // 4, pad[1] // 4), -5.0)
    if valid is None:
        valid = torch.ones(b, q, dtype=torch.bool)
    return ModelOutput(
        logits=logits,
        boxes=torch.as_tensor(boxes, dtype=torch.float32),
        masks=torch.as_tensor(masks, dtype=torch.float32),
        query_valid=torch.as_tensor(valid, dtype=torch.bool),
        kept=torch.full((b, 1), q, dtype=torch.long),
        image_size=pad,
    )


# Q=4 queries x K=3 prompts; query 3 is an invalid padding slot with the highest scores.
PROBS = [
    [0.90, 0.10, 0.35],
    [0.20, 0.80, 0.60],
    [0.50, 0.25, 0.05],
    [0.99, 0.98, 0.97],
]
PROMPTS = ("cat", "dog", "bird")


def _category_output() -> ModelOutput:
    logits = [[[_logit(p) for p in row] for row in PROBS]]
    return _output(logits, valid=[[True, True, True, False]])


def _pairs(inst: Instances) -> list[tuple[int, str, float]]:
    return [
        (int(lab), txt, round(float(s), 4))
        for lab, txt, s in zip(inst.labels, inst.label_texts, inst.scores)
    ]


def test_category_pairs_sorted_thresholded_and_valid_only():
    out = _category_output()
    (inst,) = PostProcessor(score_threshold=0.3)(out, "category", [(64, 64)], [(64, 64)], PROMPTS)
    # (query, prompt) pairs above 0.3 among valid queries, best first
    assert _pairs(inst) == [
        (0, "cat", 0.9),
        (1, "dog", 0.8),
        (2, "bird", 0.6),
        (0, "cat", 0.5),
        (2, "bird", 0.35),
    ]
    assert inst.labels.dtype == np.int64
    assert inst.scores.dtype == np.float32
    assert inst.boxes.shape == (5, 4) and inst.masks.shape == (5, 64, 64)
    assert inst.masks.dtype == bool
    assert len(inst) == 5


def test_category_query_identity_via_boxes():
    out = _category_output()
    # give each query a distinct box so the instance -> query mapping is visible
    out.boxes[0] = torch.tensor([[0.1 * (i + 1), 0.5, 0.1, 0.1] for i in range(4)])
    (inst,) = PostProcessor(score_threshold=0.3)(out, "category", [(64, 64)], [(64, 64)], PROMPTS)
    centres = ((inst.boxes[:, 0] + inst.boxes[:, 2]) / 2 / 64 / 0.1 - 1).round().astype(int)
    assert centres.tolist() == [0, 1, 1, 2, 0]


def test_category_top_k_and_threshold():
    out = _category_output()
    (inst,) = PostProcessor(score_threshold=0.3, top_k=2)(
        out, "category", [(64, 64)], [(64, 64)], PROMPTS
    )
    assert _pairs(inst) == [(0, "cat", 0.9), (1, "dog", 0.8)]
    (inst,) = PostProcessor(score_threshold=0.7)(out, "category", [(64, 64)], [(64, 64)], PROMPTS)
    assert _pairs(inst) == [(0, "cat", 0.9), (1, "dog", 0.8)]
    (inst,) = PostProcessor(score_threshold=0.95)(out, "category", [(64, 64)], [(64, 64)], PROMPTS)
    assert len(inst) == 0
    assert inst.boxes.shape == (0, 4) and inst.masks.shape == (0, 64, 64)
    assert inst.label_texts == []


def test_category_all_invalid_gives_nothing():
    out = _category_output()
    out.query_valid[:] = False
    (inst,) = PostProcessor(score_threshold=-1.0)(out, "category", [(64, 64)], [(64, 64)], PROMPTS)
    assert len(inst) == 0


def test_agnostic_uses_max_over_prompts_and_label_zero():
    out = _category_output()
    (inst,) = PostProcessor(score_threshold=0.3)(out, "agnostic", [(64, 64)], [(64, 64)], PROMPTS)
    # per valid query: max = 0.9, 0.8, 0.5
    assert [round(float(s), 4) for s in inst.scores] == [0.9, 0.8, 0.5]
    assert inst.labels.tolist() == [0, 0, 0]
    assert inst.label_texts == ["cat"] * 3

    single = _output([[[_logit(0.7)], [_logit(0.2)], [_logit(0.4)]]])
    (inst,) = PostProcessor(score_threshold=0.3, top_k=1)(
        single, "agnostic", [(64, 64)], [(64, 64)], ("object",)
    )
    assert _pairs(inst) == [(0, "object", 0.7)]


def test_referring_picks_argmax_valid_query_per_prompt():
    out = _category_output()
    out.boxes[0] = torch.tensor([[0.1 * (i + 1), 0.5, 0.1, 0.1] for i in range(4)])
    # threshold and top_k do not apply to referring
    (inst,) = PostProcessor(score_threshold=0.95, top_k=1)(
        out, "referring", [(64, 64)], [(64, 64)], PROMPTS
    )
    assert _pairs(inst) == [(0, "cat", 0.9), (1, "dog", 0.8), (2, "bird", 0.6)]
    centres = ((inst.boxes[:, 0] + inst.boxes[:, 2]) / 2 / 64 / 0.1 - 1).round().astype(int)
    assert centres.tolist() == [0, 1, 1]  # queries 0, 1, 1 (query 3 is invalid)

    out.query_valid[:] = False
    (inst,) = PostProcessor()(out, "referring", [(64, 64)], [(64, 64)], PROMPTS)
    assert len(inst) == 0


def test_batch_is_processed_per_image():
    logits = torch.tensor([[[_logit(0.9)], [_logit(0.1)]], [[_logit(0.2)], [_logit(0.6)]]])
    out = _output(logits)
    res = PostProcessor()(out, "category", [(64, 64), (128, 32)], [(64, 64), (64, 16)], ("a",))
    assert len(res) == 2
    assert [round(float(s), 4) for s in res[0].scores] == [0.9]
    assert [round(float(s), 4) for s in res[1].scores] == [0.6]
    assert res[0].masks.shape == (1, 64, 64)
    assert res[1].masks.shape == (1, 128, 32)


def test_boxes_scaled_to_original_with_padding():
    # original 200x100 (H, W) resized to 64x32 inside a 64x64 padded input
    boxes = torch.tensor(
        [
            [
                [0.25, 0.5, 0.5, 1.0],  # the whole un-padded region -> whole image
                [0.125, 0.25, 0.125, 0.25],  # padded px [4, 8, 12, 24]
                [0.5, 0.5, 0.5, 0.5],  # padded px [16, 16, 48, 48] -> x clipped at W
            ]
        ]
    )
    out = _output(torch.full((1, 3, 1), 5.0), boxes=boxes)
    (inst,) = PostProcessor()(out, "referring", [(200, 100)], [(64, 32)], ("a",))
    assert len(inst) == 1  # referring: one per prompt
    (inst,) = PostProcessor(score_threshold=0.5)(out, "category", [(200, 100)], [(64, 32)], ("a",))
    order = inst.boxes[:, 0].argsort()  # scores tie; compare as a set ordered by x0
    expected = np.array(
        [
            [0.0, 0.0, 100.0, 200.0],
            [12.5, 25.0, 37.5, 75.0],
            [50.0, 50.0, 100.0, 150.0],
        ]
    )
    np.testing.assert_allclose(inst.boxes[order], expected, rtol=1e-6, atol=1e-4)
    assert inst.masks.shape == (3, 200, 100)


def test_mask_cropped_and_resized_to_original():
    # 64x32 content in a 64x64 padded input -> 16x8 logits of content; original 200x100.
    # Each low-res cell covers 12.5x12.5 original pixels, so a block boundary at cell 8 (rows)
    # or 4 (cols) crosses zero exactly at original row 100 / column 50.
    masks = torch.full((1, 3, 16, 16), -10.0)
    masks[0, 0, :8, :8] = 10.0  # top half of the content
    masks[0, 1, :, 4:8] = 10.0  # right half of the content
    masks[0, 2, :8, :4] = 10.0  # top-left quadrant of the content
    masks[0, :, :, 8:] = 10.0  # padding region: must be cropped away
    out = _output(torch.tensor([[[3.0], [2.0], [1.0]]]), masks=masks)
    (inst,) = PostProcessor()(out, "category", [(200, 100)], [(64, 32)], ("a",))
    assert inst.masks.shape == (3, 200, 100)
    top = np.zeros((200, 100), dtype=bool)
    top[:100] = True
    right = np.zeros((200, 100), dtype=bool)
    right[:, 50:] = True
    assert np.array_equal(inst.masks[0], top)
    assert np.array_equal(inst.masks[1], right)
    # bilinear interpolation rounds the inner corner of the quadrant by a few pixels
    quadrant = inst.masks[2]
    assert not quadrant[100:].any() and not quadrant[:, 50:].any()
    assert quadrant[:100, :45].all() and quadrant[:95, :50].all()
    assert 5000 - 30 < int(quadrant.sum()) <= 5000


def test_mask_threshold_on_logits():
    masks = torch.full((1, 1, 16, 16), 0.5)
    out = _output(torch.tensor([[[3.0]]]), masks=masks)
    (inst,) = PostProcessor(mask_threshold=0.0)(out, "category", [(40, 40)], [(64, 64)], ("a",))
    assert bool(inst.masks.all())
    (inst,) = PostProcessor(mask_threshold=1.0)(out, "category", [(40, 40)], [(64, 64)], ("a",))
    assert not bool(inst.masks.any())


def test_input_size_not_multiple_of_four():
    # 62x30 content -> ceil(62/4)=16 by ceil(30/4)=8 logits are kept
    masks = torch.full((1, 1, 16, 16), 10.0)
    masks[0, 0, :, 8:] = -10.0
    out = _output(torch.tensor([[[3.0]]]), masks=masks)
    (inst,) = PostProcessor()(out, "category", [(31, 15)], [(62, 30)], ("a",))
    assert inst.masks.shape == (1, 31, 15) and bool(inst.masks.all())


def test_score_with_mask_rescales_and_resorts():
    masks = torch.empty(1, 3, 16, 16)
    masks[0, 0] = 0.1  # whole mask, low quality
    masks[0, 1] = 5.0  # whole mask, high quality
    masks[0, 2] = -1.0  # empty mask -> score 0
    logits = torch.tensor([[[2.0], [1.0], [3.0]]])
    out = _output(logits, masks=masks)
    (inst,) = PostProcessor(score_threshold=0.0, score_with_mask=True)(
        out, "category", [(64, 64)], [(64, 64)], ("a",)
    )
    sig = torch.sigmoid
    expected = sorted(
        [
            float(sig(torch.tensor(2.0)) * sig(torch.tensor(0.1))),
            float(sig(torch.tensor(1.0)) * sig(torch.tensor(5.0))),
            0.0,
        ],
        reverse=True,
    )
    np.testing.assert_allclose(inst.scores, np.array(expected, dtype=np.float32), rtol=1e-5)
    assert inst.masks[:2].all() and not inst.masks[2].any()

    (plain,) = PostProcessor(score_threshold=0.0)(out, "category", [(64, 64)], [(64, 64)], ("a",))
    np.testing.assert_allclose(plain.scores, sig(torch.tensor([3.0, 2.0, 1.0])).numpy(), rtol=1e-6)


def test_errors():
    out = _category_output()
    pp = PostProcessor()
    with pytest.raises(ValueError, match=r"category.*agnostic.*referring"):
        pp(out, "panoptic", [(64, 64)], [(64, 64)], PROMPTS)
    with pytest.raises(ValueError, match="prompts"):
        pp(out, "category", [(64, 64)], [(64, 64)], ("cat",))
    with pytest.raises(ValueError, match="image_sizes"):
        pp(out, "category", [(64, 64), (64, 64)], [(64, 64)], PROMPTS)
    assert TASKS == ("category", "agnostic", "referring")


def test_instances_to_coco_format():
    mask_api = pytest.importorskip("pycocotools.mask")
    masks = torch.full((1, 2, 16, 16), -10.0)
    masks[0, 0, :8, :4] = 10.0
    masks[0, 1, 8:16, 4:8] = 10.0
    boxes = torch.tensor([[[0.125, 0.25, 0.125, 0.25], [0.25, 0.5, 0.5, 1.0]]])
    out = _output(torch.tensor([[[3.0], [2.0]]]), boxes=boxes, masks=masks)
    (inst,) = PostProcessor()(out, "category", [(200, 100)], [(64, 32)], ("a",))
    dets = instances_to_coco(inst, image_id=42)
    assert len(dets) == 2
    json.dumps(dets)  # plain Python types only
    for det, mask in zip(dets, inst.masks):
        assert set(det) == {"image_id", "category_id", "score", "bbox", "segmentation"}
        assert det["image_id"] == 42 and det["category_id"] == 0
        assert isinstance(det["score"], float)
        seg = det["segmentation"]
        assert seg["size"] == [200, 100] and isinstance(seg["counts"], str)
        assert np.array_equal(decode_rle(seg), mask)
        ref = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert seg["counts"] == ref["counts"].decode("ascii")
    assert dets[0]["score"] == pytest.approx(float(torch.sigmoid(torch.tensor(3.0))))
    assert dets[0]["bbox"] == pytest.approx([12.5, 25.0, 25.0, 50.0])
    assert dets[1]["bbox"] == pytest.approx([0.0, 0.0, 100.0, 200.0])
    empty = Instances(
        scores=np.zeros(0, np.float32),
        labels=np.zeros(0, np.int64),
        boxes=np.zeros((0, 4), np.float32),
        masks=np.zeros((0, 5, 5), dtype=bool),
    )
    assert instances_to_coco(empty, 1) == []
