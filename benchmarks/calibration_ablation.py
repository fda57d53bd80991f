"""Pruning quality with and without the calibration loss (the paper's Table 14).

    python benchmarks/calibration_ablation.py --with runs/tiny2/last.pt \
        --without runs/tiny2_nocal/last.pt --out benchmarks/calibration_ablation.png

Two checkpoints trained with the same budget, one with the language-guided calibration
loss (IoU targets) and one with plain focal loss. Each is evaluated without pruning and
with the sigmoid schedule at several bounds; the table gives every setting's decoder
GFLOPs and mask AP drop, and the other model's drop interpolated at the same GFLOPs.
A calibrated model's confidences say which queries will not become good masks, so
pruning them costs less AP.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobius_core.build import load_trained_model
from mobius_core.config import load_config
from mobius_core.data.synthetic import cached_split
from mobius_core.evaluation.evaluator import evaluate_dataset
from mobius_core.modeling.pruning import PruneSchedule
from mobius_core.visualize import palette

BOUNDS = ((0.02, 0.1), (0.05, 0.2), (0.1, 0.3), (0.2, 0.5), (0.3, 0.7))


def curve(model, data, size: int, min_keep: int) -> list[tuple[str, float, float, float]]:
    """[(setting, decoder GFLOPs, mask AP, ECE)], the unpruned model first."""
    rows = []
    for bounds in (None, *BOUNDS):
        prune = None if bounds is None else PruneSchedule.create("sigmoid", *bounds, 1.0, min_keep)
        m = evaluate_dataset(model, data, short_side=size, prune=prune, referring=False).metrics
        name = "none" if bounds is None else f"sigmoid {bounds[0]:.2f}-{bounds[1]:.2f}"
        rows.append((name, m["decoder_gflops"], m["mask_ap"], m["ece"]))
        print(f"done {name}", file=sys.stderr)
    return rows


def drop_at(rows, gflops: float) -> float:
    """AP drop of a curve, linearly interpolated at ``gflops`` (clamped to its range)."""
    full_ap = rows[0][2]
    pts = sorted((r[1], full_ap - r[2]) for r in rows)
    return float(np.interp(gflops, [p[0] for p in pts], [p[1] for p in pts]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="shapes_tiny")
    p.add_argument("--with", dest="with_cal", required=True, help="checkpoint with calibration")
    p.add_argument("--without", required=True, help="checkpoint trained with plain focal loss")
    p.add_argument("--synthetic", default="val")
    p.add_argument("--num-images", type=int, default=100)
    p.add_argument("--out", help="PNG plot of the AP drop against decoder GFLOPs")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    data = cached_split(args.synthetic, args.num_images)
    size, min_keep = cfg.model.input_size, cfg.model.pruning.min_keep
    curves = {}
    for name, path in (("calibration", args.with_cal), ("focal", args.without)):
        curves[name] = curve(load_trained_model(cfg, path, []), data, size, min_keep)
    print(f"{cfg.name} on synthetic {args.synthetic} ({args.num_images} images) at {size}, "
          f"min_keep {min_keep}; drop = unpruned mask AP - pruned mask AP")  # fmt: skip
    print("| model | setting | decoder GFLOPs | mask AP | ECE % | drop | other model's drop "
          "at these GFLOPs |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, other in (("calibration", "focal"), ("focal", "calibration")):
        rows = curves[name]
        for setting, fl, ap, ece in rows:
            drop = rows[0][2] - ap
            print(f"| {name} | {setting} | {fl:.4f} | {ap:.1f} | {ece:.1f} | {drop:+.1f} | "
                  f"{drop_at(curves[other], fl):+.1f} |")  # fmt: skip
    if args.out:
        plot(curves, args.out)
    return 0


def plot(curves, out: str) -> None:
    w, h, m = 640, 400, 60
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    pts = {k: [(r[1], v[0][2] - r[2]) for r in v] for k, v in curves.items()}
    xs = [x for v in pts.values() for x, _ in v]
    ys = [y for v in pts.values() for _, y in v]
    x0, x1 = min(xs) * 0.95, max(xs) * 1.05
    y0, y1 = min(ys) - 0.5, max(ys) + 0.5

    def px(x: float, y: float) -> tuple[float, float]:
        return m + (x - x0) / (x1 - x0) * (w - 2 * m), h - m - (y - y0) / (y1 - y0) * (h - 2 * m)

    d.rectangle([m, m, w - m, h - m], outline="black")
    for (name, v), colour in zip(pts.items(), palette(2)):
        line = [px(x, y) for x, y in sorted(v)]
        d.line(line, fill=colour, width=2)
        for x, y in line:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        d.text((m + 8, m + 6 + 14 * list(pts).index(name)), name, fill=colour)
    d.text((w // 2 - 60, h - 25), "decoder GFLOPs", fill="black")
    d.text((6, m - 20), "mask AP drop (points)", fill="black")
    for v in (y0, y1):
        d.text((6, px(x0, v)[1] - 6), f"{v:.1f}", fill="black")
    for v in (x0, x1):
        d.text((px(v, y0)[0] - 14, h - m + 6), f"{v:.3f}", fill="black")
    img.save(out)


if __name__ == "__main__":
    sys.exit(main())
