"""Mask/box AP of training snapshots against the step: the AP training curve.

    python benchmarks/eval_snapshots.py runs/tiny2_snap/*.pt --out benchmarks/logs/ap.csv
    python benchmarks/plot_curve.py benchmarks/logs/ap.csv --columns mask_ap,box_ap --out ap.png

Each checkpoint (its ``step`` and training seconds are read from it) is evaluated on a
synthetic split without pruning; the rows go to a CSV with the columns of ``plot_curve.py``.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobius_core.atomic import atomic_write_bytes
from mobius_core.build import load_trained_model
from mobius_core.config import load_config
from mobius_core.data.synthetic import cached_split
from mobius_core.evaluation.evaluator import evaluate_dataset
from mobius_core.training.checkpoint import load_checkpoint

COLUMNS = ("step", "seconds", "mask_ap", "mask_ap50", "box_ap", "refer_p50", "ece")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--config", default="shapes_tiny")
    p.add_argument("--synthetic", default="val")
    p.add_argument("--num-images", type=int, default=100)
    p.add_argument("--out", required=True, help="CSV to write")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    data = cached_split(args.synthetic, args.num_images)
    rows = []
    for path in args.checkpoints:
        state = load_checkpoint(path)
        step, seconds = int(state.get("step", 0)), round(float(state.get("elapsed_s", 0.0)), 1)
        del state
        model = load_trained_model(cfg, path, [])
        m = evaluate_dataset(model, data, short_side=cfg.model.input_size).metrics
        rows.append(
            {"step": step, "seconds": seconds, **{k: round(m.get(k, 0.0), 2) for k in COLUMNS[2:]}}
        )
        print(f"step {step}: mask AP {m['mask_ap']:.1f}", file=sys.stderr)
    rows.sort(key=lambda r: r["step"])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(args.out, buf.getvalue().encode())
    print("| step | training s | mask AP | mask AP50 | box AP | refer P@0.5 | ECE % |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in COLUMNS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
