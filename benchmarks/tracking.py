"""Persistent ids on synthetic video: id switches, fragmentations, MOTA and IDF1.

    python benchmarks/tracking.py --same-label --out benchmarks/tracking.png

Sequences come from ``mobius_core.data.sequences`` (shapes moving, occluding, leaving and
entering; seeds 0..N-1, 320x320). Rows:

- ``oracle``: the ground-truth masks and labels as detections, each dropped with
  probability ``--drop`` (a detector's misses), so only the tracker is measured;
- ``shapes_tiny``: the shipped model (eager torch, default pruning, the 36 training names
  as prompts, score > 0.3) on every frame, then the tracker;

each with the tracker's motion prediction on and off (and, with ``--same-label``, with
the hard same-label rule instead of the label penalty). Metrics:
``mobius_core.evaluation.tracking`` (mask IoU >= 0.5). ``--out`` draws a strip of frames
with the ids.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobius_core.data.sequences import render_sequence
from mobius_core.evaluation.tracking import tracking_metrics
from mobius_core.tracking import InstanceTracker, suppress_duplicates

OFFSET = 100_000  # ids of sequence s become s * OFFSET + id, so sequences never share one


def oracle_detections(frames, drop: float, seed: int):
    rng = np.random.default_rng(seed)
    out = []
    for f in frames:
        keep = [inst for inst in f.instances if rng.random() >= drop]
        empty = np.zeros((0, *f.image.shape[:2]), bool)
        masks = np.stack([i["mask"] for i in keep]) if keep else empty
        out.append((masks, [i["name"] for i in keep], np.ones(len(keep))))
    return out


def model_detections(frames, segmenter):
    out = []
    for f in frames:
        (inst,) = segmenter([f.image])
        out.append((inst.masks, list(inst.label_texts), inst.scores))
    return out


def track(detections, motion: bool, same_label: bool, threshold: float) -> tuple[list, float]:
    tracker = InstanceTracker(motion=motion, same_label=same_label)
    hyp, spent = [], 0.0
    for masks, labels, scores in detections:
        t0 = time.perf_counter()
        above = np.flatnonzero(np.asarray(scores) > threshold)
        masks, scores = masks[above], np.asarray(scores)[above]
        labels = [labels[i] for i in above]
        keep = suppress_duplicates(masks, scores)  # (the node also passes boxes: same result)
        ids = tracker.update(masks[keep], [labels[i] for i in keep])
        spent += time.perf_counter() - t0
        hyp.append(list(zip(ids.tolist(), masks[keep])))
    return hyp, spent


def build_segmenter(threshold: float):
    from mobius_core.data.synthetic import SEEN_CATEGORIES
    from mobius_core.inference import SegmenterSpec
    from mobius_core.inference import build_segmenter as build

    seg = build(SegmenterSpec(backend="torch", config="shapes_tiny", score_threshold=threshold))
    seg.set_prompts(list(SEEN_CATEGORIES))
    return seg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sequences", type=int, default=5, help="seeds 0..N-1")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--drop", type=float, default=0.1, help="oracle: chance to miss a detection")
    p.add_argument("--no-model", action="store_true", help="oracle rows only")
    p.add_argument("--thresholds", default="0.2,0.3", help="model score thresholds to compare")
    p.add_argument(
        "--same-label", action="store_true", help="also rows with the hard same-label rule"
    )
    p.add_argument("--out", help="PNG: frames of the first sequence with the model's ids")
    args = p.parse_args(argv)
    seqs = [render_sequence(s, args.frames) for s in range(args.sequences)]
    gt = [
        [(s * OFFSET + i["track_id"], i["mask"]) for i in f.instances]
        for s, frames in enumerate(seqs)
        for f in frames
    ]
    sources = {"oracle": [oracle_detections(f, args.drop, s) for s, f in enumerate(seqs)]}
    thresholds = [float(t) for t in args.thresholds.split(",")]
    settings = [("oracle", 0.0)]
    if not args.no_model:
        seg = build_segmenter(min(thresholds))
        sources["shapes_tiny"] = [model_detections(f, seg) for f in seqs]
        settings += [("shapes_tiny", t) for t in thresholds]
    rows, strips = [], {}
    for name, threshold in settings:
        per_seq = sources[name]
        for same_label in (False, True) if args.same_label else (False,):
            for motion in (True, False):
                hyp, spent = [], 0.0
                for s, dets in enumerate(per_seq):
                    h, t = track(dets, motion, same_label, threshold)
                    hyp += [[(s * OFFSET + i, m) for i, m in frame] for frame in h]
                    spent += t
                    if s == 0 and motion and not same_label:
                        strips.setdefault(name, h)
                m = tracking_metrics(gt, hyp)
                label = f"{name} (score > {threshold})" if name != "oracle" else name
                pairing = "same label only" if same_label else "label penalty"
                rows.append((label, pairing, "on" if motion else "off", m, 1000 * spent / len(gt)))
    print(f"{args.sequences} synthetic sequences x {args.frames} frames (320x320), "
          f"{int(rows[0][3]['gt'])} ground-truth objects over all frames; oracle drop "
          f"{args.drop}")  # fmt: skip
    print("| detections | pairing | motion | IDF1 | MOTA | id switches | per 100 frames | "
          "fragmentations | FP | FN | tracker ms/frame |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, pairing, motion, m, ms in rows:
        print(f"| {name} | {pairing} | {motion} | {m['idf1']:.1f} | {m['mota']:.1f} | "
              f"{m['id_switches']:.0f} "
              f"| {m['id_switches_per_100_frames']:.2f} | {m['fragmentations']:.0f} | "
              f"{m['fp']:.0f} | {m['fn']:.0f} | {ms:.2f} |")  # fmt: skip
    if args.out:
        draw_strip(seqs[0], strips.get("shapes_tiny") or strips["oracle"], args.out)
        print(f"plot: {args.out}")
    return 0


def draw_strip(frames, hyp, out: str, every: int = 6, count: int = 8) -> None:
    """Every ``every``-th frame of a sequence with each tracked mask outlined and its id."""
    from PIL import Image, ImageDraw

    from mobius_core.visualize import palette

    picks = list(range(0, len(frames), every))[:count]
    colours = palette(64)
    tiles = []
    for t in picks:
        img = Image.fromarray(frames[t].image)
        d = ImageDraw.Draw(img)
        for track_id, mask in hyp[t]:
            edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1)
                            & np.roll(mask, -1, 1))  # fmt: skip
            ys, xs = np.nonzero(edge)
            colour = colours[track_id % len(colours)]
            for y, x in zip(ys.tolist(), xs.tolist()):
                d.point((x, y), fill=colour)
            cy, cx = np.argwhere(mask).mean(0)
            d.text((cx - 4, cy - 6), str(track_id), fill=(255, 255, 255))
        d.text((4, 4), f"frame {t}", fill=(255, 255, 255))
        tiles.append(img)
    w, h = tiles[0].size
    sheet = Image.new("RGB", (w * 4, h * ((len(tiles) + 3) // 4)), "white")
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % 4) * w, (k // 4) * h))
    sheet.save(out)


if __name__ == "__main__":
    sys.exit(main())
