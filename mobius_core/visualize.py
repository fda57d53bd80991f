"""Drawing instances on an image: translucent masks, boxes and labels (PIL only)."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

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


def line_plot(
    series: list[tuple[str, Sequence[float], Sequence[float]]],
    title: str,
    xlabel: str,
    hline: float | None = None,
    size: tuple[int, int] = (720, 400),
    colours: Sequence[tuple[int, int, int]] | None = None,
) -> Image.Image:
    """A PNG-ready line chart: ``series`` of (name, xs, ys) on shared axes, an optional grey
    horizontal line (a target), the names as a legend in their colours (PIL only)."""
    w, h = size
    m = 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    colours = list(colours or palette(len(series)))
    xs_all = [float(x) for _, xs, _ in series for x in xs] or [0.0, 1.0]
    ys_all = [float(y) for _, _, ys in series for y in ys] + ([hline] if hline else [])
    lo, hi = (min(ys_all), max(ys_all)) if ys_all else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1
    x0, x1 = min(xs_all), max(xs_all)
    x1 = x1 if x1 > x0 else x0 + 1

    def px(x: float, y: float) -> tuple[float, float]:
        return m + (x - x0) / (x1 - x0) * (w - 2 * m), h - m - (y - lo) / (hi - lo) * (h - 2 * m)

    d.rectangle([m, m, w - m, h - m], outline="black")
    for frac in (0.0, 0.5, 1.0):
        y = lo + frac * (hi - lo)
        d.text((4, px(x0, y)[1] - 6), f"{y:.3g}", fill="black")
        x = x0 + frac * (x1 - x0)
        d.text((px(x, lo)[0] - 10, h - m + 6), f"{x:.0f}", fill="black")
    if hline:
        d.line([px(x0, hline), px(x1, hline)], fill=(150, 150, 150))
    for i, ((name, xs, ys), colour) in enumerate(zip(series, colours)):
        if len(ys) > 1:
            d.line([px(float(x), float(y)) for x, y in zip(xs, ys)], fill=colour, width=2)
        d.text((m + 10, m + 8 + 14 * i), name, fill=colour)
    d.text((m, 16), title, fill="black")
    d.text((w // 2 - 15, h - 22), xlabel, fill="black")
    return img
