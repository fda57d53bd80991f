"""COCO-format instance datasets (COCO, LVIS, the synthetic benchmark) and the label space.

``LabelSpace`` is the one place where dataset category ids become contiguous indices
and names: a model's prompt index k is ``label_space.names[k]``.
Problems in a file are ``DatasetError``s that name the file and the record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..rle import decode_rle


class DatasetError(ValueError):
    """A dataset file or record is broken; the message names the file and the record."""


@dataclass(frozen=True)
class LabelSpace:
    """Dataset category ids <-> contiguous indices <-> names (and LVIS frequency groups)."""

    ids: tuple[int, ...]
    names: tuple[str, ...]
    frequency: tuple[str, ...] = ()

    @classmethod
    def from_coco(cls, categories: list[dict[str, Any]], source: str = "") -> LabelSpace:
        cats = sorted(categories, key=lambda c: c["id"])
        ids = tuple(int(c["id"]) for c in cats)
        if len(set(ids)) != len(ids):
            raise DatasetError(f"{source}: duplicate category ids in 'categories'")
        names = tuple(str(c["name"]).replace("_", " ") for c in cats)
        freq = tuple(str(c.get("frequency", "")) for c in cats)
        return cls(ids, names, freq if any(freq) else ())

    def index_of(self) -> dict[int, int]:
        """category id -> contiguous index."""
        return {cid: i for i, cid in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Sample:
    """One image and its instances in image pixels.

    image: [H,W,3] uint8 RGB; boxes: [N,4] float32 xyxy; labels: [N] int64 contiguous
    indices; masks: [N,H,W] bool or None (box-only data); iscrowd: [N] bool; ann_ids: [N]
    the annotation ids the instances come from (None where there are none).
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None
    iscrowd: np.ndarray
    image_id: int
    file_name: str
    ann_ids: np.ndarray | None = None


def polygons_to_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """COCO polygons (lists of x, y pairs) -> [H,W] bool."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        if len(poly) < 6 or len(poly) % 2:
            raise ValueError(f"a polygon needs >= 3 (x, y) pairs, got {len(poly)} numbers")
        draw.polygon([(float(poly[i]), float(poly[i + 1])) for i in range(0, len(poly), 2)], fill=1)
    return np.asarray(canvas, dtype=bool)


class CocoDataset:
    """Instances of a COCO-format json with its image folder (masks from RLE or polygons)."""

    def __init__(
        self, ann_file: str | Path, image_dir: str | Path, with_masks: bool = True
    ) -> None:
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.with_masks = with_masks
        if not self.ann_file.is_file():
            raise DatasetError(f"annotation file {self.ann_file} does not exist")
        try:
            data = json.loads(self.ann_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{self.ann_file} is not valid JSON: {exc}") from exc
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise DatasetError(f"{self.ann_file} has no '{key}' list (not COCO format)")
        self.labels = LabelSpace.from_coco(data["categories"], str(self.ann_file))
        lookup = self.labels.index_of()
        self.images = sorted(data["images"], key=lambda im: im["id"])
        known_images = {im["id"] for im in self.images}
        self.anns: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in self.images}
        for ann in data["annotations"]:
            if ann.get("category_id") not in lookup:
                raise DatasetError(
                    f"{self.ann_file}: annotation {ann.get('id')} has category_id "
                    f"{ann.get('category_id')} not in 'categories' (known ids: "
                    f"{list(self.labels.ids)[:10]}...)"
                )
            if ann.get("image_id") not in known_images:
                raise DatasetError(
                    f"{self.ann_file}: annotation {ann.get('id')} refers to image_id "
                    f"{ann.get('image_id')} which is not in 'images'"
                )
            self.anns[ann["image_id"]].append(ann)
        self._lookup = lookup

    def __len__(self) -> int:
        return len(self.images)

    @property
    def prompts(self) -> list[str]:
        """The category names in label-index order: the prompts a model is trained with."""
        return list(self.labels.names)

    def __getitem__(self, index: int) -> Sample:
        info = self.images[index]
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise DatasetError(
                f"{self.ann_file}: image {info['id']} file {path} is missing; "
                "check the image folder"
            )
        try:
            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB"))
        except OSError as exc:
            raise DatasetError(f"image {path} cannot be decoded: {exc}") from exc
        h, w = image.shape[:2]
        boxes, labels, masks, crowd, ids = [], [], [], [], []
        for ann in self.anns[info["id"]]:
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            if bw <= 0 or bh <= 0:
                continue
            boxes.append([x, y, min(x + bw, w), min(y + bh, h)])
            labels.append(self._lookup[ann["category_id"]])
            crowd.append(bool(ann.get("iscrowd", 0)))
            ids.append(int(ann.get("id", -1)))
            if self.with_masks:
                masks.append(self._mask(ann, h, w))
        mask_array = None
        if self.with_masks:
            mask_array = np.stack(masks) if masks else np.zeros((0, h, w), dtype=bool)
        return Sample(
            image=image,
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(labels, dtype=np.int64),
            masks=mask_array,
            iscrowd=np.asarray(crowd, dtype=bool),
            image_id=int(info["id"]),
            file_name=str(info["file_name"]),
            ann_ids=np.asarray(ids, dtype=np.int64),
        )

    def _mask(self, ann: dict[str, Any], h: int, w: int) -> np.ndarray:
        seg = ann.get("segmentation")
        try:
            if isinstance(seg, dict):
                mask = decode_rle(seg)
            elif isinstance(seg, list) and seg:
                mask = polygons_to_mask(seg, h, w)
            else:
                raise ValueError("no segmentation (use with_masks=False for box-only data)")
        except ValueError as exc:
            raise DatasetError(
                f"{self.ann_file}: annotation {ann.get('id')} has a bad segmentation: {exc}"
            ) from exc
        if mask.shape != (h, w):
            raise DatasetError(
                f"{self.ann_file}: annotation {ann.get('id')} mask is {mask.shape}, "
                f"image is {(h, w)}"
            )
        return mask
