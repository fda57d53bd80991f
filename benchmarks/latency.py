"""Forward latency of two configs measured side by side in one run (CPU by default).

    python benchmarks/latency.py mini_m glee_maskdino_mini --size 384

Both models are built, warmed up, then timed in alternation (A, B, A, B, ...) so that
machine noise hits both alike; the table gives the median and p90 per model and the
ratio of medians. The text path is excluded (its embeddings are cached on a robot).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobius_core.build import build_model
from mobius_core.config import add_set_argument, load_config, parse_set_args
from mobius_core.flops import count_flops, parse_size
from mobius_core.vocab import prompt_set


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("config_a")
    p.add_argument("config_b")
    p.add_argument("--size", default="384", help="input size N or HxW (default 384)")
    p.add_argument("--prompts", type=int, default=80)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (timed with synchronisation)")
    add_set_argument(p)  # applied to both configs
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = parse_size(args.size)
    overrides = {"model.backbone.resolution": max(h, w), **parse_set_args(args.overrides)}
    models, flops = {}, {}
    text = None
    for name in (args.config_a, args.config_b):
        cfg = load_config(name, overrides)
        model = build_model(cfg).eval()
        if text is None:
            text = model.encode_text(prompt_set(args.prompts))
        models[name] = model
        flops[name] = count_flops(model, (h, w), text=text)["total"]
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    models = {name: model.to(device) for name, model in models.items()}
    text = text.to(device)
    images = torch.randn(1, 3, h, w, device=device)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for model in models.values():
                model(images, text)
        for _ in range(args.repeats):
            for name, model in models.items():
                sync()
                start = time.perf_counter()
                model(images, text)
                sync()
                times[name].append((time.perf_counter() - start) * 1000)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"Forward latency on {where} at {h}x{w}, batch 1, {args.prompts} prompts, "
        f"{args.repeats} repeats, fp32 (text encoder excluded)"
    )
    print("| config | GFLOPs | median ms | p90 ms |")
    print("|---|---:|---:|---:|")
    for name in models:
        med = statistics.median(times[name])
        print(f"| {name} | {flops[name]:.1f} | {med:.1f} | {_percentile(times[name], 0.9):.1f} |")
    a, b = (statistics.median(times[n]) for n in models)
    print(f"ratio {args.config_a}/{args.config_b} (median): {a / b:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
