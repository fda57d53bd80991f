"""The ``mobius`` command line.

mobius zoo                         list the named configs
mobius config NAME [--set k=v]     print a resolved config as YAML
mobius flops NAME --size 800 [--kept Q1,...,QL] [--prompts 80] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from .config import (
    ConfigError,
    add_set_argument,
    config_to_dict,
    load_config,
    parse_set_args,
    zoo_names,
)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="zoo name (see `mobius zoo`) or path to a YAML file")
    add_set_argument(p)


def _cmd_zoo(args: argparse.Namespace) -> int:
    for name in zoo_names():
        cfg = load_config(name)
        print(f"{name:20s} {cfg.description}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, parse_set_args(args.overrides))
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
    return 0


def _parse_kept(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(
            f"--kept {text!r} must be comma-separated integers, e.g. 300,250,200"
        ) from None


def _cmd_flops(args: argparse.Namespace) -> int:
    from .build import build_model
    from .flops import count_flops, parse_size

    size = parse_size(args.size)
    overrides = {"model.backbone.resolution": max(size), **parse_set_args(args.overrides)}
    cfg = load_config(args.config, overrides)
    model = build_model(cfg)
    result = count_flops(model, size, num_prompts=args.prompts, kept=_parse_kept(args.kept))
    result = {"config": cfg.name, **result}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{cfg.name} at {result['size'][0]}x{result['size'][1]}, {result['prompts']} prompts")
        for key in ("vision_encoder", "pixel_decoder", "modality_fusion", "decoder", "total"):
            print(f"  {key:16s} {result[key]:10.2f} GFLOPs")
        print(f"  kept queries per decoder layer: {result['kept']}")
    return 0


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", help="zoo name or YAML (default: the exported model's, else shapes_tiny)"
    )
    add_set_argument(p)
    p.add_argument("--checkpoint", help="torch backend: a checkpoint (default: the shipped one)")
    p.add_argument("--backend", default="torch", help="torch (default), ort or trt")
    p.add_argument(
        "--model",
        help="ort: the .onnx from `mobius export`; trt: the engine "
        "(default: the shipped model; trt builds its engine once, cached)",
    )
    p.add_argument(
        "--text-model", help="ort/trt: the text graph from `mobius export --text-encoder`"
    )
    p.add_argument("--embeddings", help="ort/trt: prompt embeddings from `mobius embed`")
    p.add_argument("--size", type=int, help="short side (default: the model's input size)")
    p.add_argument("--no-prune", action="store_true", help="run every query through every layer")


def _add_data_args(p: argparse.ArgumentParser, default_images: int) -> None:
    p.add_argument("--data", help="COCO-format annotation json")
    p.add_argument("--images", help="folder of the images named in --data")
    p.add_argument(
        "--synthetic",
        choices=("train", "val", "val_unseen"),
        help="use a split of the synthetic shapes benchmark instead (generated once, cached)",
    )
    p.add_argument(
        "--rgbd",
        choices=("train", "val"),
        help="use a split of the synthetic RGB-D solids world instead (generated once, cached)",
    )
    p.add_argument(
        "--rgbd-size", default="480x640", help="rgbd split image size HxW (default 480x640)"
    )
    p.add_argument(
        "--num-images",
        type=int,
        default=default_images,
        help=f"images in the synthetic or rgbd split (default {default_images})",
    )
    p.add_argument("--seed", type=int, default=0, help="synthetic/rgbd split seed (default 0)")


def _dataset(args: argparse.Namespace):
    from .data.coco import CocoDataset
    from .data.rgbd import cached_rgbd_split
    from .data.synthetic import cached_split

    if args.synthetic or args.rgbd:
        if sum(map(bool, (args.synthetic, args.rgbd, args.data or args.images))) > 1:
            raise ValueError("give one of --synthetic, --rgbd or --data/--images")
        if args.synthetic:
            return cached_split(args.synthetic, args.num_images, args.seed, progress=True)
        h, w = (int(v) for v in args.rgbd_size.lower().split("x"))
        return cached_rgbd_split(args.rgbd, args.num_images, args.seed, (h, w), progress=True)
    if not (args.data and args.images):
        raise ValueError("give --data ANN.json and --images DIR, or --synthetic/--rgbd SPLIT")
    return CocoDataset(args.data, args.images)


def _train_dataset(args: argparse.Namespace):
    """The training data: a datasets file, or one dataset (plus its refs with a ratio)."""
    from .data.mixed import (
        CategorySource,
        MixedDataset,
        ReferringSource,
        SourceSpec,
        load_sources,
    )

    if args.datasets:
        if args.data or args.images or args.synthetic or args.rgbd:
            raise ValueError("give either --datasets or --data/--images/--synthetic/--rgbd")
        return load_sources(args.datasets)
    dataset = _dataset(args)
    if args.referring_ratio < 0:
        raise ValueError(f"--referring-ratio must be >= 0, got {args.referring_ratio}")
    if args.referring_ratio == 0:
        return dataset
    refs = dataset.ann_file.parent / "refs.json"
    return MixedDataset(
        [
            SourceSpec("instances", CategorySource(dataset), 1.0),
            SourceSpec("referring", ReferringSource(dataset, refs), args.referring_ratio),
        ]
    )


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from .build import build_model
    from .training.distributed import init_from_env
    from .training.engine import Trainer

    rank, world = init_from_env()  # torchrun: join the process group
    cfg = load_config(args.config, parse_set_args(args.overrides))
    dataset = _train_dataset(args)
    torch.manual_seed(cfg.train.seed)  # identical initial weights in every process
    model = build_model(cfg)
    if args.init:
        from .training.checkpoint import load_checkpoint, load_model_weights

        load_model_weights(model, load_checkpoint(args.init), f"--init {args.init}")
    trainer = Trainer(
        cfg, model, dataset, args.out, progress=not args.no_progress, device=args.device
    )
    checkpoint = Path(args.out) / "last.pt"
    if args.resume:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint}; start without it")
        trainer.resume(checkpoint)
        print(f"resumed from {checkpoint} at step {trainer.step}")
    elif checkpoint.exists():
        raise FileExistsError(
            f"{checkpoint} exists: pass --resume to continue it or choose another --out"
        )
    last = trainer.fit(args.max_steps)
    if rank == 0:
        loss = last["loss"] if last else float("nan")
        procs = f" on {world} processes" if world > 1 else ""
        print(f"trained to step {trainer.step}{procs}: {trainer.stop_reason}; last loss {loss:.4f}")
        print(f"checkpoint: {checkpoint}; log: {Path(args.out) / 'log.csv'}")
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


def _load_model(cfg, checkpoint: str | None, overrides: list[str]):
    from .build import load_trained_model

    return load_trained_model(cfg, checkpoint, overrides)


def _cmd_release(args: argparse.Namespace) -> int:
    from .training.checkpoint import load_checkpoint, release_state, save_checkpoint

    state = release_state(
        load_checkpoint(args.checkpoint), args.keep_text_encoder, args.half, ema=not args.no_ema
    )
    path = save_checkpoint(args.out, state)  # atomic, with a content hash
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB, {len(state['model'])} tensors")
    return 0


def _read_image(path: str):
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, FileNotFoundError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc


def _runtime_config(args: argparse.Namespace):
    """--config, else the config an exported --model was made from, else shapes_tiny."""
    name = args.config
    if name is None and args.model and str(args.model).endswith(".onnx"):
        from .inference import io_spec

        name = io_spec.read_metadata(args.model).get(io_spec.META_CONFIG)
    return load_config(name or "shapes_tiny", parse_set_args(args.overrides))


def _segmenter(args: argparse.Namespace, cfg, threshold: float = 0.3):
    """A Segmenter for --backend (torch: the config's model; ort/trt: --model, else the
    shipped model: for ort its cached ONNX bundle, for trt an engine built once from that
    bundle's graph, :func:`_shipped_engine`), its text source (--embeddings, --text-model, or
    the config's text encoder) and pruning (--no-prune: off); ``inference.build_segmenter``
    chooses."""
    from .inference import SegmenterSpec, build_segmenter
    from .inference.backend import backend_name

    model = args.model
    if model is None and backend_name(args.backend) == "tensorrt":
        model = str(_shipped_engine(cfg, args.size))
    spec = SegmenterSpec(
        backend=args.backend,
        model=model,
        checkpoint=getattr(args, "checkpoint", None),
        config=args.config,
        overrides=tuple(args.overrides),
        text_model=args.text_model,
        embeddings=args.embeddings,
        size=args.size,
        prune=not getattr(args, "no_prune", False),
        score_threshold=threshold,
    )
    return build_segmenter(spec)


def _shipped_engine(cfg, size: int | None) -> Path:
    """The shipped model's TensorRT engine under the cache (built the first time, and again
    when its graph changes); says on stderr which one runs, so --json output stays clean."""
    from .export.tensorrt import shipped_engine

    try:
        path, built = shipped_engine(cfg, size)
    except ImportError as exc:  # no TensorRT here: the message says how to get it
        raise ValueError(str(exc)) from exc
    print(f"tensorrt: {'built' if built else 'reusing'} engine {path} (shipped {cfg.name}; "
          "--model ENGINE for another)", file=sys.stderr)  # fmt: skip
    return path


def _cmd_predict(args: argparse.Namespace) -> int:
    from PIL import Image

    from .atomic import atomic_write_bytes
    from .visualize import draw_instances

    prompts = [p.strip() for p in args.prompts.split(",") if p.strip()]
    cfg = _runtime_config(args)
    image = _read_image(args.image)
    seg = _segmenter(args, cfg, args.threshold)
    seg.set_prompts(prompts, args.task)
    visual = [_numbers(v, 2, "--point") for v in args.point or []]
    visual += [_numbers(v, 4, "--box") for v in args.box or []]
    (inst,) = seg([image], [visual] if visual else None)
    if args.out:
        buf = io.BytesIO()
        Image.fromarray(draw_instances(image, inst)).save(buf, format="PNG")
        atomic_write_bytes(args.out, buf.getvalue())
    if args.json:
        rows = [
            {"label": inst.label_texts[i], "score": round(float(inst.scores[i]), 4),
             "box": [round(float(v), 1) for v in inst.boxes[i]]}
            for i in range(len(inst))
        ]  # fmt: skip
        print(json.dumps(rows))
    else:
        print(f"{len(inst)} instances" + (f"; overlay written to {args.out}" if args.out else ""))
    return 0


def _numbers(text: str, count: int, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise ValueError(f"{flag} {text!r}: give {count} comma-separated pixel coordinates")
    return values


def _cmd_export(args: argparse.Namespace) -> int:
    from .export.onnx import export_config_model, export_text_graph

    cfg = load_config(args.config, parse_set_args(args.overrides))
    model = _load_model(cfg, args.checkpoint, args.overrides)
    size = args.size or cfg.model.input_size
    path = export_config_model(
        cfg, model, args.out, size, args.dynamic_hw, args.opset, visual=args.visual
    )
    print(f"image graph: {path} ({path.stat().st_size / 1e6:.1f} MB, input {size}x{size}"
          f"{', dynamic H/W' if args.dynamic_hw else ''}"
          f"{', point/box prompt inputs' if args.visual else ''})")  # fmt: skip
    if args.text_encoder:
        text = export_text_graph(model.text_encoder, args.text_encoder, args.opset)
        print(f"text graph: {text} ({text.stat().st_size / 1e6:.1f} MB)")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from .build import build_text_encoder_from_config
    from .inference.text import TorchTextSource

    cfg = load_config(args.config, parse_set_args(args.overrides))
    prompts = [p.strip() for p in args.prompts.split(",") if p.strip()]
    arrays = TorchTextSource(build_text_encoder_from_config(cfg.model)).encode(prompts)
    path = arrays.save(args.out)
    print(f"{path}: {len(arrays.prompts)} prompts, {arrays.dim}-d")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .data.synthetic import cached_split
    from .inference.bench import benchmark, format_table
    from .vocab import prompt_set

    if args.target:  # positional MODEL: a file for ort/trt, a config for torch
        if args.target.endswith((".onnx", ".engine", ".plan")):
            if args.backend in ("torch", "pytorch"):
                args.backend = "ort" if args.target.endswith(".onnx") else "trt"
            args.model = args.target
        else:
            args.config = args.target
    cfg = _runtime_config(args)
    names = prompt_set(args.prompts)
    if args.prompt_list:
        names = [p.strip() for p in args.prompt_list.split(",") if p.strip()]
    if args.model and args.backend in ("torch", "pytorch"):
        raise ValueError("--backend torch runs the --config model; --model is for ort/trt")
    setups = {}
    first = _segmenter(args, cfg, threshold=0.3)
    first.set_prompts(names)
    label = f"{args.backend}:{args.model or cfg.name}"
    if args.compare_prune:
        second = _segmenter(args, cfg, threshold=0.3)
        second.set_prompts(names)
        second.prune = _parse_prune(args.compare_prune)
        setups[f"{label} pruning {_describe(first.prune)}"] = first
        setups[f"{label} pruning {_describe(second.prune)}"] = second
    elif args.compare:
        other = argparse.Namespace(**{**vars(args), "model": args.compare})
        second = _segmenter(other, cfg, threshold=0.3)
        second.set_prompts(names)
        setups[label] = first
        setups[f"{args.backend}:{args.compare}"] = second
    else:
        setups[label] = first
    data = cached_split("val", 20, 0)
    images = [_read_image(str(data.image_dir / info["file_name"])) for info in data.images]
    rows, peak = benchmark(setups, images, args.frames, args.warmup, progress=not args.json)
    if args.json:
        print(json.dumps({"rows": [r.as_dict() for r in rows], "peak_rss_mb": round(peak, 1)}))
    else:
        print(
            f"{len(names)} prompts, synthetic val images (320x320), {args.frames} frames per setup"
        )
        print(format_table(rows, peak))
    return 0


def _parse_prune(text: str):
    if text == "off":
        return None
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise ValueError(f"pruning setting {text!r}: give LOW,HIGH (e.g. 0.05,0.2) or off") from exc
    return {"prune_low": low, "prune_high": high, "prune_beta": 1.0}


def _describe(prune) -> str:
    return "off" if prune is None else f"{prune['prune_low']:g}-{prune['prune_high']:g}"


def _cmd_build_engine(args: argparse.Namespace) -> int:
    from .export.tensorrt import build_engine, default_profile
    from .inference import io_spec

    meta = io_spec.read_metadata(args.model)
    profile = default_profile(
        args.model, prompts=args.prompts, max_prompts=args.max_prompts,
        max_batch=args.max_batch, min_size=args.min_size, size=args.size,
        max_aspect=args.max_aspect, max_visual=args.max_visual,
    )  # fmt: skip
    text = None
    if args.precision == "int8":
        from .build import build_text_encoder_from_config
        from .inference.text import TorchTextSource

        cfg = load_config(meta.get(io_spec.META_CONFIG, "shapes_tiny"))
        names = [p.strip() for p in args.calib_prompts.split(",") if p.strip()]
        text = TorchTextSource(build_text_encoder_from_config(cfg.model)).encode(names)
    path = build_engine(args.model, args.cache_dir, args.precision, profile, args.calib_images,
                        args.dla_core, args.workspace_gb, args.force, text)  # fmt: skip
    hw = profile.fixed_hw
    sizes = (f"{hw[0]}x{hw[1]} only" if hw else f"H {profile.height[0]}..{profile.height[2]}, "
             f"W {profile.width[0]}..{profile.width[2]}")  # fmt: skip
    print(f"engine: {path} ({sizes})")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .build import prune_schedule
    from .evaluation.evaluator import evaluate_dataset

    cfg = load_config(args.config, parse_set_args(args.overrides))
    model = _load_model(cfg, args.checkpoint, args.overrides)
    prune = None if args.no_prune else prune_schedule(cfg.model.pruning)
    dataset = _dataset(args)
    size = args.size or cfg.model.input_size
    if args.task == "visual":
        from .evaluation.visual import evaluate_visual

        found = evaluate_visual(
            model, dataset, size, prune=prune, with_text=not args.no_text, progress=not args.json
        )
    else:
        found = evaluate_dataset(
            model, dataset, short_side=size, prune=prune, progress=not args.json, task=args.task
        ).metrics
    metrics = {"config": cfg.name, "pruning": prune is not None, **found}
    if args.json:
        print(json.dumps(metrics))
    else:
        for key, value in metrics.items():
            print(f"{key:14s} {value:.2f}" if isinstance(value, float) else f"{key:14s} {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mobius", description="MOBIUS open-vocabulary instance segmentation"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("zoo", help="list the named configs")
    p.set_defaults(func=_cmd_zoo)
    p = sub.add_parser("config", help="print a resolved config as YAML")
    _add_config_args(p)
    p.set_defaults(func=_cmd_config)
    p = sub.add_parser("flops", help="GFLOPs per component (one multiply-add = one FLOP)")
    _add_config_args(p)
    p.add_argument("--size", default="800", help="input size N or HxW (default 800)")
    p.add_argument("--prompts", type=int, default=80, help="number of text prompts (default 80)")
    p.add_argument("--kept", help="kept queries after each decoder layer, e.g. 300,250,...")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_flops)
    p = sub.add_parser("train", help="train a config on a COCO-format dataset")
    _add_config_args(p)
    _add_data_args(p, default_images=600)
    p.add_argument(
        "--datasets",
        help="YAML list of training sources with ratios and tasks (category, referring, "
        "agnostic; box-only with masks: false), instead of --data/--images/--synthetic",
    )
    p.add_argument(
        "--referring-ratio",
        type=float,
        default=0.0,
        help="also train on the refs.json beside the annotations (--synthetic or --data), "
        "this many referring batches per category batch (default 0: none)",
    )
    p.add_argument("--out", required=True, help="output folder (log.csv, last.pt)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--max-steps", type=int, help="stop at this step (default train.max_steps)")
    p.add_argument(
        "--init",
        help="start from these model weights (a checkpoint or release; parts it lacks, such as "
        "a visual prompter, start fresh) instead of from scratch",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="where to train: cpu (default), cuda or cuda:N; batches are built on the CPU",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("eval", help="box/mask AP and calibration on a COCO-format dataset")
    _add_config_args(p)
    p.add_argument("--checkpoint", help="a checkpoint written by `mobius train`")
    _add_data_args(p, default_images=100)
    p.add_argument(
        "--size", type=int, help="short side at inference (default: the config's model.input_size)"
    )
    p.add_argument("--no-prune", action="store_true", help="run every query through every layer")
    p.add_argument(
        "--task",
        choices=("category", "agnostic", "referring", "visual"),
        default="category",
        help="category-guided AP (default), class-agnostic AP, only the referring metrics, or "
        "visual prompts (mask IoU of the answer to one click / one box per instance)",
    )
    p.add_argument(
        "--no-text",
        action="store_true",
        help="--task visual: no text prompts beside the clicks (default: the category names)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_eval)
    p = sub.add_parser("predict", help="segment one image and draw the result")
    p.add_argument("image", help="an image file (PNG, JPEG, ...)")
    p.add_argument("--prompts", required=True, help='comma-separated prompts, e.g. "person,car"')
    _add_runtime_args(p)
    p.add_argument("--task", default="category", choices=("category", "agnostic", "referring"))
    p.add_argument("--threshold", type=float, default=0.3, help="score threshold (default 0.3)")
    p.add_argument(
        "--point", action="append", metavar="X,Y", help="also segment what is at this pixel "
        "(repeatable; needs the torch backend or a graph exported with --visual)",
    )  # fmt: skip
    p.add_argument(
        "--box", action="append", metavar="X0,Y0,X1,Y1", help="also segment the object in this "
        "pixel box (repeatable)",
    )  # fmt: skip
    p.add_argument("--out", help="write the overlay PNG here")
    p.add_argument("--json", action="store_true", help="print the instances as JSON")
    p.set_defaults(func=_cmd_predict)
    p = sub.add_parser("export", help="export the image graph (and text encoder) to ONNX")
    _add_config_args(p)
    p.add_argument("--checkpoint", help="default: the checkpoint shipped for the config")
    p.add_argument("--size", type=int, help="input size (default: the config's model.input_size)")
    p.add_argument("--out", required=True, help="the image graph .onnx")
    p.add_argument("--text-encoder", help="also write the text encoder graph here (.onnx)")
    p.add_argument("--dynamic-hw", action="store_true", help="dynamic input height/width")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument(
        "--visual", action="store_true", help="the graph with point/box prompt inputs "
        "(io_spec.VISUAL_INPUTS; the model needs a trained visual prompter)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_export)
    p = sub.add_parser("embed", help="write prompt embeddings for a torch-free runtime (.npz)")
    _add_config_args(p)
    p.add_argument("--prompts", required=True, help="comma-separated prompts")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.set_defaults(func=_cmd_embed)
    p = sub.add_parser("bench", help="latency per stage (p50/p95), FPS, memory, kept queries")
    p.add_argument(
        "target", nargs="?", help="MODEL: an .onnx/.engine (ort/trt) or a config name (torch)"
    )
    _add_runtime_args(p)
    p.add_argument("--prompts", type=int, default=80, help="number of prompts (default 80)")
    p.add_argument(
        "--prompt-list", help="comma-separated prompts to use instead of the first COCO names"
    )
    p.add_argument("--frames", type=int, default=30, help="timed frames per setup (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed frames first (default 3)")
    p.add_argument("--compare", help="a second model (.onnx/.engine) timed side by side")
    p.add_argument("--compare-prune", help="a second pruning setting LOW,HIGH or off, side by side")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_bench)
    p = sub.add_parser("build-engine", help="build (or reuse) a TensorRT engine from an ONNX graph")
    p.add_argument("model", help="the image graph from `mobius export`")
    p.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "int8"))
    p.add_argument("--cache-dir", default="engines", help="engine cache folder (default engines/)")
    p.add_argument("--prompts", type=int, default=16, help="prompt count to optimise for")
    p.add_argument("--max-prompts", type=int, default=256, help="largest prompt count (profile)")
    p.add_argument("--max-batch", type=int, default=1, help="largest batch (profile)")
    p.add_argument("--size", type=int, help="--dynamic-hw graphs: largest short side "
                   "(default the export size)")  # fmt: skip
    p.add_argument("--min-size", type=int, help="--dynamic-hw graphs: smallest short side "
                   "(default half of --size, the node's budget ladder)")  # fmt: skip
    p.add_argument("--max-aspect", type=float, default=16 / 9, help="--dynamic-hw graphs: "
                   "widest frame aspect (long/short side, default 16:9)")  # fmt: skip
    p.add_argument("--max-visual", type=int, default=16, help="point/box prompts per image "
                   "(--visual graphs, profile)")  # fmt: skip
    p.add_argument("--calib-images", help="INT8: a folder of representative images")
    p.add_argument("--calib-prompts", default="object", help="INT8: prompts used while calibrating")
    p.add_argument("--dla-core", type=int, default=-1, help="run on this DLA core (Jetson)")
    p.add_argument("--workspace-gb", type=float, default=2.0, help="builder workspace (GB)")
    p.add_argument("--force", action="store_true", help="rebuild even if the cached engine fits")
    p.set_defaults(func=_cmd_build_engine)
    p = sub.add_parser("release", help="strip a training checkpoint down to inference weights")
    p.add_argument("checkpoint", help="a checkpoint written by `mobius train`")
    p.add_argument("--out", required=True, help="where to write the release checkpoint")
    p.add_argument(
        "--keep-text-encoder",
        action="store_true",
        help="keep the text encoder's weights (needed when it was fine-tuned)",
    )
    p.add_argument("--half", action="store_true", help="store weights as float16 (half the size)")
    p.add_argument(
        "--no-ema",
        action="store_true",
        help="ship the last step's weights even where the checkpoint has an EMA average",
    )
    p.set_defaults(func=_cmd_release)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"mobius {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
