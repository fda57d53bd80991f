"""The 3D step alone (mobius_core.geometry3d) on the synthetic RGB-D world, with the
ground-truth masks: how well mask + depth + intrinsics place each object, apart from how
well the model segments it.

    python benchmarks/rgbd_3d.py [--scenes 100] [--seed 1000] [--plot benchmarks/rgbd_3d.png]

For every visible object of ``--scenes`` rendered scenes (640x480, the world's sensor model:
noise growing with z^2, mm quantisation, holes at edges and on dark surfaces), its visible
mask and box go through ``instance_3d`` with ``extent="completed"`` (the default) and
``"visible"``. Reported: the share with 3D; centre error (median, p90) in metres and as a
share of the object's distance; the axis-aligned 3D IoU with the object's whole-solid box;
over all objects and over the fully visible ones (visible fraction >= 0.9). Then the step's
time per frame with 5 instances (the first 5 objects of scenes that have 5 or more; else
repeated), p50/p95, on this machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobius_core.data.rgbd import rgbd_scenes
from mobius_core.geometry3d import EXTENTS, instance_3d, instances_3d, iou_3d, summarise_3d


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenes", type=int, default=100)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--plot", type=Path, default=None)
    args = p.parse_args()
    rows: dict[str, list[dict]] = {e: [] for e in EXTENTS}
    timing, five = [], None
    for scene in rgbd_scenes(args.scenes, args.seed):
        depth = scene.depth_m
        for obj in scene.objects:
            for extent in EXTENTS:
                r = instance_3d(obj.mask, depth, scene.camera, obj.box, extent=extent)
                row = {
                    "matched": True,
                    "has_3d": r.has_3d,
                    "distance": obj.distance,
                    "visible": obj.visible_fraction,
                }  # the mask is the truth: matched
                if r.has_3d:
                    err = float(np.linalg.norm(r.center - obj.center))
                    row.update(error=err, rel_error=err / obj.distance,
                               iou3d=iou_3d(r.center, r.size, obj.box3d))  # fmt: skip
                rows[extent].append(row)
        if len(scene.objects) >= 5 or five is None:
            objs = (scene.objects * 5)[:5]
            five = (np.stack([o.mask for o in objs]), np.array([o.box for o in objs]), depth,
                    scene.camera)  # fmt: skip
        masks, boxes, d, cam = five
        t0 = time.perf_counter()
        instances_3d(masks, boxes, d, cam)
        timing.append(time.perf_counter() - t0)
    print(f"\n{args.scenes} scenes (seed {args.seed}), 640x480, ground-truth masks\n")
    print("| extent | objects | with 3D | centre error p50 / p90 (m) | "
          "p50 / p90 of distance | 3D IoU p50 |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for extent in EXTENTS:
        for name, sel in (
            ("all", lambda r: True),
            ("fully visible", lambda r: r["visible"] >= 0.9),
        ):
            s = summarise_3d([r for r in rows[extent] if sel(r)])
            print(f"| {extent}, {name} | {s['gt_objects']} | {s['with_3d_share']:.1%} | "
                  f"{s['centre_error_m_median']:.3f} / {s['centre_error_m_p90']:.3f} | "
                  f"{s['centre_error_rel_median']:.1%} / {s['centre_error_rel_p90']:.1%} | "
                  f"{s['iou3d_median']:.2f} |")  # fmt: skip
    t = np.array(timing[1:]) * 1e3
    print(f"\n3D step, 5 instances at 640x480: p50 {np.percentile(t, 50):.2f} ms, "
          f"p95 {np.percentile(t, 95):.2f} ms ({len(t)} frames)")  # fmt: skip
    if args.plot:  # median centre error by distance, per extent (the target: 2 %)
        from mobius_core.visualize import line_plot

        edges = np.arange(1.0, 4.51, 0.5)
        series = []
        for extent in EXTENTS:
            got = [r for r in rows[extent] if r["has_3d"]]
            dist = np.array([r["distance"] for r in got])
            rel = np.array([100 * r["rel_error"] for r in got])
            mids, meds = [], []
            for a, b in zip(edges[:-1], edges[1:]):
                sel = (dist >= a) & (dist < b)
                if sel.sum() >= 5:
                    mids.append((a + b) / 2)
                    meds.append(float(np.median(rel[sel])))
            series.append((f"{extent} (median per 0.5 m)", mids, meds))
        img = line_plot(series, "centre error, % of the distance (ground-truth masks)",
                        "distance (m)", hline=2.0)  # fmt: skip
        img.save(args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
