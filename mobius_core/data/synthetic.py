"""Deterministic synthetic open-vocabulary instance-segmentation benchmark ("coloured shapes").

Each image shows 2-6 coloured geometric shapes on a varied background (flat colour, gradient,
smooth noise texture or stripes). Shapes have a random size (radius 18-70 px at 320x320; the
range scales with ``min(H, W) / 320``), rotation, a small colour jitter and an optional texture
(light noise, or stripes of a darker shade; lighter for black shapes). Later shapes are drawn over
earlier ones, so masks hold *visible* pixels only and never overlap; a shape is only placed when
every earlier shape keeps at least 40% of its unoccluded area and at least 80 px.

Vocabulary
----------
Shapes: ``circle, square, triangle, star, hexagon, cross``. Colours (base RGB, jittered by up to
+-12 per channel when drawn): ``red, green, blue, yellow, purple, orange, white, black``.
A category name is ``"<colour> <shape>"``; a category's colour word may be a synonym
(``COLOUR_SYNONYMS``) that is rendered like its base colour.

Splits
------
- ``train`` and ``val`` use ``SEEN_CATEGORIES``: the 36 colour-shape pairs that are not held out,
  named with the base colour words.
- ``val_unseen`` uses ``UNSEEN_CATEGORIES`` (20 names):

  * the 12 held-out pairs (``HELD_OUT_PAIRS``), never drawn in train/val: green circle, purple
    circle, red square, white square, blue triangle, orange triangle, yellow star, black star,
    red hexagon, blue hexagon, purple cross, yellow cross;
  * 8 synonym names of seen pairs, one per colour, whose colour word never occurs in training:
    crimson circle, emerald square, azure star, golden hexagon, violet triangle, tangerine cross,
    ivory star, ebony triangle.

  Shape words are the same in every split. No ``val_unseen`` name occurs in train/val category
  names or referring expressions.

Within one split every category is a distinct visual colour-shape pair, so names are unambiguous.

Referring expressions (RefCOCO ``refs`` style) describe one instance uniquely by construction,
e.g. "the yellow hexagon", "the leftmost blue square", "the largest triangle", "the smallest
green shape", "the topmost shape". Positions use the centroid of the visible mask and a margin
of 8 px; sizes use the visible area and a ratio of 1.3, so the referent is clearly the extreme.
Horizontal flips must be handled by the consumer with ``flip_expression``.

Determinism: image ``i`` of ``split`` with ``seed`` is rendered from
``numpy.random.default_rng([seed, split_offset, i])``, so it does not depend on ``num_images``.
Image ids are ``i + 1``; annotation and ref ids are consecutive from 1 in image order.

CLI: ``python -m mobius_core.data.synthetic --out DIR --split val --num-images 5``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..atomic import atomic_write_bytes
from ..rle import encode_rle

__all__ = [
    "COLOURS",
    "COLOUR_SYNONYMS",
    "HELD_OUT_PAIRS",
    "SEEN_CATEGORIES",
    "SHAPES",
    "SPLITS",
    "UNSEEN_CATEGORIES",
    "categories",
    "flip_expression",
    "generate_split",
    "main",
    "referring_expressions",
    "render_scene",
    "write_split",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 40),
    "purple": (145, 60, 185),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}

#: Synonym colour word -> base colour; used only in ``val_unseen`` names.
COLOUR_SYNONYMS: dict[str, str] = {
    "crimson": "red",
    "emerald": "green",
    "azure": "blue",
    "golden": "yellow",
    "violet": "purple",
    "tangerine": "orange",
    "ivory": "white",
    "ebony": "black",
}

#: (colour, shape) pairs never drawn in train/val.
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("green", "circle"),
    ("purple", "circle"),
    ("red", "square"),
    ("white", "square"),
    ("blue", "triangle"),
    ("orange", "triangle"),
    ("yellow", "star"),
    ("black", "star"),
    ("red", "hexagon"),
    ("blue", "hexagon"),
    ("purple", "cross"),
    ("yellow", "cross"),
)

_SYNONYM_SHAPES: dict[str, str] = {
    "crimson": "circle",
    "emerald": "square",
    "azure": "star",
    "golden": "hexagon",
    "violet": "triangle",
    "tangerine": "cross",
    "ivory": "star",
    "ebony": "triangle",
}

SEEN_CATEGORIES: tuple[str, ...] = tuple(
    f"{c} {s}" for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT_PAIRS
)
UNSEEN_CATEGORIES: tuple[str, ...] = tuple(f"{c} {s}" for c, s in HELD_OUT_PAIRS) + tuple(
    f"{syn} {shape}" for syn, shape in _SYNONYM_SHAPES.items()
)

SPLITS: tuple[str, ...] = ("train", "val", "val_unseen")
_SPLIT_OFFSET = {"train": 0, "val": 1, "val_unseen": 2}

_MIN_VISIBLE_FRACTION = 0.4
_MIN_VISIBLE_AREA = 80
_POSITION_MARGIN = 8.0
_AREA_RATIO = 1.3
_SUPERLATIVES = {
    # word: (attribute, True for the maximum)
    "leftmost": ("x", False),
    "rightmost": ("x", True),
    "topmost": ("y", False),
    "bottommost": ("y", True),
    "largest": ("area", True),
    "smallest": ("area", False),
}


def categories(split: str) -> list[str]:
    """Category names of ``split`` (``"train"``, ``"val"`` or ``"val_unseen"``), in id order.

    Raises:
        ValueError: unknown split.
    """
    _check_split(split)
    return list(UNSEEN_CATEGORIES if split == "val_unseen" else SEEN_CATEGORIES)


def _check_split(split: str) -> None:
    if split not in _SPLIT_OFFSET:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def _parse_category(name: str) -> tuple[str, str, str]:
    """``"crimson circle"`` -> (colour word, base colour, shape)."""
    parts = name.split()
    if len(parts) != 2 or parts[1] not in SHAPES:
        raise ValueError(f"bad category name {name!r}: expected '<colour> <shape>'")
    word, shape = parts
    base = COLOUR_SYNONYMS.get(word, word)
    if base not in COLOURS:
        raise ValueError(f"bad category name {name!r}: unknown colour {word!r}")
    return word, base, shape


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _background_colour(rng: np.random.Generator) -> np.ndarray:
    """A muted colour (grey plus a small tint), so every object colour stays visible on it."""
    grey = rng.uniform(75.0, 185.0)
    return np.clip(grey + rng.uniform(-25.0, 25.0, size=3), 0, 255).astype(np.float32)


def _render_background(
    rng: np.random.Generator, h: int, w: int, xs: np.ndarray, ys: np.ndarray
) -> np.ndarray:
    kind = rng.integers(4)
    c0 = _background_colour(rng)
    if kind == 0:  # flat
        return np.broadcast_to(c0, (h, w, 3)).copy()
    if kind == 1:  # linear gradient along a random direction
        c1 = _background_colour(rng)
        a = rng.uniform(0, 2 * np.pi)
        u = xs * np.cos(a) + ys * np.sin(a)
        t = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
        return c0 + t[..., None] * (c1 - c0)
    if kind == 2:  # smooth noise texture: upsampled coarse noise plus fine grain
        cells = int(rng.integers(4, 16))
        coarse = rng.normal(0.0, 18.0, size=(cells, cells)).astype(np.float32)
        smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR))
        grain = rng.normal(0.0, 5.0, size=(h, w)).astype(np.float32)
        return c0 + (smooth + grain)[..., None]
    # stripes of two muted colours
    c1 = _background_colour(rng)
    a = rng.uniform(0, np.pi)
    period = rng.uniform(16.0, 48.0)
    u = xs * np.cos(a) + ys * np.sin(a)
    on = (np.floor(u / (period / 2)) % 2).astype(bool)
    return np.where(on[..., None], c1, c0)


def _shape_polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple]:
    """Vertices of ``shape`` with circumradius ``r`` around (cx, cy), rotated by ``rot``."""
    if shape == "square":
        ang = rot + np.pi / 4 + np.arange(4) * np.pi / 2
        rad = np.full(4, r)
    elif shape == "triangle":
        ang = rot + np.arange(3) * 2 * np.pi / 3
        rad = np.full(3, r)
    elif shape == "hexagon":
        ang = rot + np.arange(6) * np.pi / 3
        rad = np.full(6, r)
    elif shape == "star":
        ang = rot + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    elif shape == "cross":
        a = 0.34 * r
        local = np.array(
            [(a, r), (a, a), (r, a), (r, -a), (a, -a), (a, -r)]
            + [(-a, -r), (-a, -a), (-r, -a), (-r, a), (-a, a), (-a, r)]
        )
        c, s = np.cos(rot), np.sin(rot)
        px = cx + local[:, 0] * c - local[:, 1] * s
        py = cy + local[:, 0] * s + local[:, 1] * c
        return list(zip(px.tolist(), py.tolist()))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return list(zip((cx + rad * np.cos(ang)).tolist(), (cy + rad * np.sin(ang)).tolist()))


def _shape_mask(shape: str, h: int, w: int, cx: float, cy: float, r: float, rot: float):
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, r, rot), fill=255)
    return np.asarray(img) > 0


def _object_pixels(
    rng: np.random.Generator, rgb: np.ndarray, base: str, xs: np.ndarray, ys: np.ndarray
) -> np.ndarray:
    """Object colour as an ``[H, W, 3]`` texture, or a constant ``[3]`` colour when plain."""
    kind = rng.integers(3)
    if kind == 0:
        return rgb
    if kind == 1:  # light luminance noise
        noise = rng.normal(0.0, 9.0, size=xs.shape).astype(np.float32)
        return rgb + noise[..., None]
    # stripes of a darker (for black: lighter) shade of the same colour
    a = rng.uniform(0, np.pi)
    period = rng.uniform(6.0, 16.0)
    on = (np.floor((xs * np.cos(a) + ys * np.sin(a)) / (period / 2)) % 2).astype(bool)
    shade = rgb + 50.0 if base == "black" else rgb * 0.72
    return np.where(on[..., None], shade, rgb)


def render_scene(
    rng: np.random.Generator,
    categories: Sequence[str],
    size: tuple[int, int] = (320, 320),
    min_objects: int = 2,
    max_objects: int = 6,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Render one scene of coloured shapes drawn from ``categories``.

    Args:
        rng: source of all randomness (the result is a function of its state).
        categories: names ``"<colour> <shape>"`` to sample from (with replacement; a new object
            repeats an already used category with probability 0.25).
        size: ``(height, width)``.
        min_objects, max_objects: inclusive range of the number of objects attempted; an object
            that cannot be placed without occluding an earlier one too much is skipped (rare).

    Returns:
        ``(image, instances)``: ``uint8 [H, W, 3]`` RGB image and, in drawing order, dicts with
        ``name``, ``mask`` (bool ``[H, W]``, visible pixels only; masks never overlap),
        ``box`` (xyxy floats, tight around the mask, exclusive right/bottom edge), ``area``
        (visible pixels), ``full_area`` (pixels before occlusion), ``colour`` (colour word of
        the name), ``base_colour``, ``shape``, ``rgb`` (drawn base colour) and ``centre``
        (``(x, y)`` centroid of the visible mask).
    """
    h, w = int(size[0]), int(size[1])
    if not categories:
        raise ValueError("categories must not be empty")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    specs = [_parse_category(n) for n in categories]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    image = _render_background(rng, h, w, xs, ys)

    scale = min(h, w) / 320.0
    r_min, r_max = 18.0 * scale, 70.0 * scale
    n_obj = int(rng.integers(min_objects, max_objects + 1))
    placed: list[dict[str, Any]] = []  # name, spec, full mask, visible mask, rgb
    for _ in range(n_obj):
        if placed and rng.random() < 0.25:
            idx = categories.index(placed[int(rng.integers(len(placed)))]["name"])
        else:
            idx = int(rng.integers(len(categories)))
        word, base, shape = specs[idx]
        for _attempt in range(20):
            r = rng.uniform(r_min, r_max)
            cx = rng.uniform(0.7 * r, w - 0.7 * r)
            cy = rng.uniform(0.7 * r, h - 0.7 * r)
            rot = rng.uniform(0, 2 * np.pi)
            m = _shape_mask(shape, h, w, cx, cy, r, rot)
            full = int(m.sum())
            if full < _MIN_VISIBLE_AREA:
                continue
            ok = all(
                int((p["visible"] & ~m).sum())
                >= max(_MIN_VISIBLE_FRACTION * p["full_area"], _MIN_VISIBLE_AREA)
                for p in placed
            )
            if ok:
                break
        else:
            continue
        for p in placed:
            p["visible"] &= ~m
        rgb = np.clip(np.asarray(COLOURS[base], np.float32) + rng.uniform(-12, 12, 3), 0, 255)
        pix = _object_pixels(rng, rgb, base, xs, ys)
        image[m] = pix[m] if np.ndim(pix) == 3 else pix
        placed.append(
            dict(
                name=categories[idx],
                colour=word,
                base_colour=base,
                shape=shape,
                rgb=tuple(int(np.rint(v)) for v in rgb),
                visible=m.copy(),
                full_area=full,
            )
        )

    if rng.random() < 0.5:  # faint sensor noise
        image = image + rng.normal(0.0, 3.0, size=image.shape).astype(np.float32)
    image_u8 = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    instances = []
    for p in placed:
        vis = p.pop("visible")
        area = int(vis.sum())
        # Safety net only: placement already guarantees enough visible area.
        if area < max(_MIN_VISIBLE_FRACTION * p["full_area"], _MIN_VISIBLE_AREA):
            continue
        rows = np.flatnonzero(vis.any(axis=1))
        cols = np.flatnonzero(vis.any(axis=0))
        yy, xx = np.nonzero(vis)
        p.update(
            mask=vis,
            area=area,
            box=(float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)),
            centre=(float(xx.mean()), float(yy.mean())),
        )
        instances.append(p)
    return image_u8, instances


