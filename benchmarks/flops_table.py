"""GFLOPs per component for several configs and sizes, as a Markdown table.

    python benchmarks/flops_table.py r50 glee_maskdino glee_rtdetr mini_m mobius_0 --sizes 800 384

Same counting as `mobius flops` (one multiply-add = one FLOP, text encoder excluded).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobius_core.build import build_model
from mobius_core.config import add_set_argument, load_config, parse_set_args
from mobius_core.flops import count_flops, parse_size

KEYS = ("vision_encoder", "pixel_decoder", "modality_fusion", "decoder", "total")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("configs", nargs="+")
    p.add_argument("--sizes", nargs="+", default=["800", "384"])
    p.add_argument("--prompts", type=int, default=80)
    add_set_argument(p)
    args = p.parse_args(argv)
    print(f"GFLOPs (multiply-adds), batch 1, {args.prompts} prompts, text encoder excluded")
    print("| config | size | " + " | ".join(KEYS) + " |")
    print("|---|---|" + "---:|" * len(KEYS))
    for size in args.sizes:
        h, w = parse_size(size)
        for name in args.configs:
            overrides = {"model.backbone.resolution": max(h, w), **parse_set_args(args.overrides)}
            model = build_model(load_config(name, overrides))
            r = count_flops(model, (h, w), num_prompts=args.prompts)
            print(f"| {name} | {h}x{w} | " + " | ".join(f"{r[k]:.1f}" for k in KEYS) + " |")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
