"""Drawing instances on an image: translucent masks, boxes and labels (PIL only)."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

from .postprocess import Instances


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` well-separated RGB colours (golden-ratio hues)."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 1.0)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def draw_instances(image: np.ndarray, instances: Instances, alpha: float = 0.45) -> np.ndarray:
    """image: [H,W,3] uint8 RGB -> a copy with every instance's mask, box and
    "label score" drawn; colours follow the prompt index, so a class keeps its colour."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"draw_instances needs an [H,W,3] uint8 image, got {image.shape} {image.dtype}"
        )
    out = image.astype(np.float32)
    n_colours = int(instances.labels.max()) + 1 if len(instances) else 1
    colours = np.asarray(palette(n_colours), dtype=np.float32)
    masks = np.asarray(instances.masks, dtype=bool) if len(instances) else []
    for mask, label in zip(masks, instances.labels.tolist()):
        out[mask] = (1 - alpha) * out[mask] + alpha * colours[label]
    canvas = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for i in range(len(instances)):
        label = int(instances.labels[i])
        colour = tuple(int(c) for c in colours[label])
        x0, y0, x1, y1 = (float(v) for v in instances.boxes[i])
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
        text = instances.label_texts[i] if i < len(instances.label_texts) else str(label)
        caption = f"{text} {float(instances.scores[i]):.2f}"
        tx, ty = x0 + 2, max(0.0, y0 - 12)
        w = draw.textlength(caption)
        draw.rectangle([tx - 1, ty, tx + w + 1, ty + 11], fill=(0, 0, 0))
        draw.text((tx, ty), caption, fill=colour)
    return np.asarray(canvas)
