r"""Where shapes_tiny's category errors come from: colour, shape, or both.

For every ground-truth instance of synthetic ``val`` the query whose mask overlaps it best
(IoU >= 0.5, unpruned) is taken, and its top-scoring prompt is compared with the instance's
name ("<colour> <shape>"): right, wrong colour, wrong shape, or both. Beside it, how far
apart the model's projected prompt embeddings are: the mean cosine similarity of two names
that share the colour (other shape) and of two that share the shape (other colour), and the
classifier's logit scale. Checkpoints of runs load with the model config they recorded.

    python benchmarks/class_confusion.py mobius_core/weights/shapes_tiny.pt \
        runs/peer/shapes_tiny/last.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mobius_core.build import load_trained_model  # noqa: E402
from mobius_core.data.synthetic import SHAPES, cached_split  # noqa: E402
from mobius_core.data.transforms import ResizeFlip, collate  # noqa: E402
from mobius_core.training.checkpoint import load_checkpoint, recorded_config  # noqa: E402


def load(checkpoint: str):
    return load_trained_model(
        recorded_config(load_checkpoint(checkpoint), "shapes_tiny"), checkpoint, []
    )


@torch.no_grad()
def matched_instances(model, ds, images: int | None = None):
    """For each of the first ``images`` images of ``ds`` (all by default), unpruned at 320:
    yields (model output, target, [(j, q), ...]), one pair for every ground-truth instance j
    whose best-IoU query q overlaps it with mask IoU >= 0.5."""
    text = model.encode_text(ds.prompts)
    transform = ResizeFlip((320,), 320, 0.0)
    for i in range(len(ds) if images is None else min(images, len(ds))):
        batch, targets, _ = collate([transform(ds[i])])
        out = model(model.normalize(batch), text)
        masks = F.interpolate(out.masks, size=batch.shape[-2:], mode="bilinear")[0] > 0
        gt = targets[0].masks
        inter = (masks[:, None] & gt[None]).flatten(2).sum(-1).float()
        union = (masks[:, None] | gt[None]).flatten(2).sum(-1).float().clamp(min=1)
        iou = inter / union  # [Q,N]
        best = iou.argmax(0).tolist()
        yield out, targets[0], [(j, q) for j, q in enumerate(best) if iou[q, j] >= 0.5]


def confusion(model, ds, pairs: list | None = None) -> dict[str, int]:
    names = [p.split() for p in ds.prompts]
    counts = {"matched": 0, "right": 0, "colour": 0, "shape": 0, "both": 0}
    for out, target, matches in matched_instances(model, ds):
        for j, q in matches:
            pc, ps = names[int(out.logits[0, q].argmax())]
            tc, ts = names[int(target.labels[j])]
            counts["matched"] += 1
            key = "right" if (pc, ps) == (tc, ts) else "both" if pc != tc and ps != ts else (
                "colour" if pc != tc else "shape")  # fmt: skip
            counts[key] += 1
            if pairs is not None:
                pairs.append((ts, ps))
    return counts


@torch.no_grad()
def spread(model, prompts: list[str]) -> tuple[float, float, float]:
    _, _, z = model.project_text(model.encode_text(prompts))
    z = F.normalize(z, dim=-1)
    sim = z @ z.T
    parts = [p.split() for p in prompts]
    same_colour, same_shape = [], []
    for i in range(len(parts)):
        for j in range(i + 1, len(parts)):
            if parts[i][0] == parts[j][0]:
                same_colour.append(float(sim[i, j]))
            elif parts[i][1] == parts[j][1]:
                same_shape.append(float(sim[i, j]))
    scale = float(model.decoder.classifier.logit_scale.exp())
    return sum(same_colour) / len(same_colour), sum(same_shape) / len(same_shape), scale


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--images", type=int, default=100, help="synthetic val images (seed 0)")
    ap.add_argument(
        "--shapes",
        action="store_true",
        help="also print each checkpoint's true-shape x predicted-shape counts",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    ds = cached_split("val", args.images, 0)
    print("| checkpoint | matched | right | wrong shape | wrong colour | both | cos same colour "
          "| cos same shape | logit scale |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    matrices: list[tuple[str, list[tuple[str, str]]]] = []
    for ckpt in args.checkpoints:
        model = load(ckpt).eval()
        pairs: list[tuple[str, str]] = []
        c = confusion(model, ds, pairs)
        colour, shape, scale = spread(model, list(ds.prompts))
        print(f"| {ckpt} | {c['matched']} | {c['right']} | {c['shape']} | {c['colour']} | "
              f"{c['both']} | {colour:.3f} | {shape:.3f} | {scale:.1f} |")  # fmt: skip
        if args.shapes:
            matrices.append((ckpt, pairs))
    for ckpt, pairs in matrices:
        print(f"\n{ckpt}: true shape (rows) x predicted shape (columns), matched instances\n")
        print("| | " + " | ".join(SHAPES) + " |")
        print("|---|" + "---:|" * len(SHAPES))
        for t in SHAPES:
            row = [sum(1 for a, b in pairs if a == t and b == p) for p in SHAPES]
            print(f"| {t} | " + " | ".join(map(str, row)) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
