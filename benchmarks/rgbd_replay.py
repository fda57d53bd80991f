"""The node end to end in 3D: an RGB-D bag of the synthetic world (``make_bag(rgbd=True)``:
image, registered 16UC1 depth, the scenes' camera_info, 640x480) replayed through the real
node with ``use_depth`` (``mobius-ros replay``'s ``run_replay``, as fast as the node takes
frames), and the report's "3d" section as a markdown table: each ground-truth object matched
to the node's instance of its label with the highest mask IoU (>= 0.5); the share matched,
the share of those with 3D, centre error (median, p90; metres and share of the distance)
and the median axis-aligned 3D IoU, over all objects and the fully visible ones; the node's
3D step time per frame (diagnostics ``depth_step_ms``).

    python benchmarks/rgbd_replay.py [--frames 60] [--seed 0] [--model PATH] [--config NAME]
                                     [--backend B] [--out DIR] [--threshold 0.05]

``--model`` / ``--config`` / ``--backend`` go to the node's ``model`` / ``config`` /
``backend`` parameters (default: the shipped model; a .pt checkpoint runs with torch). Unlike
rgbd_3d.py (ground-truth masks), the masks here are the model's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobius_ros.bags import IMAGE_TOPIC, make_bag
from mobius_ros.replay import run_replay, section_3d_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="", help="the node's model parameter ('' = shipped)")
    p.add_argument("--config", default="", help="the node's config parameter")
    p.add_argument(
        "--backend",
        default="",
        help="the node's backend (default: torch for a .pt --model, else the node's)",
    )
    p.add_argument("--threshold", type=float, default=0.05, help="the node's score_threshold")
    p.add_argument("--out", type=Path, default=None, help="bag + replay folder (default: temp)")
    p.add_argument("--domain-id", type=int, default=None)
    p.add_argument("--json", action="store_true", help="also print the 3d section as JSON")
    args = p.parse_args(argv)
    if args.model and not Path(args.model).exists():
        p.error(f"--model {args.model}: no such file")
    out = args.out or Path(tempfile.mkdtemp(prefix="rgbd_replay_"))
    bag, gt = make_bag(out / "data", frames=args.frames, seed=args.seed, rgbd=True)
    params = {"score_threshold": str(args.threshold)}
    if args.model:
        params["model"] = str(Path(args.model).resolve())
    if args.config:
        params["config"] = args.config
    backend = args.backend or ("torch" if args.model.endswith(".pt") else "")
    if backend:
        params["backend"] = backend
    domain = args.domain_id if args.domain_id is not None else 20 + (os.getpid() + 50) % 60
    report = run_replay(bag, IMAGE_TOPIC, out / "replay", None, None, gt, node_params=params,
                        domain_id=domain, timeout_s=60,
                        progress=lambda line: print(line, file=sys.stderr, flush=True))  # fmt: skip
    if "3d" not in report:
        print(f"no 3d section (status {report['status']}); see {out / 'replay'}", file=sys.stderr)
        return 1
    s = report["3d"]
    model = args.model or "shipped model"
    step = s["depth_step_ms"]
    print(f"\n{args.frames} RGB-D frames (seed {args.seed}, 640x480) through the node, "
          f"{model}{f' ({args.config})' if args.config else ''}, score_threshold "
          f"{args.threshold:g}: {report['outputs']} results, mask AP "
          f"{report.get('mask_ap', float('nan')):.1f}, latency p50 "
          f"{report['latency_p50_ms']:.0f} ms; 3D step "
          f"{'-' if step is None else f'{step:.2f}'} ms per frame "
          f"({s['frames_with_depth']} frames with depth)\n")  # fmt: skip
    print("\n".join(section_3d_table(s)))
    if args.json:
        print(json.dumps(s))
    print(f"\nreport: {out / 'replay' / 'report.md'}", file=sys.stderr)
    return 0 if report["status"] == "complete" else 1


if __name__ == "__main__":
    sys.exit(main())