# --------------------------------------------------------------------------------------------
# Referring expressions
# --------------------------------------------------------------------------------------------


def _attribute(inst: dict[str, Any], attr: str) -> float:
    if attr == "x":
        return float(inst["centre"][0])
    if attr == "y":
        return float(inst["centre"][1])
    return float(inst["area"])


def _is_clear_extreme(values: list[float], i: int, attr: str, largest: bool) -> bool:
    """Whether ``values[i]`` beats every other value clearly (margin / ratio)."""
    v = values[i]
    for j, o in enumerate(values):
        if j == i:
            continue
        if attr == "area":
            ok = v >= _AREA_RATIO * o if largest else _AREA_RATIO * v <= o
        else:
            ok = v >= o + _POSITION_MARGIN if largest else v <= o - _POSITION_MARGIN
        if not ok:
            return False
    return True


def _candidate_expressions(instances: Sequence[dict[str, Any]], i: int) -> list[str]:
    """Every expression that identifies ``instances[i]`` uniquely."""
    t = instances[i]
    groups = [
        (f"{t['colour']} {t['shape']}", lambda o: o["name"] == t["name"]),
        (t["shape"], lambda o: o["shape"] == t["shape"]),
        (f"{t['colour']} shape", lambda o: o["colour"] == t["colour"]),
        ("shape", lambda o: True),
    ]
    out: list[str] = []
    for phrase, member in groups:
        idx = [j for j, o in enumerate(instances) if member(o)]
        if len(idx) == 1:
            if phrase != "shape":
                out.append(f"the {phrase}")
            continue
        for word, (attr, largest) in _SUPERLATIVES.items():
            values = [_attribute(instances[j], attr) for j in idx]
            if _is_clear_extreme(values, idx.index(i), attr, largest):
                out.append(f"the {word} {phrase}")
    return out


