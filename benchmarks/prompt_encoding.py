"""Encoding a long prompt list: new prompts one per encoder call against batched and padded.

    python benchmarks/prompt_encoding.py [--config shapes_tiny] [--prompts 64] [--chars 190]
        [--rounds 3] [--batch-sizes 1,8,32,64] [--onnx]

What a ``set_prompts`` of many long prompts costs the node before its reply: each round makes
a fresh list of ``--prompts`` prompts of ``--chars`` characters (words and letter runs, so
token counts vary as real descriptions do), clears the embedding cache, and encodes the list
once with each batch size, in an order that rotates between rounds, so every batch size sees
the same machine load. Prints the median seconds per list, the ratio to batch size 1, and the
largest difference of the pooled embeddings from batch size 1 (the padding is masked: only
float rounding may differ). ``--onnx`` adds the same rows for the exported text graph on
onnxruntime (``OnnxTextSource``, the torch-free node's encoder), exported to a temporary
folder first.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mobius_core.build import build_text_encoder_from_config
from mobius_core.config import load_config

WORDS = (
    "red green blue yellow small large round sharp circle square star hexagon cross the left "
    "right of near a an with pallet forklift mug shelf behind under"
).split()


def make_prompts(n: int, chars: int, seed: int) -> list[str]:
    """``n`` distinct prompts of exactly ``chars`` characters."""
    r = random.Random(seed)
    out = []
    for i in range(n):
        parts = [f"#{seed}-{i}"]
        while len(" ".join(parts)) < chars:
            if r.random() < 0.3:  # a letter run: many word pieces, as names and codes are
                parts.append("".join(r.choice("bcdfgkmnpqrstvxz") for _ in range(r.randint(4, 9))))
            else:
                parts.append(r.choice(WORDS))
        out.append(" ".join(parts)[:chars].strip())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="shapes_tiny")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--chars", type=int, default=190)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-sizes", default="1,8,32,64")
    ap.add_argument("--onnx", action="store_true", help="also the exported text graph on ORT")
    args = ap.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    enc = build_text_encoder_from_config(load_config(args.config).model)
    print(f"{type(enc).__name__}, torch threads {torch.get_num_threads()}, "
          f"{args.prompts} prompts x {args.chars} chars, {args.rounds} rounds")  # fmt: skip

    def torch_encode(prompts: list[str], size: int) -> np.ndarray:
        enc.cache.clear()
        return enc.encode(prompts, batch_size=size).pooled.numpy()

    arms = {f"torch, batch {s}": (torch_encode, s) for s in sizes}
    tmp = tempfile.TemporaryDirectory()
    if args.onnx:
        from mobius_core.export.onnx import export_text_graph
        from mobius_core.inference.text import OnnxTextSource

        source = OnnxTextSource(export_text_graph(enc, Path(tmp.name) / "text.onnx"), 4096)

        def ort_encode(prompts: list[str], size: int) -> np.ndarray:
            source._cache.clear()
            source.batch_size = size
            return source.encode(prompts).pooled

        arms |= {f"onnxruntime, batch {s}": (ort_encode, s) for s in sizes}
    names = list(arms)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    diff = dict.fromkeys(names, 0.0)
    tokens: list[int] = []
    for r in range(args.rounds):
        prompts = make_prompts(args.prompts, args.chars, seed=r)
        tokens += [enc.token_count(p) for p in prompts]
        order = names[r % len(names) :] + names[: r % len(names)]
        pooled: dict[str, np.ndarray] = {}
        for n in order:
            fn, size = arms[n]
            start = time.perf_counter()
            pooled[n] = fn(prompts, size)
            seconds[n].append(time.perf_counter() - start)
        for n in names:
            diff[n] = max(diff[n], float(np.abs(pooled[n] - pooled[names[0]]).max()))
    tmp.cleanup()
    print(f"token counts: {min(tokens)}..{max(tokens)} (median {statistics.median(tokens):.0f})")
    base = statistics.median(seconds[names[0]])
    print(f"| encoder | s per list (median of {args.rounds}) | speed-up vs {names[0]} "
          f"| max pooled diff |")  # fmt: skip
    print("|---|---:|---:|---:|")
    for n in names:
        med = statistics.median(seconds[n])
        print(f"| {n} | {med:.3f} | {base / med:.2f}x | {diff[n]:.1e} |")


if __name__ == "__main__":
    main()
