"""Plot columns of a training log (log.csv) against the step, as a PNG (PIL only).

python benchmarks/plot_curve.py runs/tiny/log.csv --columns loss --out curve.png
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobius_core.visualize import palette


def plot(rows: list[dict[str, str]], columns: list[str], title: str) -> Image.Image:
    w, h, m = 720, 400, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    steps = [float(r["step"]) for r in rows]
    series = {c: [float(r[c]) for r in rows] for c in columns}
    lo = min(min(v) for v in series.values())
    hi = max(max(v) for v in series.values())
    hi = hi if hi > lo else lo + 1
    x0, x1 = min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1

    def px(s: float, v: float) -> tuple[float, float]:
        return m + (s - x0) / (x1 - x0) * (w - 2 * m), h - m - (v - lo) / (hi - lo) * (h - 2 * m)

    d.rectangle([m, m, w - m, h - m], outline="black")
    for frac in (0.0, 0.5, 1.0):
        v = lo + frac * (hi - lo)
        d.text((4, px(x0, v)[1] - 6), f"{v:.3g}", fill="black")
        s = x0 + frac * (x1 - x0)
        d.text((px(s, lo)[0] - 10, h - m + 6), f"{s:.0f}", fill="black")
    for colour, values in zip(palette(len(columns)), series.values()):
        d.line([px(s, v) for s, v in zip(steps, values)], fill=colour, width=2)
    for i, (colour, name) in enumerate(zip(palette(len(columns)), columns)):
        d.text((m + 10, m + 8 + 14 * i), name, fill=colour)
    d.text((m, 16), title, fill="black")
    d.text((w // 2 - 15, h - 22), "step", fill="black")
    return img


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("log")
    p.add_argument("--columns", default="loss", help="comma-separated columns (default loss)")
    p.add_argument("--title", default="")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    with open(args.log, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        print(f"{args.log} has no rows", file=sys.stderr)
        return 2
    columns = [c.strip() for c in args.columns.split(",")]
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        print(f"{args.log} has no column {missing}; columns: {list(rows[0])}", file=sys.stderr)
        return 2
    plot(rows, columns, args.title or args.log).save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
