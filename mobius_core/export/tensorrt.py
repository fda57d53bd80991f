"""TensorRT engines: build from the exported ONNX graph, cache by a precise key, run.

Written against TensorRT's public Python API (10.x: ``tensorrt.Builder``, ``OnnxParser``,
``IBuilderConfig``, ``IOptimizationProfile``, ``IInt8EntropyCalibrator2``) with device buffers
from ``mobius_core.inference.cuda`` (cuda-python or pycuda). TensorRT is not installable on CI
machines: the logic that decides things (cache key, engine file name, profile choice, sidecar
checks, calibration batches) is plain Python, and building and running are tested against a
test double of the TensorRT API (``test/trt_double``) that runs the graph in onnxruntime.

Profiles: a ``--dynamic-hw`` graph gets dynamic H/W covering the node's budget ladder and
frames of either orientation up to 16:9 (``choose_profile``); a fixed-size graph a fixed
profile. The graph's ``mobius.*`` metadata is copied into the sidecar (``meta``), where the
backend reads config name, default pruning, layers and text width from.

Engine cache: ``<cache_dir>/<model stem>-<key>.engine`` plus ``.json`` sidecar (the shipped
model's engine, ``shipped_engine``: ``$MOBIUS_CACHE/engines``). The key
hashes the ONNX file, the TensorRT version, the GPU name, the precision, the DLA core and the
optimisation profile; a launch reuses a matching engine and rebuilds only when the key
changes (a new model, driver stack, GPU or setting). Jetson: JetPack ships TensorRT and
its Python bindings; install cuda-python matching JetPack's CUDA (``pip install
cuda-python==<CUDA major.minor>.*``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_bytes
from ..inference import io_spec
from ..inference.trt_backend import (
    EngineError,
    Profile,
    _DeviceBuffer,
    choose_profile,
    gpu_name,
    require_tensorrt,
)

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; ``digest`` names its cache file."""

    model_sha256: str
    tensorrt: str
    gpu: str
    precision: str
    dla_core: int
    profile: dict[str, Any]

    @property
    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def engine_key(
    onnx_path: str | Path, trt_version: str, gpu: str, precision: str, profile: Profile,
    dla_core: int = -1,
) -> EngineKey:  # fmt: skip
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is unknown; use one of {PRECISIONS}")
    sha = hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()
    return EngineKey(sha, trt_version, gpu, precision, int(dla_core), asdict(profile))


def engine_path(cache_dir: str | Path, onnx_path: str | Path, key: EngineKey) -> Path:
    return Path(cache_dir) / f"{Path(onnx_path).stem}-{key.precision}-{key.digest}.engine"


def rebuild_command(onnx_path: str | Path, key: EngineKey) -> str:
    dla = f" --dla-core {key.dla_core}" if key.dla_core >= 0 else ""
    return f"mobius build-engine {onnx_path} --precision {key.precision}{dla}"


