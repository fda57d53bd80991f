"""onnxruntime's spinning worker threads against the node's Python steps:

    python benchmarks/ort_spinning.py [--frames 60] [--rounds 2]

Arms: ``spin`` = onnxruntime's default (its worker threads busy-wait after each run),
``no spin`` = ``session.intra_op/inter_op.allow_spinning`` 0, the project's default
(``inference.ort_backend.ort_session(spin=False)``). Each arm runs in its own process,
alternating, ``--rounds`` times: the shipped model through the node's path (``load_model``,
the overhead benchmark's prompts, 640x480 demo frames), then duplicates + tracking as the
node does. Prints p50/p95 in ms per step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("preprocess", "inference", "postprocess", "duplicates + tracking")


def arm(spin: bool, frames: int) -> list[list[float]]:
    import onnxruntime as ort

    base = ort.SessionOptions

    class Options(base):  # every session this process makes, the ORT ones of the node too
        def __init__(self) -> None:
            super().__init__()
            for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
                self.add_session_config_entry(key, "1" if spin else "0")

    ort.SessionOptions = Options
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    from ros_node import PROMPTS

    from mobius_core.tracking import InstanceTracker, suppress_duplicates
    from mobius_ros.camera import demo_frames
    from mobius_ros.model import load_model
    from mobius_ros.params import NodeParams

    seg = load_model(NodeParams(prompts=PROMPTS, score_threshold=0.15)).segmenter
    seg.set_prompts(PROMPTS)
    tracker, images, rows = InstanceTracker(), demo_frames(8, (480, 640)), []
    for i in range(frames + 3):
        (inst,) = seg([images[i % len(images)]])
        t0 = time.perf_counter()
        keep = suppress_duplicates(inst.masks, inst.scores, inst.boxes)
        inst = inst.select(keep) if len(keep) < len(inst) else inst
        tracker.update(inst.masks, inst.label_texts)
        t = seg.last_times
        if i >= 3:  # the first frames import and warm up
            rows.append([t.preprocess, t.inference, t.postprocess, time.perf_counter() - t0])
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--arm", choices=["spin", "nospin"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.arm:
        print(json.dumps(arm(args.arm == "spin", args.frames)))
        return 0
    got: dict[str, list] = {"spin": [], "nospin": []}
    for _ in range(args.rounds):
        for name in got:
            cmd = [sys.executable, __file__, "--arm", name, "--frames", str(args.frames)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            got[name] += json.loads(out.stdout.splitlines()[-1])
    print(f"\n640x480, shipped model, onnxruntime; {args.rounds} alternating rounds x "
          f"{args.frames} frames per arm; p50 / p95 (ms)\n")  # fmt: skip
    print("| step | spin (ORT default) | no spin (default here) |\n|---|---:|---:|")
    for k, step in enumerate(STEPS):
        cells = []
        for name in got:
            v = np.array(got[name])[:, k] * 1e3
            cells.append(f"{np.percentile(v, 50):.2f} / {np.percentile(v, 95):.2f}")
        print(f"| {step} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
