r"""How much of an object's shape its predicted mask holds, and how much of it the model uses.

For every ground-truth instance the query whose mask overlaps it best (IoU >= 0.5,
unpruned) is taken, as in ``class_confusion.py``. From that query's own mask logits and box
(the model's final outputs, what the shape head reads) the polar shape head's features are
computed: the G x G grid over the box and the G Fourier magnitudes of the mask's extent
along 2G rays (``heads.ShapeHead(kind="polar")``; no trained weights involved). A small MLP
probe (one hidden layer, full-batch Adam) is fitted on the instances of ``--train-images``
training images and scored on ``val``, once on the grid alone, once on the harmonics alone
and once on both. Beside it, the model's own shape accuracy on the same ``val`` instances
(its top prompt's shape word).

    python benchmarks/shape_probe.py runs/peer4/shapes_tiny/last.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from class_confusion import load, matched_instances  # noqa: E402

from mobius_core.data.synthetic import SHAPES, cached_split  # noqa: E402
from mobius_core.modeling.heads import ShapeHead  # noqa: E402


@torch.no_grad()
def collect(model, ds, images: int, grid: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features [N, G*G + G], true shape [N], the model's predicted shape [N]) over the
    matched instances of the first ``images`` images of ``ds``."""
    polar = ShapeHead(8, grid, "polar")
    shape_of = [SHAPES.index(p.split()[1]) for p in ds.prompts]
    feats, truth, pred = [], [], []
    for out, target, matches in matched_instances(model, ds, images):
        described = polar.features(out.masks, out.boxes)[0]  # [Q, G*G + G]
        for j, q in matches:
            feats.append(described[q])
            truth.append(shape_of[int(target.labels[j])])
            pred.append(shape_of[int(out.logits[0, q].argmax())])
    return torch.stack(feats), torch.tensor(truth), torch.tensor(pred)


def probe(train_x, train_y, val_x, val_y, steps: int = 1500, seed: int = 0) -> float:
    """Validation accuracy of a 1-hidden-layer MLP fitted on standardised features."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-4
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(train_x.shape[1], 128), torch.nn.ReLU(), torch.nn.Linear(128, len(SHAPES))
    )
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(train_x), train_y).backward()
        opt.step()
    with torch.no_grad():
        return float((net(val_x).argmax(1) == val_y).float().mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--train-images", type=int, default=300, help="of the synthetic train split")
    ap.add_argument("--images", type=int, default=100, help="synthetic val images (seed 0)")
    ap.add_argument("--grid", type=int, default=12, help="G: the polar head's grid and harmonics")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    train, val = cached_split("train", 1500, 0), cached_split("val", args.images, 0)
    g2 = args.grid * args.grid
    subsets = {"grid": slice(0, g2), "harmonics": slice(g2, None), "both": slice(None)}
    print("| checkpoint | val instances | model's shape accuracy | probe: grid | "
          "probe: harmonics | probe: both |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for ckpt in args.checkpoints:
        model = load(ckpt).eval()
        tx, ty, _ = collect(model, train, args.train_images, args.grid)
        vx, vy, vp = collect(model, val, args.images, args.grid)
        acc = {k: probe(tx[:, s], ty, vx[:, s], vy) for k, s in subsets.items()}
        own = float((vp == vy).float().mean())
        print(f"| {ckpt} | {len(vy)} | {own:.3f} | {acc['grid']:.3f} | "
              f"{acc['harmonics']:.3f} | {acc['both']:.3f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