def check_engine_file(path: str | Path, key: EngineKey, onnx_path: str | Path) -> None:
    """Raise EngineError unless ``path`` and its sidecar exist, are readable and match ``key``."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    fix = f"rebuild it: {rebuild_command(onnx_path, key)}"
    if not path.is_file() or path.stat().st_size == 0:
        raise EngineError(f"engine {path} is missing or empty; {fix}")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EngineError(
            f"engine {path} has no readable sidecar {sidecar} ({exc}); {fix}"
        ) from exc
    want = json.loads(json.dumps(asdict(key)))  # tuples -> lists, as in the sidecar
    if meta.get("key") != want:
        changed = sorted(k for k, v in want.items() if meta.get("key", {}).get(k) != v)
        raise EngineError(f"engine {path} was built for other {changed}; {fix}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if meta.get("engine_sha256") != digest:
        raise EngineError(f"engine {path} is corrupt (its checksum changed); {fix}")
    if not isinstance(meta.get("meta"), dict):
        raise EngineError(f"engine {path}'s sidecar lacks the graph metadata; {fix} --force")


def write_engine(
    path: str | Path, data: bytes, key: EngineKey, meta: dict[str, str] | None = None
) -> Path:
    """Engine bytes and their sidecar (key, checksum, the graph's ``mobius.*`` metadata),
    each written atomically; the engine first, so a sidecar never vouches for a torn one."""
    path = Path(path)
    atomic_write_bytes(path, data)
    info = {"key": asdict(key), "engine_sha256": hashlib.sha256(data).hexdigest(),
            "meta": dict(meta or {})}  # fmt: skip
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(info, indent=1).encode())
    return path


def graph_is_dynamic(onnx_path: str | Path) -> bool:
    """Whether the graph's ``image`` input has dynamic H/W (``mobius export --dynamic-hw``)."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    image = next((i for i in proto.graph.input if i.name == "image"), None)
    if image is None:
        raise EngineError(f"{onnx_path} has no `image` input; export it with `mobius export`")
    dims = image.type.tensor_type.shape.dim[2:]
    return not all(d.HasField("dim_value") for d in dims)


def default_profile(onnx_path: str | Path, **kwargs: Any) -> Profile:
    """``choose_profile`` for a graph file: its export size, dynamic H/W where it has them."""
    meta = io_spec.read_metadata(onnx_path)
    return choose_profile(io_spec.input_size(meta), dynamic=graph_is_dynamic(onnx_path), **kwargs)


def calibration_batches(
    folder: str | Path, input_hw: tuple[int, int], limit: int = 64
) -> list[np.ndarray]:
    """INT8 calibration inputs: up to ``limit`` images of ``folder`` preprocessed exactly as at
    run time and padded to ``input_hw`` (the calibration profile's size: the export size of a
    fixed graph, the opt size of a dynamic one), [1,3,H,W] float32 each."""
    from PIL import Image

    from ..imageops import preprocess
    from ..inference.segmenter import pad_batch

    files = sorted(
        p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp")
    )[:limit]
    if not files:
        raise ValueError(f"{folder} holds no .png/.jpg images to calibrate INT8 with")
    batches = []
    for f in files:
        with Image.open(f) as im:
            batch, _ = preprocess([np.asarray(im.convert("RGB"))], min(input_hw), max(input_hw))
        batches.append(pad_batch(batch, input_hw))
    return batches


# ---------------------------------------------------------------------------------------------
# Build (needs tensorrt)


def build_engine(
    onnx_path: str | Path,
    cache_dir: str | Path,
    precision: str = "fp16",
    profile: Profile | None = None,
    calib_images: str | Path | None = None,
    dla_core: int = -1,
    workspace_gb: float = 2.0,
    force: bool = False,
    text: Any = None,
    cuda: str | None = None,
) -> Path:
    """Build (or reuse) the engine of ``onnx_path``; returns the engine file.

    profile: None = :func:`default_profile` (dynamic H/W for a ``--dynamic-hw`` graph).
    text: a ``TextArrays`` used as the fixed prompt input during INT8 calibration.
    cuda: the CUDA library for calibration buffers (see ``mobius_core.inference.cuda``).
    """
    from ..inference.cuda import load

    trt = require_tensorrt()
    meta = io_spec.read_metadata(onnx_path)
    if meta.get(io_spec.META_FORMAT) != io_spec.FORMAT_VERSION:
        raise EngineError(
            f"{onnx_path} is not a MOBIUS image graph of format {io_spec.FORMAT_VERSION}; "
            "re-export it with `mobius export`"
        )
    dynamic = graph_is_dynamic(onnx_path)
    profile = profile or default_profile(onnx_path)
    if profile.fixed_hw is None and not dynamic:
        raise EngineError(
            f"{onnx_path} was exported for {io_spec.input_size(meta)} only; a profile over "
            "several sizes needs `mobius export --dynamic-hw`"
        )
    text_dim = int(meta[io_spec.META_TEXT_DIM])
    visual = meta.get(io_spec.META_VISUAL) == "1"
    lib = load(cuda)
    key = engine_key(onnx_path, trt.__version__, gpu_name(lib), precision, profile, dla_core)
    path = engine_path(cache_dir, onnx_path, key)
    if not force:
        try:
            check_engine_file(path, key, onnx_path)
            return path
        except EngineError:
            pass
    if precision == "int8" and (calib_images is None or text is None):
        raise ValueError("int8 needs --calib-images DIR (and prompts for the text input)")
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    trt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.shapes(text_dim, visual).items():
        trt_profile.set_shape(name, lo, opt, hi)
    if config.add_optimization_profile(trt_profile) < 0:
        raise EngineError(f"TensorRT refused the optimisation profile {profile}")
    cache_file = Path(cache_dir) / "timing.cache"
    timing = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    calibrator = None
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        feeds = calibration_feeds(calibration_batches(calib_images, profile.opt_hw), text, visual)
        calibrator = _calibrator(trt, lib, feeds, Path(cache_dir))
        config.int8_calibrator = calibrator
        calib_profile = builder.create_optimization_profile()  # the calibration feed's shapes
        for name, array in feeds[0].items():
            calib_profile.set_shape(name, array.shape, array.shape, array.shape)
        config.set_calibration_profile(calib_profile)
    if dla_core >= 0:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.free()
    if serialized is None:
        raise EngineError(f"TensorRT failed to build an engine from {onnx_path} (see its log)")
    atomic_write_bytes(cache_file, bytes(config.get_timing_cache().serialize()))
    return write_engine(path, bytes(serialized), key, meta)


def shipped_engine(
    cfg: Any, size: int | None = None, visual: bool = True, precision: str = "fp16",
    cache_dir: str | Path | None = None,
) -> tuple[Path, bool]:  # fmt: skip
    """The engine of ``cfg``'s shipped model: built from the image graph of its cached ONNX
    bundle (``mobius_core.bundle.shipped_bundle``, exported first where the cache lacks it)
    into ``<cache>/engines`` (``$MOBIUS_CACHE``, default ``~/.cache/mobius``), or reused
    from there. The engine's key hashes the graph file (whose name holds the checkpoint's
    key) with TensorRT, GPU, precision and profile, so a changed graph gets a new engine.
    Returns (engine file, whether it was built now)."""
    from ..bundle import shipped_bundle
    from ..cache import cache_root

    require_tensorrt()  # before a first start exports the bundle for nothing
    graph = shipped_bundle(cfg, size, visual, text=False, cache_dir=cache_dir).image
    engines = (Path(cache_dir) if cache_dir else cache_root()) / "engines"
    before = {f: f.stat().st_mtime_ns for f in engines.glob("*.engine")}
    path = build_engine(graph, engines, precision)
    return path, before.get(path) != path.stat().st_mtime_ns


def calibration_feeds(
    batches: Sequence[np.ndarray], text: Any, visual: bool = False
) -> list[dict[str, np.ndarray]]:
    """The graph feeds INT8 calibration runs: each batch with one fixed prompt set, pruning
    off, and (for a ``--visual`` graph) one invalid point/box prompt."""
    from ..inference.backend import make_feed

    feeds = []
    for batch in batches:
        feed = make_feed(batch, text, None, 100)
        if visual:
            feed["visual_boxes"] = np.zeros((len(batch), 1, 4), np.float32)
            feed["visual_valid"] = np.zeros((len(batch), 1), bool)
        feeds.append(feed)
    return feeds


def _calibrator(trt, cuda, feeds: Sequence[dict[str, np.ndarray]], cache_dir: Path):
    """An entropy calibrator handing TensorRT the device copies of ``feeds``; ``free()``
    releases its buffers once the build is done."""

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            self.buffers: dict[str, _DeviceBuffer] = {}
            self.cache = cache_dir / "int8.calib"

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):
            if self.index >= len(feeds):
                return None
            feed = feeds[self.index]
            self.index += 1
            ptrs = []
            with cuda.active():
                for name in names:
                    arr = np.ascontiguousarray(feed[name])
                    if name not in self.buffers:
                        self.buffers[name] = _DeviceBuffer(cuda)
                    ptr = self.buffers[name].ensure(arr.nbytes)
                    cuda.h2d(ptr, arr)
                    ptrs.append(ptr)
            return ptrs

        def read_calibration_cache(self):
            return self.cache.read_bytes() if self.cache.is_file() else None

        def write_calibration_cache(self, cache) -> None:
            atomic_write_bytes(self.cache, bytes(cache))

        def free(self) -> None:
            for buf in self.buffers.values():
                buf.free()
            self.buffers.clear()

    return Calibrator()
