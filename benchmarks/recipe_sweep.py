"""Training-recipe A/Bs for shapes_tiny at equal CPU time, run many at once on a GPU.

What limits shapes_tiny against YOLOv8n-seg (benchmarks/RESULTS.md, "Side by side") is how
much it learns per second of a CPU core. A 38-minute CPU run per arm is too slow to search
with, but how much a recipe learns per *step* does not depend on the machine. So:

1. ``probe`` measures, on the CPU that matters (1 thread per arm, two arms at a time, one
   per core), each arm's steps per second against the base recipe's, and writes the ratios
   to ``benchmarks/logs/recipe_sweep_cpu_rates.json``.
2. ``run`` trains every arm for the steps it would make in the same CPU time as
   ``--base-steps`` of the base recipe (the side-by-side run made ~2200 in 38.4 minutes),
   all arms at once on ``--device`` (one process each), keeping a checkpoint every quarter,
   with a wall-clock ``--deadline`` after which unfinished arms are stopped; then evaluates
   the checkpoints from 50% of each run on synthetic ``val`` (100 images, the project's
   evaluator, unpruned, in parallel CPU processes) into ``OUT/results.csv``.
3. ``report`` prints the table (mask AP at 50%, 75%, 100% of the budget).

The schedule of each arm is fitted to its own step count (``lr_drop_steps`` at 84.6% of it
for the step decay, as in the shipped recipe; linear/cosine reach 0 at its end).

    python benchmarks/recipe_sweep.py probe
    python benchmarks/recipe_sweep.py run --device cuda --out runs/sweep --deadline 6
    python benchmarks/recipe_sweep.py report --out runs/sweep
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RATES = ROOT / "benchmarks" / "logs" / "recipe_sweep_cpu_rates.json"
DROP_AT = 5500 / 6500  # the shipped recipe's lr drop, as a fraction of the run

LIN = {"train.lr_decay": "linear"}
LIN8 = {**LIN, "train.lr": 8e-4}
#: arm -> overrides of the shapes_tiny recipe
ARMS: dict[str, dict[str, object]] = {
    "base": {},
    "linear": LIN,
    "lin_lr8": LIN8,
    "lin_lr16": {**LIN, "train.lr": 1.6e-3},
    "cos_lr8": {"train.lr_decay": "cosine", "train.lr": 8e-4},
    "lin_lr8_ema": {**LIN8, "train.ema_decay": 0.998},
    "lin_lr8_bs8": {**LIN8, "train.batch_size": 8},
    "lin_lr16_bs8": {**LIN, "train.lr": 1.6e-3, "train.batch_size": 8},
    "lin_lr8_bs2": {**LIN8, "train.batch_size": 2},
    "lin_lr8_mos50": {**LIN8, "train.mosaic_prob": 0.5},
    "lin_lr8_mos100": {**LIN8, "train.mosaic_prob": 1.0},
    "lin_lr16_mos50": {**LIN, "train.lr": 1.6e-3, "train.mosaic_prob": 0.5},
    "lin_lr8_dn20": {**LIN8, "train.dn_number": 20},
    "lin_lr8_small": {**LIN8, "train.short_sides": [224, 256, 288]},
    "lin_lr8_clip1": {**LIN8, "train.grad_clip": 1.0},
    "channels_last": {"train.channels_last": "true"},
}
#: overrides that change what a step costs (the others share the base recipe's rate)
COST_KEYS = (
    "train.batch_size",
    "train.mosaic_prob",
    "train.dn_number",
    "train.short_sides",
    "train.ema_decay",
    "train.hybrid_queries",
    "train.channels_last",
)
#: of those, the ones that can make a step cheaper
CHEAPER_KEYS = ("train.batch_size", "train.short_sides", "train.channels_last")


def _set_args(overrides: dict[str, object]) -> list[str]:
    out = []
    for k, v in overrides.items():
        out += ["--set", f"{k}={json.dumps(v) if isinstance(v, list) else v}"]
    return out


def _train_cmd(out: Path, steps: int, overrides: dict[str, object], device: str) -> list[str]:
    schedule = {
        "train.max_steps": steps,
        "train.max_minutes": 0,
        "train.time_schedule": "false",
        "train.lr_drop_steps": [round(DROP_AT * steps)],
        "train.log_every": 25,
        "train.checkpoint_every": max(steps // 4, 1),
        "train.keep_checkpoints": "true",
        "train.tensorboard": "false",
    }
    return [
        sys.executable, "-m", "mobius_core.cli", "train", "shapes_tiny", "--synthetic", "train",
        "--num-images", "1500", "--out", str(out), "--no-progress", "--device", device,
    ] + _set_args({**schedule, **overrides})  # fmt: skip


def _cost_class(arm: str) -> str:
    """The first arm with the same cost-changing overrides as ``arm`` (base if none): its
    measured rate stands for ``arm``'s."""

    def cost(a: str) -> dict[str, object]:
        return {k: v for k, v in ARMS[a].items() if k in COST_KEYS}

    return next(a for a in ARMS if cost(a) == cost(arm))


