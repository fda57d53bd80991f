"""Side by side with Ultralytics YOLO segmentation on the synthetic shapes benchmark.

Ultralytics is a benchmark-only extra, never a dependency of the package: ``make peer``
creates ``.venv-peer``, which sees the project's venv (torch, mobius_core) and adds
Ultralytics (requirements-peer.txt). Every step writes under ``--work`` (default
runs/peer) and can be rerun on its own:

    make peer
    P=.venv-peer/bin/python
    $P benchmarks/peer_yolo.py convert                        # synthetic train/val -> YOLO format
    $P benchmarks/peer_yolo.py probe                          # this machine's speed today
    $P benchmarks/peer_yolo.py train --minutes 38.4           # YOLOv8n-seg from scratch
    $P benchmarks/peer_yolo.py train --minutes 38.4 --model yolo11n-seg.yaml
    $P benchmarks/peer_yolo.py side-by-side --minutes 38.4   # both at once, one core each
    $P benchmarks/peer_yolo.py report --ours-run runs/peer/shapes_tiny \
        --out benchmarks/peer_yolo.png

``convert`` writes the same images the shipped ``shapes_tiny`` trained on (synthetic
``train``, 1500 images, seed 0) and the reported ``val`` split (100 images, seed 0) as YOLO
polygon labels (multi-part masks joined as Ultralytics' own COCO converter does).
``train`` trains from scratch, offline, on the CPU, for a wall-clock budget (Ultralytics'
``time`` argument: it fits the epoch count and schedule to the budget), saving a checkpoint
every epoch and the elapsed seconds at each epoch end.
``probe`` times 60 steps of the shapes_tiny recipe, so a day on which this shared machine is
slower than the day shapes_tiny was trained can be told apart from a model difference.
``side-by-side`` trains YOLOv8n-seg and the shapes_tiny recipe at the same time, each pinned
to one core with one thread (Ultralytics' own default on a 2-core machine), for the same
wall-clock budget: the same machine under the same load, whatever the day. The shapes_tiny
run fits its schedule to the budget (``train.time_schedule``: the lr drop at the same
fraction of the time as in the step-based recipe) and keeps a checkpoint every 250 steps.
``report`` evaluates YOLO's final and per-epoch checkpoints and the shipped shapes_tiny on
``val`` with the project's own COCO evaluator (same ground truth, same matching), times
both ONNX graphs with onnxruntime (1 thread, 320 and 384, interleaved frames, median and
p95), counts parameters and GFLOPs (one multiply-add = one FLOP, both through
torch.utils.flop_counter), prints a markdown table and draws AP against wall-clock seconds.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")  # Ultralytics: no update checks, no downloads

from mobius_core.atomic import atomic_write_bytes  # noqa: E402
from mobius_core.data.synthetic import cached_split  # noqa: E402
from mobius_core.rle import decode_rle, encode_rle  # noqa: E402

SHIPPED_AP = ROOT / "benchmarks" / "logs" / "shapes_tiny_run4_ap.csv"
SHIPPED_STEPS_PER_S = 4.17  # benchmarks/RESULTS.md: 9598 steps in 38.4 minutes (fourth run)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _ultralytics():
    try:
        import ultralytics
    except ImportError:
        sys.exit(
            "peer_yolo.py needs Ultralytics, a benchmark-only extra: run `make peer` and use "
            ".venv-peer/bin/python"
        )
    return ultralytics


# ---------------------------------------------------------------------------------- convert


def mask_polygon(mask: np.ndarray) -> np.ndarray | None:
    """One YOLO polygon for a binary mask: [N,2] pixel coordinates, None if too small.

    Occluded shapes can fall apart into several pieces; they are joined into one polygon
    the way Ultralytics' COCO converter joins multi-part segments (merge_multi_segment)."""
    import cv2
    from ultralytics.data.converter import merge_multi_segment

    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    parts = [c.reshape(-1, 2).astype(np.float64) for c in contours if len(c) >= 3]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    merged = merge_multi_segment([p.reshape(-1).tolist() for p in parts])
    return np.concatenate(merged, axis=0).reshape(-1, 2)