def referring_expressions(
    instances: Sequence[dict[str, Any]],
    rng: np.random.Generator,
    max_refs: int = 3,
    max_sentences: int = 2,
) -> list[tuple[int, list[str]]]:
    """Unique referring expressions for up to ``max_refs`` instances of one scene.

    Args:
        instances: ``render_scene`` instances (uses ``name``, ``colour``, ``shape``, ``centre``,
            ``area``).
        rng: picks the instances and sentences.
        max_refs: at most this many referred instances.
        max_sentences: at most this many sentences per referred instance.

    Returns:
        ``[(instance_index, [sentence, ...]), ...]``; each sentence is true of exactly that
        instance: "the <colour> <shape>", "the <shape>", "the <colour> shape" when the group
        has one member, else "the <superlative> <group>" with superlatives leftmost, rightmost,
        topmost, bottommost (visible-mask centroid, 8 px margin), largest, smallest (visible
        area, ratio 1.3).
    """
    cands = [(i, _candidate_expressions(instances, i)) for i in range(len(instances))]
    cands = [(i, s) for i, s in cands if s]
    order = rng.permutation(len(cands))[:max_refs]
    out = []
    for k in sorted(order.tolist()):
        i, sents = cands[k]
        pick = rng.permutation(len(sents))[:max_sentences]
        out.append((i, [sents[j] for j in sorted(pick.tolist())]))
    return out


