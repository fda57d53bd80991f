"""Tests for the synthetic open-vocabulary shapes benchmark (``mobius_core.data.synthetic``)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from mobius_core.data import synthetic as syn
from mobius_core.rle import decode_rle

SIZE = (160, 192)  # small and non-square: catches height/width mix-ups


@pytest.fixture(scope="module")
def splits():
    return {s: syn.generate_split(s, 30, seed=3, size=SIZE) for s in syn.SPLITS}


def test_vocabulary_split():
    seen, unseen = set(syn.SEEN_CATEGORIES), set(syn.UNSEEN_CATEGORIES)
    assert len(seen) == len(syn.SEEN_CATEGORIES) and len(unseen) == len(syn.UNSEEN_CATEGORIES)
    assert not seen & unseen
    assert syn.categories("train") == syn.categories("val") == list(syn.SEEN_CATEGORIES)
    assert syn.categories("val_unseen") == list(syn.UNSEEN_CATEGORIES)
    seen_words = {w for n in seen for w in n.split()}
    seen_pairs = {tuple(n.split()) for n in seen}
    for name in unseen:
        colour, shape = name.split()
        assert shape in syn.SHAPES
        # a held-out pair of base colour words, or a synonym colour never used in training
        assert (colour in syn.COLOURS and (colour, shape) not in seen_pairs) or (
            colour in syn.COLOUR_SYNONYMS and colour not in seen_words
        )
    # every visual colour-shape pair appears at most once per split
    for split in syn.SPLITS:
        visual = [
            (syn.COLOUR_SYNONYMS.get(n.split()[0], n.split()[0]), n.split()[1])
            for n in syn.categories(split)
        ]
        assert len(set(visual)) == len(visual)


def test_unknown_split():
    for fn in (
        lambda: syn.categories("test"),
        lambda: syn.generate_split("test", 1),
        lambda: syn.write_split("/nonexistent", "test", 1),
    ):
        with pytest.raises(ValueError, match="train, val, val_unseen"):
            fn()


def test_deterministic_and_prefix_stable(splits):
    a = splits["val"]
    b = syn.generate_split("val", 30, seed=3, size=SIZE)
    assert json.dumps(a["coco"]) == json.dumps(b["coco"])
    assert a["refs"] == b["refs"]
    assert all(np.array_equal(a["images"][k], b["images"][k]) for k in a["images"])
    short = syn.generate_split("val", 7, seed=3, size=SIZE)
    for k, img in short["images"].items():
        assert np.array_equal(img, a["images"][k])
    n_ann = len(short["coco"]["annotations"])
    assert short["coco"]["annotations"] == a["coco"]["annotations"][:n_ann]
    # other seeds / splits give other images
    other = syn.generate_split("val", 1, seed=4, size=SIZE)
    assert not np.array_equal(other["images"][1], a["images"][1])
    assert not np.array_equal(splits["train"]["images"][1], a["images"][1])


def test_annotation_consistency(splits):
    h, w = SIZE
    for split, data in splits.items():
        coco = data["coco"]
        cat_ids = {c["id"]: c["name"] for c in coco["categories"]}
        assert sorted(cat_ids) == list(range(1, len(syn.categories(split)) + 1))
        assert [cat_ids[i] for i in sorted(cat_ids)] == syn.categories(split)
        assert [im["id"] for im in coco["images"]] == list(range(1, 31))
        ann_ids = [a["id"] for a in coco["annotations"]]
        assert ann_ids == list(range(1, len(ann_ids) + 1))
        for im in coco["images"]:
            assert (im["height"], im["width"]) == SIZE
            assert im["file_name"] == f"{split}_{im['id']:06d}.png"
            img = data["images"][im["id"]]
            assert img.dtype == np.uint8 and img.shape == (h, w, 3)
            anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
            assert len(anns) >= 1
            union = np.zeros((h, w), dtype=np.int32)
            for a in anns:
                assert a["category_id"] in cat_ids and a["iscrowd"] == 0
                assert isinstance(a["segmentation"]["counts"], str)
                m = decode_rle(a["segmentation"])
                assert m.shape == (h, w)
                assert int(m.sum()) == a["area"] >= 80
                union += m
                ys, xs = np.nonzero(m)
                x, y, bw, bh = a["bbox"]
                assert (x, y) == (xs.min(), ys.min())
                assert (x + bw, y + bh) == (xs.max() + 1, ys.max() + 1)
            assert union.max() <= 1, "masks of one image overlap"


def test_render_scene_visibility_threshold():
    rng = np.random.default_rng(0)
    for _ in range(20):
        img, insts = syn.render_scene(rng, syn.SEEN_CATEGORIES, size=(128, 128), max_objects=8)
        assert img.shape == (128, 128, 3)
        for inst in insts:
            assert inst["area"] >= max(0.4 * inst["full_area"], 80)
            assert inst["area"] == int(inst["mask"].sum())
            assert inst["name"] == f"{inst['colour']} {inst['shape']}"


def test_unseen_names_never_in_train(splits):
    train = splits["train"]
    train_names = {c["name"] for c in train["coco"]["categories"]}
    sentences = [s["sent"] for r in train["refs"] for s in r["sentences"]]
    assert sentences
    for name in syn.UNSEEN_CATEGORIES:
        assert name not in train_names
        assert not any(name in s for s in sentences)
    for word in syn.COLOUR_SYNONYMS:
        assert not any(word in s.split() for s in sentences)
    # the synonyms do occur in val_unseen
    unseen_words = {
        w for r in splits["val_unseen"]["refs"] for s in r["sentences"] for w in s["sent"].split()
    }
    assert unseen_words & set(syn.COLOUR_SYNONYMS)


def _resolve(sentence, insts):
    """Independent resolver: indices of the instances a sentence is true of."""
    words = sentence.split()
    assert words[0] == "the"
    words = words[1:]
    sup = words.pop(0) if words[0] in syn._SUPERLATIVES else None
    if words == ["shape"]:
        group = list(range(len(insts)))
    elif len(words) == 2 and words[1] == "shape":
        group = [i for i, t in enumerate(insts) if t["colour"] == words[0]]
    elif len(words) == 1:
        assert words[0] in syn.SHAPES
        group = [i for i, t in enumerate(insts) if t["shape"] == words[0]]
    else:
        assert len(words) == 2 and words[1] in syn.SHAPES
        group = [i for i, t in enumerate(insts) if t["name"] == " ".join(words)]
    if sup is None:
        return group
    key = {
        "leftmost": lambda t: -t["cx"],
        "rightmost": lambda t: t["cx"],
        "topmost": lambda t: -t["cy"],
        "bottommost": lambda t: t["cy"],
        "largest": lambda t: t["area"],
        "smallest": lambda t: -t["area"],
    }[sup]
    best = max(key(insts[i]) for i in group)
    return [i for i in group if key(insts[i]) == best]


def test_referring_expressions_unique_and_true(splits):
    n_refs = 0
    for split, data in splits.items():
        cat_names = {c["id"]: c["name"] for c in data["coco"]["categories"]}
        by_image: dict[int, list] = {}
        for a in data["coco"]["annotations"]:
            m = decode_rle(a["segmentation"])
            ys, xs = np.nonzero(m)
            colour, shape = cat_names[a["category_id"]].split()
            by_image.setdefault(a["image_id"], []).append(
                dict(
                    id=a["id"],
                    name=cat_names[a["category_id"]],
                    colour=colour,
                    shape=shape,
                    cx=xs.mean(),
                    cy=ys.mean(),
                    area=int(m.sum()),
                )
            )
        per_image: dict[int, int] = {}
        for ref in data["refs"]:
            insts = by_image[ref["image_id"]]
            ann = next(t for t in insts if t["id"] == ref["ann_id"])
            assert ref["category_id"] == next(
                a["category_id"] for a in data["coco"]["annotations"] if a["id"] == ann["id"]
            )
            per_image[ref["image_id"]] = per_image.get(ref["image_id"], 0) + 1
            assert 1 <= len(ref["sentences"]) <= 2
            for s in ref["sentences"]:
                hits = _resolve(s["sent"], insts)
                assert [insts[i]["id"] for i in hits] == [ref["ann_id"]], (split, s["sent"])
                n_refs += 1
        assert max(per_image.values()) <= 3
        assert [r["ref_id"] for r in data["refs"]] == list(range(1, len(data["refs"]) + 1))
    assert n_refs > 50


def test_flip_expression():
    assert syn.flip_expression("the leftmost blue square") == "the rightmost blue square"
    assert syn.flip_expression("the rightmost circle") == "the leftmost circle"
    assert syn.flip_expression("Left of the right star") == "Right of the left star"
    assert syn.flip_expression("the largest triangle") == "the largest triangle"
    assert syn.flip_expression("brightness") == "brightness"
    s = "the leftmost red shape, right of the rightmost cross"
    assert syn.flip_expression(syn.flip_expression(s)) == s


def test_flip_matches_flipped_image():
    """A leftmost/rightmost expression resolved on the flipped scene picks the same instance."""
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(30):
        _, insts = syn.render_scene(rng, syn.SEEN_CATEGORIES, size=(96, 128))
        for i, sents in syn.referring_expressions(insts, rng, max_refs=5, max_sentences=10):
            flipped = [dict(t, cx=127 - t["centre"][0], cy=t["centre"][1]) for t in insts]
            for s in sents:
                assert _resolve(syn.flip_expression(s), flipped) == [i]
                checked += "most" in s
    assert checked > 10


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_write_split_and_cli(tmp_path, capsys):
    from pycocotools.coco import COCO

    root = syn.write_split(tmp_path, "val_unseen", 4, seed=1, size=SIZE)
    assert root == tmp_path / "val_unseen"
    mem = syn.generate_split("val_unseen", 4, seed=1, size=SIZE)
    coco = COCO(str(root / "annotations.json"))
    assert sorted(coco.getImgIds()) == [1, 2, 3, 4]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(syn.UNSEEN_CATEGORIES)
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert int(coco.annToMask(ann).sum()) == ann["area"]
    for info in coco.loadImgs(coco.getImgIds()):
        with Image.open(root / "images" / info["file_name"]) as im:
            assert im.size == (info["width"], info["height"]) == (SIZE[1], SIZE[0])
            assert np.array_equal(np.asarray(im.convert("RGB")), mem["images"][info["id"]])
    refs = json.loads((root / "refs.json").read_text())
    assert refs == mem["refs"]
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]

    assert (
        syn.main(
            ["--out", str(tmp_path / "cli"), "--split", "all", "--num-images", "2", "--size", "64"]
        )
        == 0
    )
    for split in syn.SPLITS:
        assert len(list((tmp_path / "cli" / split / "images").glob("*.png"))) == 2
        assert (tmp_path / "cli" / split / "refs.json").is_file()


def _split_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("damaged", ["annotations.json", "images/val_000002.png"])
def test_damaged_cached_split_is_generated_again_with_one_warning(tmp_path, caplog, damaged):
    ds = syn.cached_split("val", 3, seed=0, size=(64, 64), root=tmp_path)
    folder = ds.ann_file.parent
    path = folder / damaged
    assert path.is_file(), "the test damages a file the split does not have"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    other = folder / "refs.json"
    other_inode = other.stat().st_ino
    with caplog.at_level(logging.WARNING):
        again = syn.cached_split("val", 3, seed=0, size=(64, 64), root=tmp_path)
    (message,) = _split_warnings(caplog)
    assert str(path) in message and "generating it again" in message
    assert path.read_bytes() == good and len(again) == 3
    assert other.stat().st_ino != other_inode  # the split was written again, whole
    caplog.clear()
    healed_inode = other.stat().st_ino
    syn.cached_split("val", 3, seed=0, size=(64, 64), root=tmp_path)
    assert not _split_warnings(caplog) and other.stat().st_ino == healed_inode  # reused


def test_cached_split_from_an_older_version_is_kept_if_it_loads(tmp_path, caplog):
    ds = syn.cached_split("val", 3, seed=0, size=(64, 64), root=tmp_path)
    marker = ds.ann_file.parents[1] / "complete"
    marker.write_bytes(b"ok\n")  # what older versions wrote
    inode = ds.ann_file.stat().st_ino
    with caplog.at_level(logging.WARNING):
        syn.cached_split("val", 3, seed=0, size=(64, 64), root=tmp_path)
    assert not _split_warnings(caplog) and ds.ann_file.stat().st_ino == inode
    files = json.loads(marker.read_text())["files"]  # recorded now
    assert len(files) == 5 and files["val/annotations.json"]["size"] == ds.ann_file.stat().st_size
