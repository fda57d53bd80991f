"""Plot columns of a training log (log.csv) against the step, as a PNG (PIL only).

python benchmarks/plot_curve.py runs/tiny/log.csv --columns loss --out curve.png
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobius_core.visualize import line_plot


def plot(rows: list[dict[str, str]], columns: list[str], title: str) -> Image.Image:
    steps = [float(r["step"]) for r in rows]
    series = [(c, steps, [float(r[c]) for r in rows]) for c in columns]
    return line_plot(series, title, "step")


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
