"""Mask AP against decoder FLOPs for the pruning schedules (the paper's Fig. 4 / Tab. 15).

    python benchmarks/pruning_schedules.py --synthetic val --num-images 100 --out pruning.png
    python benchmarks/pruning_schedules.py --seed 1 --settings sigmoid:0.02:0.1:10 [--no-context]

Evaluates one model (default: the shipped shapes_tiny) without pruning and with the
sigmoid, exponential and logarithmic schedules at several bounds (or the given
``KIND:LOW:HIGH:MIN_KEEP`` settings); prints a table with each setting's decoder-FLOPs cut
and mask-AP drop, and draws AP against decoder GFLOPs. ``--seed`` picks another synthetic
split (to choose defaults on images the reported split does not hold).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobius_core.build import load_trained_model
from mobius_core.config import load_config
from mobius_core.data.synthetic import cached_split
from mobius_core.evaluation.evaluator import evaluate_dataset
from mobius_core.modeling.pruning import PruneSchedule
from mobius_core.visualize import palette

BOUNDS = ((0.05, 0.2), (0.1, 0.3), (0.2, 0.5))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="shapes_tiny")
    p.add_argument("--checkpoint", help="default: the checkpoint shipped for the config")
    p.add_argument("--synthetic", default="val")
    p.add_argument("--num-images", type=int, default=100)
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--min-keep", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="synthetic split seed (default 0)")
    p.add_argument("--settings", help="comma-separated KIND:LOW:HIGH:MIN_KEEP (default: a grid)")
    p.add_argument(
        "--no-context", action="store_true",
        help="pruned queries leave self-attention too (the ablation of PruneSchedule.context)",
    )  # fmt: skip
    p.add_argument("--out", help="PNG plot of mask AP against decoder GFLOPs")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    model = load_trained_model(cfg, args.checkpoint, [])
    data = cached_split(args.synthetic, args.num_images, args.seed)
    rows = []
    settings = [("none", None, None, args.min_keep)] + [
        (kind, lo, hi, args.min_keep)
        for kind in ("sigmoid", "exponential", "logarithmic")
        for lo, hi in BOUNDS
    ]
    if args.settings:
        settings = settings[:1] + [
            (k, float(lo), float(hi), int(mk))
            for k, lo, hi, mk in (item.split(":") for item in args.settings.split(","))
        ]
    for kind, lo, hi, min_keep in settings:
        prune = (
            None
            if kind == "none"
            else PruneSchedule.create(kind, lo, hi, 1.0, min_keep, context=not args.no_context)
        )
        m = evaluate_dataset(
            model, data, short_side=args.size, prune=prune, referring=False
        ).metrics
        rows.append(
            (kind, lo, hi, m["decoder_gflops"], m["mask_ap"], m["box_ap"], m["kept_mean"], min_keep)
        )
        print(f"done {kind} {lo} {hi}", file=sys.stderr)
    pruned = "removed" if args.no_context else "kept as context"
    print(f"{cfg.name} on synthetic {args.synthetic} seed {args.seed} ({args.num_images} images) "
          f"at {args.size}, pruned queries {pruned}")  # fmt: skip
    print("| schedule | low | high | min_keep | decoder GFLOPs | cut | mask AP | drop | box AP "
          "| kept (last layer) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    full_fl, full_ap = rows[0][3], rows[0][4]
    for kind, lo, hi, fl, mask_ap, box_ap, kept, mk in rows:
        lo_s = "-" if lo is None else f"{lo:.2f}"
        hi_s = "-" if hi is None else f"{hi:.2f}"
        cut = 100.0 * (1.0 - fl / full_fl) if full_fl else 0.0
        print(f"| {kind} | {lo_s} | {hi_s} | {mk} | {fl:.3f} | {cut:.1f}% | {mask_ap:.1f} | "
              f"{full_ap - mask_ap:+.2f} | {box_ap:.1f} | {kept:.1f} |")  # fmt: skip
    if args.out:
        _plot(rows, args.out)
    return 0


def _plot(rows, out: str) -> None:
    w, h, m = 640, 400, 60
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    xs, ys = [r[3] for r in rows], [r[4] for r in rows]
    x0, x1 = min(xs) * 0.95, max(xs) * 1.05
    y0, y1 = min(ys) - 1, max(ys) + 1

    def px(x: float, y: float) -> tuple[float, float]:
        return m + (x - x0) / (x1 - x0) * (w - 2 * m), h - m - (y - y0) / (y1 - y0) * (h - 2 * m)

    d.rectangle([m, m, w - m, h - m], outline="black")
    kinds = ["none", "sigmoid", "exponential", "logarithmic"]
    colours = dict(zip(kinds, [(0, 0, 0), *palette(3)]))
    for kind, _, _, fl, ap, *_ in rows:
        x, y = px(fl, ap)
        d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colours[kind])
    for i, kind in enumerate(kinds):
        d.text((m + 8, m + 6 + 14 * i), kind, fill=colours[kind])
    d.text((w // 2 - 60, h - 25), "decoder GFLOPs", fill="black")
    d.text((6, m - 20), "mask AP", fill="black")
    for v in (y0, y1):
        d.text((6, px(x0, v)[1] - 6), f"{v:.1f}", fill="black")
    for v in (x0, x1):
        d.text((px(v, y0)[0] - 14, h - m + 6), f"{v:.3f}", fill="black")
    img.save(out)


if __name__ == "__main__":
    sys.exit(main())
