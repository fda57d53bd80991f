"""Mixed training data: referring, agnostic and box-only sources, ratios, merged prompts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mobius_core.data import synthetic as syn
from mobius_core.data.coco import CocoDataset, DatasetError
from mobius_core.data.mixed import (
    AgnosticSource,
    CategorySource,
    MixedDataset,
    ReferringSource,
    SourceSpec,
    load_sources,
    merge_prompts,
)

SIZE = (96, 96)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = syn.write_split(tmp_path_factory.mktemp("mix"), "train", 6, seed=3, size=SIZE)
    return root


def _dataset(root, masks=True):
    return CocoDataset(root / "annotations.json", root / "images", with_masks=masks)


def test_referring_item_keeps_only_the_referent(split):
    ds = _dataset(split)
    src = ReferringSource(ds, split / "refs.json")
    refs = json.loads((split / "refs.json").read_text())
    assert len(src) == len(refs)
    for index in range(3):
        item = src.item(index, np.random.default_rng(index))
        ref = refs[index]
        assert item.task == "referring" and len(item.prompts) == 1
        assert item.prompts[0] in [s["sent"] for s in ref["sentences"]]
        assert item.sample.ann_ids.tolist() == [ref["ann_id"]]
        assert item.sample.labels.tolist() == [0]
        full = ds[[i["id"] for i in ds.images].index(ref["image_id"])]
        k = full.ann_ids.tolist().index(ref["ann_id"])
        assert np.array_equal(item.sample.masks[0], full.masks[k])
        assert np.allclose(item.sample.boxes[0], full.boxes[k])


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda r: r[0].update(image_id=999), "image_id 999"),
        (lambda r: r[0].update(ann_id=12345), "ann_id 12345"),
        (lambda r: r[0].update(sentences=[{"sent": "  "}]), "no non-empty sentence"),
        (lambda r: r[0].pop("ann_id"), "needs 'image_id', 'ann_id'"),
    ],
)
def test_bad_refs_name_the_file_and_the_ref(split, tmp_path, edit, pattern):
    refs = json.loads((split / "refs.json").read_text())
    edit(refs)
    bad = tmp_path / "refs.json"
    bad.write_text(json.dumps(refs))
    with pytest.raises(DatasetError, match=pattern) as err:
        ReferringSource(_dataset(split), bad)
    assert str(bad) in str(err.value)
    bad.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        ReferringSource(_dataset(split), bad)


def test_agnostic_and_box_only_sources(split):
    item = AgnosticSource(_dataset(split)).item(0, np.random.default_rng(0))
    assert item.prompts == ("object",) and item.task == "agnostic"
    assert len(item.sample.labels) > 0 and not item.sample.labels.any()
    boxes_only = CategorySource(_dataset(split, masks=False)).item(0, np.random.default_rng(0))
    assert boxes_only.sample.masks is None and len(boxes_only.sample.boxes) > 0


def test_ratios_and_determinism(split):
    ds = _dataset(split)
    mixed = MixedDataset(
        [
            SourceSpec("a", CategorySource(ds), 3.0),
            SourceSpec("b", ReferringSource(ds, split / "refs.json"), 1.0),
        ]
    )
    picks = np.array([mixed.source_of(s, seed=0) for s in range(2000)])
    assert 0.70 < (picks == 0).mean() < 0.80  # 3:1
    assert mixed.indices(17, 4, 0) == mixed.indices(17, 4, 0)
    assert mixed.indices(17, 4, 0) != mixed.indices(17, 4, 1)
    with pytest.raises(ValueError, match="ratio must be > 0"):
        MixedDataset([SourceSpec("a", CategorySource(ds), 0.0)])


def test_single_source_walks_every_image_once_per_epoch(split):
    ds = _dataset(split)
    mixed = MixedDataset([SourceSpec("a", CategorySource(ds), 1.0)])
    seen = [i for step in range(3) for i in mixed.indices(step, 2, seed=5)[1]]
    assert sorted(seen) == list(range(len(ds)))


def test_merge_prompts_shares_identical_sets():
    cats = ("red circle", "blue square")
    merged, offsets = merge_prompts([cats, cats, ("the left one",), ("the left one",), ("x",)])
    assert merged == ["red circle", "blue square", "the left one", "x"]
    assert offsets == [0, 0, 2, 2, 3]


def test_load_sources_from_yaml(split, tmp_path):
    (tmp_path / "d.yaml").write_text(
        f"- {{name: shapes, ann: {split}/annotations.json, images: {split}/images, ratio: 2}}\n"
        f"- {{name: refs, ann: {split}/annotations.json, images: {split}/images,"
        f" task: referring, refs: {split}/refs.json}}\n"
        f"- {{name: boxes, ann: {split}/annotations.json, images: {split}/images,"
        f" masks: false}}\n"
    )
    mixed = load_sources(tmp_path / "d.yaml")
    assert [s.name for s in mixed.specs] == ["shapes", "refs", "boxes"]
    assert mixed.probabilities.tolist() == pytest.approx([0.5, 0.25, 0.25])
    (tmp_path / "bad.yaml").write_text(
        f"- {{name: s, ann: {split}/annotations.json, images: {split}/images, ratoi: 2}}\n"
    )
    with pytest.raises(ValueError, match="unknown keys \\['ratoi'\\]"):
        load_sources(tmp_path / "bad.yaml")
    (tmp_path / "bad2.yaml").write_text(
        f"- {{name: s, ann: {split}/annotations.json, images: {split}/images, task: refer}}\n"
    )
    with pytest.raises(ValueError, match="unknown task 'refer'"):
        load_sources(tmp_path / "bad2.yaml")


def test_trainer_batches_from_mixed_sources(split, tmp_path, own_text_encoder):
    from mobius_core.build import build_model
    from mobius_core.config import load_config
    from mobius_core.training.engine import Trainer

    ds = _dataset(split)
    mixed = MixedDataset(
        [
            SourceSpec("boxes", CategorySource(_dataset(split, masks=False)), 1.0),
            SourceSpec("refs", ReferringSource(ds, split / "refs.json"), 1.0),
        ]
    )
    cfg = load_config(
        "shapes_tiny",
        {
            "model.hidden_dim": 64,
            "model.decoder.num_queries": 8,
            "train.batch_size": 3,
            "train.short_sides": [64],
            "train.max_size": 96,
            "train.num_points": 64,
            "train.flip_prob": 0.5,
            "train.hybrid_queries": 8,
            "train.dn_number": 10,
            "train.log_every": 1,
        },
    )
    torch.manual_seed(0)
    trainer = Trainer(cfg, build_model(cfg, own_text_encoder), mixed, tmp_path, progress=False)
    kinds = set()
    for step in range(12):
        _, targets, _, prompts = trainer.batch(step)
        k = mixed.source_of(step, cfg.train.seed)
        kinds.add(k)
        if k == 0:  # box-only category batch: the category names, no masks
            assert prompts == ds.prompts
            assert all(t.masks is None for t in targets)
        else:  # referring: one sentence per image, each target labelled with its own
            assert len(prompts) <= 3
            assert all(len(t) == 1 for t in targets)
            labels = sorted({int(t.labels[0]) for t in targets})
            assert labels == list(range(len(prompts)))
    assert kinds == {0, 1}
    trainer.fit(4)  # both kinds of batch train (box-only: no mask loss) and the loss is finite
    import csv

    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(float(r["loss"])) for r in rows)


def test_flipped_referring_images_get_flipped_sentences(split, tmp_path, own_text_encoder):
    from mobius_core.build import build_model
    from mobius_core.config import load_config
    from mobius_core.training.engine import Trainer

    ds = _dataset(split)
    refs = json.loads((split / "refs.json").read_text())
    sided = [
        r for r in refs if any("left" in s["sent"] or "right" in s["sent"] for s in r["sentences"])
    ]
    assert sided, "the synthetic split should have left/right expressions"
    (tmp_path / "refs.json").write_text(
        json.dumps(
            [
                {
                    **r,
                    "sentences": [
                        s for s in r["sentences"] if "left" in s["sent"] or "right" in s["sent"]
                    ],
                }
                for r in sided
            ]
        )
    )
    mixed = MixedDataset([SourceSpec("refs", ReferringSource(ds, tmp_path / "refs.json"), 1.0)])
    cfg = load_config(
        "shapes_tiny",
        {"model.hidden_dim": 64, "train.batch_size": 1, "train.short_sides": [64],
         "train.max_size": 96, "train.flip_prob": 1.0},
    )  # fmt: skip
    trainer = Trainer(cfg, build_model(cfg, own_text_encoder), mixed, tmp_path, progress=False)
    for step in range(4):
        _, _, _, prompts = trainer.batch(step)
        (item,) = mixed.items(step, 1, cfg.train.seed)
        assert prompts == [syn.flip_expression(item.prompts[0])] != list(item.prompts)