def convert(work: Path, num_train: int, num_val: int) -> Path:
    """Write the synthetic train/val splits as a YOLO segmentation dataset; returns data.yaml."""
    _ultralytics()
    data = work / "data"
    names: list[str] | None = None
    for split, n in (("train", num_train), ("val", num_val)):
        ds = cached_split(split, n, progress=True)
        gt = json.loads(ds.ann_file.read_text())
        cats = sorted(gt["categories"], key=lambda c: c["id"])
        if names is None:
            names = [c["name"] for c in cats]
        elif names != [c["name"] for c in cats]:
            raise SystemExit(f"{split} has other categories than train; cannot share one model")
        cls_of = {c["id"]: i for i, c in enumerate(cats)}
        by_image: dict[int, list] = {}
        for a in gt["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a)
        (data / "images" / split).mkdir(parents=True, exist_ok=True)
        (data / "labels" / split).mkdir(parents=True, exist_ok=True)
        dropped = 0
        for im in gt["images"]:
            src = ds.image_dir / im["file_name"]
            dst = data / "images" / split / Path(im["file_name"]).name
            if not dst.exists():
                os.symlink(src.resolve(), dst)
            w, h = im["width"], im["height"]
            lines = []
            for a in by_image.get(im["id"], []):
                poly = mask_polygon(decode_rle(a["segmentation"]))
                if poly is None:
                    dropped += 1
                    continue
                xy = (poly / np.array([w, h])).clip(0, 1).reshape(-1)
                lines.append(f"{cls_of[a['category_id']]} " + " ".join(f"{v:.5f}" for v in xy))
            label = data / "labels" / split / (Path(im["file_name"]).stem + ".txt")
            atomic_write_text(label, "\n".join(lines) + ("\n" if lines else ""))
        print(f"{split}: {len(gt['images'])} images, {len(gt['annotations'])} instances "
              f"({dropped} too small for a polygon)")  # fmt: skip
    assert names is not None
    yaml = data / "data.yaml"
    body = [f"path: {data.resolve()}", "train: images/train", "val: images/val", "names:"]
    body += [f"  {i}: {json.dumps(n)}" for i, n in enumerate(names)]
    atomic_write_text(yaml, "\n".join(body) + "\n")
    return yaml


# ------------------------------------------------------------------------------------ train


def train(work: Path, model_yaml: str, minutes: float, imgsz: int, batch: int) -> Path:
    """Train ``model_yaml`` from scratch for ``minutes`` of wall clock; returns the run dir."""
    _ultralytics()
    from ultralytics import YOLO

    yaml = work / "data" / "data.yaml"
    if not yaml.is_file():
        raise SystemExit(f"{yaml} is missing: run `peer_yolo.py convert` first")
    name = Path(model_yaml).stem
    run = work / "yolo" / name
    model = YOLO(model_yaml)  # a .yaml builds the network from scratch: nothing is downloaded
    start = time.monotonic()
    epochs: list[tuple[int, float]] = []

    def on_epoch_end(trainer) -> None:  # elapsed training seconds at each epoch's end
        epochs.append((int(trainer.epoch) + 1, time.monotonic() - start))
        rows = ["epoch,seconds"] + [f"{e},{s:.1f}" for e, s in epochs]
        atomic_write_text(run / "epoch_times.csv", "\n".join(rows) + "\n")

    model.add_callback("on_train_epoch_end", on_epoch_end)
    model.train(
        data=str(yaml), epochs=1000, time=minutes / 60.0, imgsz=imgsz, batch=batch,
        device="cpu", workers=0, amp=False, plots=False, pretrained=False, val=False,
        save_period=1, project=str(run.parent), name=name, exist_ok=True, seed=0,
        verbose=False,
    )  # fmt: skip
    print(f"{name}: {len(epochs)} epochs in {time.monotonic() - start:.0f} s -> {run}")
    return run


def probe(steps: int = 60) -> float:
    """Steps per second of the shapes_tiny recipe on this machine now (2 threads)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "mobius_core.cli", "train", "shapes_tiny", "--synthetic",
            "train", "--num-images", "1500", "--out", tmp, "--max-steps", str(steps),
            "--set", "train.log_every=10", "--set", "train.checkpoint_every=100000",
        ]  # fmt: skip
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        with open(Path(tmp) / "log.csv") as f:
            rates = [float(r["steps_per_s"]) for r in csv.DictReader(f)]
    rate = float(np.median(rates[1:] or rates))
    print(f"shapes_tiny recipe today: {rate:.2f} steps/s (the shipped run: "
          f"{SHIPPED_STEPS_PER_S:.2f}; ratio {rate / SHIPPED_STEPS_PER_S:.2f})")  # fmt: skip
    return rate


def side_by_side(work: Path, minutes: float, model_yaml: str, ours_set: list[str]) -> None:
    """YOLO on core 0 and shapes_tiny on core 1, one thread each, started together."""
    import subprocess

    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("side-by-side needs 2 cores (one per model)")
    ours = work / "shapes_tiny"
    if (ours / "last.pt").exists():
        raise SystemExit(f"{ours} holds a run already: move it away or choose another --work")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    yolo_cmd = ["taskset", "-c", "0", sys.executable, __file__, "--work", str(work), "train",
                "--minutes", str(minutes), "--model", model_yaml]  # fmt: skip
    ours_cmd = [
        "taskset", "-c", "1", str(ROOT / ".venv" / "bin" / "python"), "-m", "mobius_core.cli",
        "train", "shapes_tiny", "--synthetic", "train", "--num-images", "1500", "--out",
        str(ours), "--no-progress", "--set", f"train.max_minutes={minutes}",
        "--set", "train.time_schedule=true", "--set", "train.keep_checkpoints=true",
        "--set", "train.checkpoint_every=250",
    ] + [a for kv in ours_set for a in ("--set", kv)]  # fmt: skip
    ours.mkdir(parents=True, exist_ok=True)
    with open(work / "yolo_train.log", "w") as ylog, open(ours / "train.log", "w") as olog:
        procs = [
            subprocess.Popen(yolo_cmd, env=env, stdout=ylog, stderr=subprocess.STDOUT, cwd=ROOT),
            subprocess.Popen(ours_cmd, env=env, stdout=olog, stderr=subprocess.STDOUT, cwd=ROOT),
        ]
        codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"exit codes {codes}; logs in {work}")
    print(f"done: {work / 'yolo'} and {ours}")


def run_config(checkpoint: Path):
    """The shapes_tiny config a run trained (its model section, as the checkpoint recorded
    it, e.g. with --set model.pixel_decoder.mask_conv=separable)."""
    from mobius_core.training.checkpoint import load_checkpoint, recorded_config

    return recorded_config(load_checkpoint(checkpoint), "shapes_tiny")


def ours_curve(run: Path, ds, imgsz: int) -> list[tuple[float, float]]:
    """(training seconds, mask AP unpruned) of a shapes_tiny run's kept checkpoints
    (step_*.pt), by the project's evaluator; cached in the run folder as curve.csv."""
    from tqdm import tqdm

    from mobius_core.build import load_trained_model
    from mobius_core.evaluation.evaluator import evaluate_dataset
    from mobius_core.training.checkpoint import load_checkpoint

    cache = run / "curve.csv"
    cfg = run_config(run / "last.pt")
    done: dict[str, tuple[float, float]] = {}
    if cache.is_file():
        with open(cache) as f:
            done = {
                r["file"]: (float(r["seconds"]), float(r["mask_ap"])) for r in csv.DictReader(f)
            }
    for ckpt in tqdm(sorted(run.glob("step_*.pt")), desc="checkpoints", unit="ckpt"):
        if ckpt.name in done:
            continue
        seconds = float(load_checkpoint(ckpt)["elapsed_s"])
        model = load_trained_model(cfg, str(ckpt))
        ap = evaluate_dataset(model, ds, short_side=imgsz, referring=False).metrics["mask_ap"]
        done[ckpt.name] = (seconds, ap)
        rows = ["file,seconds,mask_ap"] + [f"{k},{s:.1f},{a:.2f}" for k, (s, a) in done.items()]
        atomic_write_text(cache, "\n".join(rows) + "\n")
    return sorted(done.values())


# ----------------------------------------------------------------------------------- report


def yolo_results(weights: Path, ds, imgsz: int) -> list[dict]:
    """COCO result dicts for YOLO's predictions on ``ds`` (masks at the image's size)."""
    from ultralytics import YOLO

    gt = json.loads(ds.ann_file.read_text())
    cat_ids = [c["id"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
    model = YOLO(str(weights))
    out = []
    for im in gt["images"]:
        (r,) = model.predict(
            str(ds.image_dir / im["file_name"]), imgsz=imgsz, conf=0.001, iou=0.7, max_det=100,
            retina_masks=True, device="cpu", verbose=False,
        )  # fmt: skip
        if r.masks is None:
            continue
        boxes = r.boxes.xyxy.numpy()
        for k in range(len(boxes)):
            x0, y0, x1, y1 = (float(v) for v in boxes[k])
            out.append(
                {
                    "image_id": im["id"],
                    "category_id": cat_ids[int(r.boxes.cls[k])],
                    "score": float(r.boxes.conf[k]),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "segmentation": encode_rle(r.masks.data[k].numpy() > 0.5),
                }
            )
    return out


def evaluate_yolo(weights: Path, ds, imgsz: int) -> dict[str, float]:
    from mobius_core.evaluation.coco import evaluate_coco

    return evaluate_coco(json.loads(ds.ann_file.read_text()), yolo_results(weights, ds, imgsz))


def yolo_curve(run: Path, ds, imgsz: int) -> list[tuple[float, float]]:
    """(seconds, mask AP) for every saved epoch checkpoint, by the project's evaluator;
    cached in the run folder as curve.csv."""
    cache = run / "curve.csv"
    times_file = run / "epoch_times.csv"
    if not times_file.is_file():
        return []
    with open(times_file) as f:
        seconds = {int(r["epoch"]): float(r["seconds"]) for r in csv.DictReader(f)}
    done: dict[int, float] = {}
    if cache.is_file():
        with open(cache) as f:
            done = {int(r["epoch"]): float(r["mask_ap"]) for r in csv.DictReader(f)}
    from tqdm import tqdm

    for epoch in tqdm(sorted(seconds), desc="epochs", unit="ckpt"):
        ckpt = run / "weights" / f"epoch{epoch - 1}.pt"  # Ultralytics numbers them from 0
        if epoch in done or not ckpt.is_file():
            continue
        done[epoch] = evaluate_yolo(ckpt, ds, imgsz)["mask_ap"]
        rows = ["epoch,mask_ap"] + [f"{e},{a:.2f}" for e, a in sorted(done.items())]
        atomic_write_text(cache, "\n".join(rows) + "\n")
    return [(seconds[e], a) for e, a in sorted(done.items()) if e in seconds]


def shipped_curve() -> list[tuple[float, float]]:
    """(training seconds, mask AP on val) of the shipped run's checkpoints every 500 steps
    (benchmarks/logs, written by eval_snapshots.py from the checkpoints themselves)."""
    with open(SHIPPED_AP) as f:
        return [(float(r["seconds"]), float(r["mask_ap"])) for r in csv.DictReader(f)]


def flop_count(module, x) -> float:
    """GFLOPs (multiply-adds) of ``module(x)``, as mobius_core.flops counts them."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        module(x)
    return fc.get_total_flops() / 2e9


def yolo_onnx(weights: Path, imgsz: int) -> Path:
    from ultralytics import YOLO

    out = weights.with_name(f"{weights.stem}-{imgsz}.onnx")
    if not out.is_file():
        path = YOLO(str(weights)).export(format="onnx", imgsz=imgsz, opset=17, simplify=False)
        Path(path).rename(out)
    return out


def latency(yolo_weights: Path, sizes: list[int], frames: int, images: list[np.ndarray],
            ours_run: Path | None = None):  # fmt: skip
    """Median and p95 onnxruntime inference ms of both graphs, frames interleaved; ours is
    the shipped shapes_tiny, or the side-by-side run's model where ``ours_run`` is given."""
    import onnxruntime as ort

    from mobius_core.build import load_trained_model
    from mobius_core.config import load_config
    from mobius_core.data.synthetic import SEEN_CATEGORIES
    from mobius_core.export.onnx import export_config_model
    from mobius_core.imageops import resize_image
    from mobius_core.inference import SegmenterSpec, build_segmenter

    if ours_run is None:
        cfg, tag = load_config("shapes_tiny"), "shapes_tiny"
        model = load_trained_model(cfg)
    else:
        cfg, tag = run_config(ours_run / "last.pt"), f"sbs-{ours_run.parent.name}"
        model = load_trained_model(cfg, str(ours_run / "last.pt"))
    rows = []
    for size in sizes:
        ours_path = yolo_weights.parent / f"{tag}-{size}.onnx"
        if not ours_path.is_file():
            export_config_model(cfg, model, ours_path, size)
        # the default pruning the graph records, one thread, the numpy resize
        spec = SegmenterSpec("onnxruntime", str(ours_path), size=size, max_size=size,
                             threads=1, ort_preprocess=False)  # fmt: skip
        ours = build_segmenter(spec)
        ours.set_prompts(list(SEEN_CATEGORIES))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        yolo = ort.InferenceSession(str(yolo_onnx(yolo_weights, size)), opts,
                                    providers=["CPUExecutionProvider"])  # fmt: skip
        name = yolo.get_inputs()[0].name
        t_ours, t_yolo = [], []
        for i in range(frames + 3):
            image = images[i % len(images)]
            x = resize_image(image, (size, size))[None]  # [1,3,s,s] in [0,1], as YOLO takes
            t0 = time.perf_counter()
            yolo.run(None, {name: x})
            dt = time.perf_counter() - t0
            ours([image])
            if i >= 3:
                t_yolo.append(dt * 1000)
                t_ours.append(ours.last_times.inference * 1000)
        for who, t in (("shapes_tiny", t_ours), ("YOLO", t_yolo)):
            rows.append((who, size, float(np.median(t)), float(np.percentile(t, 95))))
    return rows


def image_params(model) -> int:
    """Parameters of a MOBIUS model without its text encoder, which runs once per prompt set
    (the same count for the shipped and the side-by-side model)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("text_encoder."))


def report(
    work: Path, models: list[str], imgsz: int, frames: int, num_val: int, out: str | None,
    ours_run: Path | None = None,
) -> None:  # fmt: skip
    _ultralytics()
    import torch
    from ultralytics import YOLO

    from mobius_core.build import load_trained_model, prune_schedule
    from mobius_core.config import load_config
    from mobius_core.evaluation.evaluator import evaluate_dataset
    from mobius_core.flops import count_flops
    from mobius_core.visualize import line_plot

    val = cached_split("val", num_val)
    cfg = load_config("shapes_tiny")
    tiny = load_trained_model(cfg)
    ours = evaluate_dataset(tiny, val, short_side=imgsz, prune=prune_schedule(cfg.model.pruning),
                            referring=False).metrics  # fmt: skip
    n_ours = image_params(tiny)
    table = [("shapes_tiny (shipped, pruned)", ours, n_ours / 1e6,
              {s: count_flops(tiny, s, num_prompts=36)["total"] for s in (320, 384)})]  # fmt: skip
    series = [("shapes_tiny (shipped run)", *zip(*shipped_curve()))]
    if ours_run is not None:  # the side-by-side run: same machine, same time, same load
        sbs_cfg = run_config(ours_run / "last.pt")
        sbs = load_trained_model(sbs_cfg, str(ours_run / "last.pt"))
        pruned = evaluate_dataset(sbs, val, short_side=imgsz, referring=False,
                                  prune=prune_schedule(cfg.model.pruning)).metrics  # fmt: skip
        full = evaluate_dataset(sbs, val, short_side=imgsz, referring=False).metrics
        n_sbs = image_params(sbs)
        sbs_flops = {s: count_flops(sbs, s, num_prompts=36)["total"] for s in (320, 384)}
        table.append(("shapes_tiny (side by side, pruned)", pruned, n_sbs / 1e6, sbs_flops))
        table.append(("shapes_tiny (side by side, unpruned)", full, n_sbs / 1e6, sbs_flops))
        series.append(("shapes_tiny (side by side)", *zip(*ours_curve(ours_run, val, imgsz))))
    images = [np.asarray(__import__("PIL.Image").Image.open(val.image_dir / im["file_name"])
                         .convert("RGB")) for im in val.images[:20]]  # fmt: skip
    lat = []
    for name in models:
        run = work / "yolo" / Path(name).stem
        weights = run / "weights" / "last.pt"
        if not weights.is_file():
            print(f"{weights} is missing: run `peer_yolo.py train --model {name}` first")
            continue
        m = evaluate_yolo(weights, val, imgsz)
        net = YOLO(str(weights)).model.float().eval()
        flops = {s: flop_count(net, torch.zeros(1, 3, s, s)) for s in (320, 384)}
        params = sum(p.numel() for p in net.parameters()) / 1e6
        table.append((Path(name).stem, m, params, flops))
        curve = yolo_curve(run, val, imgsz)
        if curve:
            series.append((Path(name).stem, *zip(*curve)))
        lat += [(Path(name).stem, *r)
                for r in latency(weights, [320, 384], frames, images, ours_run)]  # fmt: skip
    print(f"synthetic val ({num_val} images, seed 0) at {imgsz}, the project's COCO evaluator; "
          "shapes_tiny's parameters and GFLOPs leave out its text encoder (prompt embeddings "
          "are computed once per prompt set)")  # fmt: skip
    print("| model | mask AP | box AP | params (M) | GFLOPs 320 | GFLOPs 384 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, m, params, flops in table:
        print(f"| {name} | {m['mask_ap']:.1f} | {m['box_ap']:.1f} | {params:.2f} | "
              f"{flops[320]:.2f} | {flops[384]:.2f} |")  # fmt: skip
    # where the AP comes from: loose matches (AP50) and COCO's object-size ranges
    print("\n| model | mask AP50 | mask AP75 | mask AP small | medium | large |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, m, _, _ in table:
        print(f"| {name} | {m['mask_ap50']:.1f} | {m['mask_ap75']:.1f} | "
              f"{m['mask_ap_small']:.1f} | {m['mask_ap_medium']:.1f} | "
              f"{m['mask_ap_large']:.1f} |")  # fmt: skip
    if lat:
        who = "the side-by-side run's" if ours_run is not None else "the shipped"
        print(f"\nonnxruntime CPU, 1 thread, inference only (ms), frames interleaved; "
              f"shapes_tiny is {who} model with its default pruning")  # fmt: skip
        print("| peer | size | shapes_tiny p50 | p95 | peer p50 | p95 | shapes_tiny / peer |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        by = {(r[0], r[1], r[2]): r for r in lat}
        for peer, who, size, p50, p95 in lat:
            if who != "YOLO":
                continue
            ours_row = by[(peer, "shapes_tiny", size)]
            print(f"| {peer} | {size} | {ours_row[3]:.1f} | {ours_row[4]:.1f} | {p50:.1f} | "
                  f"{p95:.1f} | {ours_row[3] / p50:.2f} |")  # fmt: skip
    if out:
        img = line_plot(series, "mask AP on val against training wall-clock", "seconds")
        buf = __import__("io").BytesIO()
        img.save(buf, format="PNG")
        atomic_write_bytes(Path(out), buf.getvalue())
        print(f"plot: {out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", default=str(ROOT / "runs" / "peer"), help="working folder")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="write the synthetic splits in YOLO format")
    c.add_argument("--num-train", type=int, default=1500)
    c.add_argument("--num-val", type=int, default=100)
    t = sub.add_parser("train", help="train a YOLO model from scratch for a wall-clock budget")
    t.add_argument("--model", default="yolov8n-seg.yaml")
    t.add_argument("--minutes", type=float, default=38.4, help="the shipped recipe's 38.4")
    t.add_argument("--imgsz", type=int, default=320)
    t.add_argument("--batch", type=int, default=16)
    pr = sub.add_parser("probe", help="time the shapes_tiny recipe on this machine now")
    pr.add_argument("--steps", type=int, default=60)
    r = sub.add_parser("report", help="evaluate, time and plot both")
    r.add_argument("--models", default="yolov8n-seg.yaml", help="comma-separated")
    r.add_argument("--imgsz", type=int, default=320)
    r.add_argument("--frames", type=int, default=50)
    r.add_argument("--num-val", type=int, default=100)
    r.add_argument("--out", help="PNG: mask AP against training seconds")
    r.add_argument("--ours-run", help="a shapes_tiny run trained side by side (its folder)")
    b = sub.add_parser("side-by-side", help="train YOLO and shapes_tiny at once, a core each")
    b.add_argument("--minutes", type=float, default=38.4)
    b.add_argument("--model", default="yolov8n-seg.yaml")
    b.add_argument(
        "--ours-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for the shapes_tiny run (repeatable)",
    )
    args = p.parse_args(argv)
    work = Path(args.work).resolve()  # Ultralytics puts a relative project under its own runs/
    if args.cmd == "convert":
        print(convert(work, args.num_train, args.num_val))
    elif args.cmd == "train":
        train(work, args.model, args.minutes, args.imgsz, args.batch)
    elif args.cmd == "probe":
        probe(args.steps)
    elif args.cmd == "side-by-side":
        side_by_side(work, args.minutes, args.model, args.ours_set)
    else:
        ours = Path(args.ours_run) if args.ours_run else None
        report(work, args.models.split(","), args.imgsz, args.frames, args.num_val, args.out, ours)
    return 0


if __name__ == "__main__":
    sys.exit(main())
