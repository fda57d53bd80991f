"""Latency per stage of one or two deployed setups, measured side by side.

Each setup is a :class:`~mobius_core.inference.segmenter.Segmenter` (backend, prompts, pruning).
With two setups the frames alternate A, B, A, B, ... so machine noise hits both alike and
the ratio is meaningful.
"""

from __future__ import annotations

import resource
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .segmenter import Segmenter


@dataclass
class BenchRow:
    name: str
    frames: int
    preprocess_p50: float
    inference_p50: float
    inference_p95: float
    postprocess_p50: float
    total_p50: float
    total_p95: float
    fps: float
    kept_mean: list[float]
    instances_mean: float

    def as_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in vars(self).items()}


def benchmark(
    setups: dict[str, Segmenter],
    images: Sequence[np.ndarray],
    frames: int = 30,
    warmup: int = 3,
    progress: bool = False,
) -> tuple[list[BenchRow], float]:
    """Run every setup ``frames`` times (after ``warmup`` untimed runs), interleaved; returns
    one row per setup (times in ms) and the process's peak resident memory in MB."""
    if frames < 1 or not images:
        raise ValueError("benchmark needs frames >= 1 and at least one image")
    times: dict[str, list[tuple[float, float, float]]] = {n: [] for n in setups}
    kept: dict[str, list[np.ndarray]] = {n: [] for n in setups}
    found: dict[str, list[int]] = {n: [] for n in setups}
    steps = range(warmup + frames)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="bench", unit="frame")
    for i in steps:
        image = images[i % len(images)]
        for name, seg in setups.items():
            (inst,) = seg([image])
            if i < warmup:
                continue
            t = seg.last_times
            times[name].append((t.preprocess, t.inference, t.postprocess))
            kept[name].append(seg.last_outputs.kept.mean(axis=0))
            found[name].append(len(inst))
    rows = []
    for name in setups:
        arr = np.asarray(times[name]) * 1000.0  # [N,3] ms
        total = arr.sum(axis=1)
        rows.append(
            BenchRow(
                name=name,
                frames=len(arr),
                preprocess_p50=float(np.percentile(arr[:, 0], 50)),
                inference_p50=float(np.percentile(arr[:, 1], 50)),
                inference_p95=float(np.percentile(arr[:, 1], 95)),
                postprocess_p50=float(np.percentile(arr[:, 2], 50)),
                total_p50=float(np.percentile(total, 50)),
                total_p95=float(np.percentile(total, 95)),
                fps=float(1000.0 / total.mean()),
                kept_mean=[round(float(v), 1) for v in np.mean(kept[name], axis=0)],
                instances_mean=float(np.mean(found[name])),
            )
        )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return rows, peak_mb


def format_table(rows: Sequence[BenchRow], peak_mb: float) -> str:
    head = (
        "| setup | frames | preprocess p50 | inference p50 | inference p95 | postprocess p50 "
        "| total p50 | total p95 | FPS | kept per layer | instances |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.frames} | {r.preprocess_p50:.1f} | {r.inference_p50:.1f} | "
            f"{r.inference_p95:.1f} | {r.postprocess_p50:.1f} | {r.total_p50:.1f} | "
            f"{r.total_p95:.1f} | {r.fps:.1f} | {r.kept_mean} | {r.instances_mean:.1f} |"
        )
    if len(rows) == 2:
        a, b = rows
        lines.append(
            f"\n{b.name} / {a.name}: inference p50 ratio {b.inference_p50 / a.inference_p50:.3f}, "
            f"total p50 ratio {b.total_p50 / a.total_p50:.3f}"
        )
    lines.append(f"(times in ms; peak resident memory of the process {peak_mb:.0f} MB)")
    return "\n".join(lines)
