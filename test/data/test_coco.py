"""COCO-format loading, label space, resizing/flipping and batching."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mobius_core.data.coco import CocoDataset, DatasetError, LabelSpace, polygons_to_mask
from mobius_core.data.transforms import ResizeFlip, collate, resized_size
from mobius_core.rle import encode_rle


def _write(tmp_path, anns, categories=None, images=None, make_image=True):
    mask = np.zeros((40, 60), dtype=bool)
    mask[10:30, 5:25] = True
    if make_image:
        arr = np.zeros((40, 60, 3), dtype=np.uint8)
        arr[mask] = 255
        Image.fromarray(arr).save(tmp_path / "a.png")
    data = {
        "images": images or [{"id": 7, "file_name": "a.png", "height": 40, "width": 60}],
        "annotations": anns,
        "categories": categories or [{"id": 3, "name": "red_circle"}, {"id": 9, "name": "cup"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path, mask


def _ann(i, seg, cat=9, bbox=(5, 10, 20, 20), crowd=0):
    return {"id": i, "image_id": 7, "category_id": cat, "bbox": list(bbox), "area": 400,
            "iscrowd": crowd, "segmentation": seg}  # fmt: skip


def test_label_space_is_contiguous_and_sorted():
    ls = LabelSpace.from_coco([{"id": 9, "name": "cup"}, {"id": 3, "name": "red_circle"}])
    assert ls.names == ("red circle", "cup") and ls.index_of() == {3: 0, 9: 1}


def test_loads_rle_and_polygon_masks(tmp_path):
    mask = np.zeros((40, 60), dtype=bool)
    mask[10:30, 5:25] = True
    poly = [[5, 10, 25, 10, 25, 30, 5, 30]]
    path, _ = _write(tmp_path, [_ann(1, encode_rle(mask)), _ann(2, poly, cat=3)])
    ds = CocoDataset(path, tmp_path)
    s = ds[0]
    assert s.image.shape == (40, 60, 3) and s.image_id == 7
    assert s.labels.tolist() == [1, 0]
    assert np.array_equal(s.masks[0], mask)
    assert abs(int(s.masks[1].sum()) - 400) < 60  # polygon raster ~ 20x20
    np.testing.assert_allclose(s.boxes[0], [5, 10, 25, 30])


@pytest.mark.parametrize(
    ("anns", "pattern"),
    [
        ([_ann(1, [[1, 2, 3]])], "annotation 1 has a bad segmentation"),
        ([_ann(5, [[1, 2, 3, 4, 5, 6]], cat=42)], "annotation 5 has category_id 42"),
        ([{**_ann(6, [[1, 2, 3, 4, 5, 6]]), "image_id": 99}], "annotation 6 refers to image_id 99"),
    ],
)
def test_bad_records_name_file_and_record(tmp_path, anns, pattern):
    path, _ = _write(tmp_path, anns)
    with pytest.raises(DatasetError, match=pattern) as err:
        CocoDataset(path, tmp_path)[0]
    assert "ann.json" in str(err.value)


def test_missing_image_and_bad_json(tmp_path):
    path, _ = _write(tmp_path, [], make_image=False)
    with pytest.raises(DatasetError, match=r"a\.png is missing"):
        CocoDataset(path, tmp_path)[0]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        CocoDataset(bad, tmp_path)
    (tmp_path / "nolist.json").write_text("{}")
    with pytest.raises(DatasetError, match="no 'images'"):
        CocoDataset(tmp_path / "nolist.json", tmp_path)


def test_polygon_errors():
    with pytest.raises(ValueError, match="3"):
        polygons_to_mask([[1, 2, 3, 4]], 10, 10)


def test_resize_flip_and_collate(tmp_path):
    mask = np.zeros((40, 60), dtype=bool)
    mask[10:30, 5:25] = True
    path, _ = _write(tmp_path, [_ann(1, encode_rle(mask)), _ann(2, encode_rle(mask), crowd=1)])
    sample = CocoDataset(path, tmp_path)[0]
    assert resized_size(40, 60, 80, 1333) == (80, 120)
    assert resized_size(40, 60, 80, 100) == (67, 100)
    plain = ResizeFlip((80,), flip_prob=0.0)(sample, np.random.default_rng(0))
    assert plain.image.shape == (3, 80, 120) and len(plain.labels) == 1  # crowd dropped
    torch.testing.assert_close(plain.boxes[0], torch.tensor([10.0, 20.0, 50.0, 60.0]))
    flipped = ResizeFlip((80,), flip_prob=1.0)(sample, np.random.default_rng(0))
    assert flipped.flipped
    torch.testing.assert_close(flipped.boxes[0], torch.tensor([70.0, 20.0, 110.0, 60.0]))
    assert torch.equal(flipped.masks[0], plain.masks[0].flip(-1))
    images, targets, sizes = collate([plain, flipped])
    assert images.shape == (2, 3, 96, 128) and sizes == [(80, 120), (80, 120)]
    torch.testing.assert_close(
        targets[0].boxes[0], torch.tensor([30 / 128, 40 / 96, 40 / 128, 40 / 96])
    )
    assert targets[0].masks.shape == (1, 96, 128) and not targets[0].masks[0, 80:].any()


def _square_sample(h: int, w: int, label: int, y: int, x: int, side: int, masks: bool = True):
    from mobius_core.data.coco import Sample

    image = np.zeros((h, w, 3), np.uint8)
    m = np.zeros((h, w), bool)
    m[y : y + side, x : x + side] = True
    image[m] = 50 * (label + 1)
    return Sample(
        image=image,
        boxes=np.asarray([[x, y, x + side, y + side]], np.float32),
        labels=np.asarray([label], np.int64),
        masks=m[None] if masks else None,
        iscrowd=np.zeros(1, bool),
        image_id=label,
        file_name=f"{label}.png",
        ann_ids=np.asarray([label], np.int64),
    )


def test_mosaic_keeps_what_is_visible_with_boxes_that_fit():
    from mobius_core.data.transforms import mosaic

    # one square in each image's middle: at scale 1 the window always shows some of each
    samples = [_square_sample(64, 64, k, 24, 24, 16) for k in range(4)]
    for seed in range(20):
        out = mosaic(samples, np.random.default_rng(seed), min_scale=1.0, min_visible=0.0,
                     min_pixels=1)  # fmt: skip
        assert out.image.shape == (64, 64, 3)
        for box, m, label in zip(out.boxes, out.masks, out.labels):
            ys, xs = np.nonzero(m)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert (out.image[m] == 50 * (label + 1)).all()  # the mask is on its own pixels
        assert out.ann_ids.tolist() == out.labels.tolist()
    # at scale 0.5 the window is the whole canvas: all four, each at half size
    whole = mosaic(samples, np.random.default_rng(0), min_scale=0.5)
    whole_scale = [mosaic(samples, np.random.default_rng(s), min_scale=0.5) for s in range(30)]
    full = [o for o in [whole, *whole_scale] if len(o.labels) == 4]
    assert full, "some window at scale near 0.5 shows all four squares"
    assert all(o.masks.sum(axis=(1, 2)).max() < 16 * 16 for o in full)
    # min_visible drops what is mostly outside: a corner square
    corner = [_square_sample(64, 64, k, 0, 0, 16) for k in range(4)]
    out = mosaic(corner, np.random.default_rng(1), min_scale=1.0, min_visible=0.99)
    for m in out.masks:
        assert m.sum() == 16 * 16  # only squares seen whole are kept


def test_mosaic_box_only_and_bad_input():
    from mobius_core.data.transforms import mosaic

    samples = [_square_sample(64, 64, k, 24, 24, 16, masks=False) for k in range(4)]
    out = mosaic(samples, np.random.default_rng(0), min_scale=1.0, min_visible=0.0)
    assert out.masks is None and len(out.labels) >= 1
    assert (out.boxes[:, 2:] > out.boxes[:, :2]).all()
    assert (out.boxes >= 0).all() and (out.boxes <= 64).all()
    with pytest.raises(ValueError, match="4 samples"):
        mosaic(samples[:3], np.random.default_rng(0))
    mixed = samples[:3] + [_square_sample(64, 64, 3, 24, 24, 16)]
    with pytest.raises(ValueError, match="all four samples with masks"):
        mosaic(mixed, np.random.default_rng(0))
    with pytest.raises(ValueError, match="min_scale"):
        mosaic(samples, np.random.default_rng(0), min_scale=0.2)