_FLIP_WORDS = {"leftmost": "rightmost", "rightmost": "leftmost", "left": "right", "right": "left"}
_FLIP_RE = re.compile(r"\b(leftmost|rightmost|left|right)\b", re.IGNORECASE)


def flip_expression(text: str) -> str:
    """Swap left/right words (``leftmost`` <-> ``rightmost``, ``left`` <-> ``right``).

    Use it when an image is flipped horizontally; the case of the first letter is kept.
    """

    def swap(m: re.Match) -> str:
        word = m.group(0)
        new = _FLIP_WORDS[word.lower()]
        if word.isupper():
            return new.upper()
        return new.capitalize() if word[0].isupper() else new

    return _FLIP_RE.sub(swap, text)


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def _image_rng(split: str, seed: int, index: int) -> np.random.Generator:
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng([int(seed), _SPLIT_OFFSET[split], int(index)])


def _iter_split(split: str, num_images: int, seed: int, size: tuple[int, int]):
    """Yield ``(image_record, image, annotations, refs)`` per image, ids assigned globally."""
    _check_split(split)
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    names = categories(split)
    cat_id = {n: k + 1 for k, n in enumerate(names)}
    h, w = int(size[0]), int(size[1])
    ann_id = 0
    ref_id = 0
    for index in range(num_images):
        rng = _image_rng(split, seed, index)
        image, instances = render_scene(rng, names, size=(h, w))
        image_id = index + 1
        record = {
            "id": image_id,
            "file_name": f"{split}_{image_id:06d}.png",
            "height": h,
            "width": w,
        }
        anns = []
        for inst in instances:
            ann_id += 1
            x0, y0, x1, y1 = inst["box"]
            anns.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": cat_id[inst["name"]],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": int(inst["area"]),
                    "iscrowd": 0,
                    "segmentation": encode_rle(inst["mask"]),
                }
            )
        refs = []
        for i, sents in referring_expressions(instances, rng):
            ref_id += 1
            refs.append(
                {
                    "ref_id": ref_id,
                    "image_id": image_id,
                    "ann_id": anns[i]["id"],
                    "category_id": anns[i]["category_id"],
                    "split": split,
                    "sentences": [{"sent": s} for s in sents],
                }
            )
        yield record, image, anns, refs


