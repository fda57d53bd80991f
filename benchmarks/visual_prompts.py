"""Point and box prompts: answer quality of the shipped model and what the inputs cost.

    python benchmarks/visual_prompts.py [--frames 100] [--size 320]

1. Mean mask IoU of the answer to one click (the interior point farthest from the
   boundary) and to one box (the ground-truth box) per instance of the synthetic ``val`` and
   ``val_unseen`` splits (``mobius eval --task visual``), with the default pruning, without
   pruning, and without text prompts beside the clicks.
2. onnxruntime inference time (1 thread, frames interleaved) of the plain image graph and
   of the graph with point/box inputs (``mobius export --visual``) fed no click, one click
   and four clicks: what the node pays for taking clicks.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobius_core.build import load_trained_model, prune_schedule
from mobius_core.config import load_config
from mobius_core.data.synthetic import SEEN_CATEGORIES, cached_split
from mobius_core.evaluation.visual import evaluate_visual
from mobius_core.export.onnx import export_config_model
from mobius_core.inference import SegmenterSpec, build_segmenter


def quality(cfg, model, size: int) -> list[tuple[str, str, dict]]:
    rows = []
    prune = prune_schedule(cfg.model.pruning)
    for split in ("val", "val_unseen"):
        data = cached_split(split, 100)
        settings = [("default pruning", prune, True), ("no pruning", None, True)]
        if split == "val":
            settings.append(("default pruning, no text prompts", prune, False))
        for name, p, text in settings:
            m = evaluate_visual(model, data, size, prune=p, with_text=text)
            rows.append((split, name, m))
    return rows


def timing(cfg, model, size: int, frames: int) -> list[tuple[str, float, float]]:
    data = cached_split("val", 20)
    images = [data[i].image for i in range(len(data))]
    with tempfile.TemporaryDirectory() as tmp:
        segs = {}
        for visual in (False, True):
            path = Path(tmp) / f"g{int(visual)}.onnx"
            with warnings.catch_warnings():  # the tracer's notes on constant shapes
                warnings.simplefilter("ignore")
                export_config_model(cfg, model, path, size, visual=visual)
            spec = SegmenterSpec("onnxruntime", str(path), size=size, max_size=size,
                                 threads=1, ort_preprocess=False)  # fmt: skip
            seg = build_segmenter(spec)
            seg.set_prompts(list(SEEN_CATEGORIES))
            segs[visual] = seg
        cases = [
            ("plain graph", segs[False], None),
            ("point/box graph, no click", segs[True], None),
            ("point/box graph, 1 click", segs[True], [[(160, 160)]]),
            ("point/box graph, 4 prompts", segs[True],
             [[(60, 60), (200, 120), (40, 40, 140, 160), (180, 180, 300, 300)]]),
        ]  # fmt: skip
        times: dict[str, list[float]] = {c[0]: [] for c in cases}
        for i in range(frames + 3):
            image = images[i % len(images)]
            for name, seg, clicks in cases:
                seg([image], clicks)
                if i >= 3:
                    times[name].append(seg.last_times.inference * 1e3)
    return [(n, float(np.median(t)), float(np.percentile(t, 95))) for n, t in times.items()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--frames", type=int, default=100)
    args = p.parse_args(argv)
    cfg = load_config("shapes_tiny")
    model = load_trained_model(cfg)
    print("| split | setting | prompts | point mIoU | point IoU>0.5 % | box mIoU | box IoU>0.5 % |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for split, name, m in quality(cfg, model, args.size):
        print(f"| {split} | {name} | {m['visual_prompts']:.0f} | {m['point_miou']:.1f} | "
              f"{m['point_p50']:.1f} | {m['box_miou']:.1f} | {m['box_p50']:.1f} |")  # fmt: skip
    t0 = time.perf_counter()
    rows = timing(cfg, model, args.size, args.frames)
    print(f"\nonnxruntime, 1 thread, {args.size}x{args.size}, 36 text prompts, default pruning, "
          f"{args.frames} frames interleaved ({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    print("| graph and prompts | inference p50 ms | p95 ms | p50 / plain |")
    print("|---|---:|---:|---:|")
    base = rows[0][1]
    for name, p50, p95 in rows:
        print(f"| {name} | {p50:.1f} | {p95:.1f} | {p50 / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