# ------------------------------------------------------------------------------------ probe


def _probe_one(arm: str, core: int, steps: int, tmp: Path) -> float:
    out = tmp / arm
    cmd = ["taskset", "-c", str(core)] + _train_cmd(out, steps, ARMS[arm], "cpu")
    cmd += ["--set", "train.log_every=5", "--set", f"train.checkpoint_every={10**6}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    with open(out / "log.csv") as f:
        rows = [(int(r["step"]), float(r["steps_per_s"])) for r in csv.DictReader(f)]
    # steps_per_s is cumulative from the start: the rate over the later steps
    (s0, r0), (s1, r1) = rows[len(rows) // 3], rows[-1]
    return (s1 - s0) / (s1 / r1 - s0 / r0)


def probe(steps: int, arms: list[str], rates_path: Path = RATES) -> None:
    import tempfile

    others = sorted({_cost_class(a) for a in arms} - {"base"})
    ratios: dict[str, float] = {"base": 1.0}
    with tempfile.TemporaryDirectory() as tmp:
        # pairs, one per core, base in every pair so each ratio is measured side by side
        for arm in others:
            with ProcessPoolExecutor(2) as pool:
                fb = pool.submit(_probe_one, "base", 0, steps, Path(tmp) / f"{arm}-base")
                fa = pool.submit(_probe_one, arm, 1, steps, Path(tmp) / arm)
                rb, ra = fb.result(), fa.result()
            ratios[arm] = round(ra / rb, 4)
            print(f"{arm:16s} {ra:.3f} steps/s, base beside it {rb:.3f}: ratio {ra / rb:.3f}")
    from mobius_core.atomic import atomic_write_bytes

    atomic_write_bytes(rates_path, (json.dumps(ratios, indent=1, sort_keys=True) + "\n").encode())
    print(f"wrote {rates_path}")


# -------------------------------------------------------------------------------------- run


def arm_steps(arm: str, base_steps: int, rates: dict[str, float]) -> int:
    """Steps of ``arm`` in the CPU time of ``base_steps`` base steps."""
    cls = _cost_class(arm)
    if cls not in rates:
        raise SystemExit(f"no CPU rate for {cls!r} in {RATES}: run `recipe_sweep.py probe` first")
    ratio = rates[cls]
    if not any(k in CHEAPER_KEYS for k in ARMS[arm]):
        ratio = min(ratio, 1.0)  # it only adds work: a ratio above 1 is the probe's noise
    return max(4, 4 * round(base_steps * ratio / 4))  # quarters: whole checkpoints


def _evaluate(ckpt: str) -> dict[str, float]:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from mobius_core.build import load_trained_model
    from mobius_core.data.synthetic import cached_split
    from mobius_core.evaluation.evaluator import evaluate_dataset
    from mobius_core.training.checkpoint import load_checkpoint, recorded_config

    state = load_checkpoint(ckpt)
    model = load_trained_model(recorded_config(state, "shapes_tiny"), ckpt, [])
    val = cached_split("val", 100, 0)
    m = evaluate_dataset(model, val, short_side=320, referring=False).metrics
    return {"step": int(state["step"]), "mask_ap": m["mask_ap"], "box_ap": m["box_ap"]}


def run(out: Path, device: str, base_steps: int, deadline_min: float, arms: list[str],
        workers: int) -> None:  # fmt: skip
    from mobius_core.data.synthetic import cached_split

    rates = json.loads(RATES.read_text())
    plan = {a: arm_steps(a, base_steps, rates) for a in arms}
    cached_split("train", 1500, 0, progress=True)  # once, before the arms read it
    cached_split("val", 100, 0)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {}
    start = time.time()
    for arm in arms:
        (out / arm).mkdir(exist_ok=True)
        log = open(out / arm / "train.log", "w")
        cmd = _train_cmd(out / arm, plan[arm], ARMS[arm], device)
        procs[arm] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    print(f"{len(procs)} arms started: " + ", ".join(f"{a} {n}" for a, n in plan.items()))
    finished: dict[str, float] = {}
    while len(finished) < len(procs) and time.time() - start < deadline_min * 60:
        time.sleep(2)
        for arm, p in procs.items():
            if arm not in finished and p.poll() is not None:
                finished[arm] = time.time() - start
                print(f"  {arm}: exit {p.returncode} after {finished[arm]:.0f} s", flush=True)
    for arm, p in procs.items():
        if p.poll() is None:
            p.kill()
            print(f"  {arm}: stopped at the deadline")
    ckpts = sorted(  # the second half of each run (the quarter checkpoints from 50% on)
        str(c)
        for arm in arms
        for c in (out / arm).glob("step_*.pt")
        if int(c.stem.split("_")[1]) * 2 >= plan[arm]
    )
    print(f"evaluating {len(ckpts)} checkpoints with {workers} processes", flush=True)
    with ProcessPoolExecutor(workers) as pool:
        metrics = list(pool.map(_evaluate, ckpts))
    rows = []
    for c, m in zip(ckpts, metrics):
        arm = Path(c).parent.name
        rows.append({"arm": arm, "planned_steps": plan[arm], **m,
                     "fraction": round(m["step"] / plan[arm], 3),
                     "train_s": round(finished.get(arm, -1.0), 1)})  # fmt: skip
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    report(out)


def report(out: Path) -> None:
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    by_arm: dict[str, dict[float, float]] = {}
    planned = {}
    for r in rows:
        by_arm.setdefault(r["arm"], {})[float(r["fraction"])] = float(r["mask_ap"])
        planned[r["arm"]] = int(r["planned_steps"])
    print("| arm | overrides | steps (equal CPU time) | mask AP @50% | @75% | @100% |")
    print("|---|---|---:|---:|---:|---:|")
    for arm in sorted(by_arm, key=lambda a: -max(by_arm[a].values())):
        ap = by_arm[arm]
        at = [f"{ap[f]:.1f}" if f in ap else "-" for f in (0.5, 0.75, 1.0)]
        over = ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in ARMS.get(arm, {}).items())
        print(f"| {arm} | {over or 'shipped recipe'} | {planned[arm]} | " + " | ".join(at) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("probe", help="CPU steps/s of each arm against the base recipe")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--rates", type=Path, default=RATES, help="where the ratios go (run reads "
                   f"{RATES.relative_to(ROOT)})")  # fmt: skip
    r = sub.add_parser("run", help="train all arms at once and evaluate their checkpoints")
    r.add_argument("--out", type=Path, default=ROOT / "runs" / "sweep")
    r.add_argument("--device", default="cuda")
    r.add_argument("--base-steps", type=int, default=2200)
    r.add_argument("--deadline", type=float, default=6.0, help="minutes for training")
    r.add_argument("--arms", default=",".join(ARMS))
    r.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    q = sub.add_parser("report", help="the table of a finished run")
    q.add_argument("--out", type=Path, default=ROOT / "runs" / "sweep")
    args = ap.parse_args(argv)
    if args.cmd in ("probe", "run"):
        unknown = [a for a in args.arms.split(",") if a not in ARMS]
        if unknown:
            raise SystemExit(f"unknown arms {unknown}; known: {', '.join(ARMS)}")
    if args.cmd == "probe":
        probe(args.steps, args.arms.split(","), args.rates)
    elif args.cmd == "run":
        run(args.out.resolve(), args.device, args.base_steps, args.deadline,
            args.arms.split(","), args.workers)  # fmt: skip
    else:
        report(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