def _coco_header(
    split: str, seed: int, names: Sequence[str] | None = None, world: str = "synthetic shapes"
) -> dict[str, Any]:
    """An empty COCO instances dict; categories ``names`` (default: the split's) get ids 1..N."""
    names = categories(split) if names is None else names
    return {
        "info": {"description": f"MOBIUS {world}, split {split}, seed {seed}"},
        "licenses": [],
        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(names)],
        "images": [],
        "annotations": [],
    }


def generate_split(
    split: str, num_images: int, seed: int = 0, size: tuple[int, int] = (320, 320)
) -> dict[str, Any]:
    """Generate ``num_images`` images of ``split`` in memory.

    Args:
        split: ``"train"``, ``"val"`` or ``"val_unseen"``.
        num_images: number of images; image ``i`` does not depend on it.
        seed: non-negative base seed.
        size: ``(height, width)``.

    Returns:
        ``{"coco": COCO instances dict (images, annotations with compressed-RLE str counts,
        categories with ids 1..N), "refs": RefCOCO-style refs, "images": {image_id: uint8
        [H, W, 3]}}``.

    Raises:
        ValueError: unknown split, negative ``num_images`` or ``seed``.
    """
    _check_split(split)
    coco = _coco_header(split, seed)
    refs: list[dict[str, Any]] = []
    images: dict[int, np.ndarray] = {}
    for record, image, anns, image_refs in _iter_split(split, num_images, seed, size):
        coco["images"].append(record)
        coco["annotations"].extend(anns)
        refs.extend(image_refs)
        images[record["id"]] = image
    return {"coco": coco, "refs": refs, "images": images}


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def progress_bar(it, total: int, desc: str):
    """(``it`` wrapped in a tqdm bar, the bar) when tqdm is installed, else (``it``, None)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return it, None
    bar = tqdm(it, total=total, desc=desc, unit="img")
    return bar, bar


def write_split(
    out_dir: str | os.PathLike,
    split: str,
    num_images: int,
    seed: int = 0,
    size: tuple[int, int] = (320, 320),
    progress: bool = False,
) -> Path:
    """Write ``split`` to ``out_dir/split/``: ``images/*.png``, ``annotations.json``, ``refs.json``.

    Every file is written atomically (temporary file in the same folder, then ``os.replace``);
    images are streamed, so memory does not grow with ``num_images``.

    Args:
        out_dir: root folder (created if missing).
        split, num_images, seed, size: as in ``generate_split``.
        progress: show a tqdm progress bar when tqdm is installed.

    Returns:
        The split folder ``out_dir/split``.
    """
    _check_split(split)
    root = Path(out_dir) / split
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    coco = _coco_header(split, seed)
    refs: list[dict[str, Any]] = []
    it = _iter_split(split, num_images, seed, size)
    it, bar = progress_bar(it, num_images, split) if progress else (it, None)
    for record, image, anns, image_refs in it:
        atomic_write_bytes(image_dir / record["file_name"], _png_bytes(image))
        coco["images"].append(record)
        coco["annotations"].extend(anns)
        refs.extend(image_refs)
    if bar is not None:
        bar.close()
    atomic_write_bytes(root / "annotations.json", json.dumps(coco).encode())
    atomic_write_bytes(root / "refs.json", json.dumps(refs).encode())
    return root


def cache_root() -> Path:
    """Folder of generated splits: $MOBIUS_CACHE/synthetic or ~/.cache/mobius/synthetic."""
    from ..cache import cache_root as mobius_cache

    return mobius_cache() / "synthetic"


def cached_split(
    split: str,
    num_images: int,
    seed: int = 0,
    size: tuple[int, int] = (320, 320),
    root: str | os.PathLike | None = None,
    progress: bool = False,
):
    """The split as a ``CocoDataset``, generated once into the cache and reused after.

    The folder's ``complete`` file, written last, records the size and SHA-256 of every file
    (``mobius_core.cache``): an interrupted generation is redone, a damaged file is
    generated again with one warning, and a folder from an older version (whose ``complete``
    holds no record) is kept if its files load.
    """
    _check_split(split)
    folder = Path(root) if root is not None else cache_root()
    folder = folder / f"{split}-n{num_images}-s{seed}-{size[0]}x{size[1]}"
    return cached_dataset(
        folder / split,
        lambda: write_split(folder, split, num_images, seed, size, progress=progress),
        _split_files, "cached synthetic split", root is not None,
    )  # fmt: skip


def cached_dataset(data: Path, write, list_files, what: str, own_root: bool):
    """``data`` (a split folder: annotations.json, images/) as a ``CocoDataset``, made by
    ``write()`` unless its parent's ``complete`` record says a finished one is there.

    ``list_files(data)`` names every file the record covers (the two JSON files first, then
    PNGs, each checked to decode when adopted): an interrupted generation is redone, a
    damaged file is generated again with one warning, and a folder from an older version
    (whose ``complete`` holds no record) is kept if its files load (``mobius_core.cache``).
    """
    from ..cache import Damaged, ensure_entry
    from .coco import CocoDataset

    marker = data.parent / "complete"

    def make() -> list[Path]:
        write()
        return list_files(data)

    def adopt() -> list[Path] | None:
        if not marker.is_file():
            return None  # never finished: generated again, as it was never used
        try:
            files = list_files(data)
            for f in files[2:]:
                with Image.open(f) as im:
                    im.verify()
        except Exception as exc:  # json, PIL and OS errors alike: the folder is damaged
            raise Damaged(f"{data} cannot be read ({str(exc)[:200]})") from exc
        return files

    fix = "pass a writable root" if own_root else "set MOBIUS_CACHE to a writable folder"
    ensure_entry(marker, make, adopt, what, "generating it again", fix)
    return CocoDataset(data / "annotations.json", data / "images")


def _split_files(data: Path) -> list[Path]:
    """annotations.json, refs.json and the images annotations.json lists."""
    ann, refs = data / "annotations.json", data / "refs.json"
    json.loads(refs.read_bytes())
    images = json.loads(ann.read_bytes())["images"]
    return [ann, refs, *(data / "images" / r["file_name"] for r in images)]


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m mobius_core.data.synthetic --out DIR --split val --num-images 5``."""
    parser = argparse.ArgumentParser(
        prog="python -m mobius_core.data.synthetic",
        description="Write the synthetic open-vocabulary shapes benchmark (COCO + refs).",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--split", default="all", choices=[*SPLITS, "all"])
    parser.add_argument("--num-images", type=int, default=100, help="images per split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=320, help="square image side in pixels")
    args = parser.parse_args(argv)
    if args.num_images < 0 or args.seed < 0 or args.size < 32:
        parser.error("--num-images and --seed must be >= 0 and --size >= 32")
    splits = SPLITS if args.split == "all" else (args.split,)
    for split in splits:
        path = write_split(
            args.out, split, args.num_images, args.seed, (args.size, args.size), progress=True
        )
        print(f"wrote {args.num_images} images to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
