"""TensorRT engines: build from the exported ONNX graph, cache by a precise key, run.

Written against TensorRT's public Python API (10.x: ``tensorrt.Builder``, ``OnnxParser``,
``IBuilderConfig``, ``IExecutionContext.execute_async_v3`` with an ``IOutputAllocator`` for the
data-dependent number of kept queries) and cuda-python (``cuda.bindings.runtime``) for device
buffers. TensorRT is not installable on CI machines: the logic that decides things (cache
key, engine file name, profile choice, sidecar checks, calibration batches) is plain Python
tested without it; building and running need ``tensorrt`` and a GPU.

Engine cache: ``<cache_dir>/<model stem>-<key>.engine`` plus ``.json`` sidecar. The key
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
    _check,
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


def write_engine(path: str | Path, data: bytes, key: EngineKey) -> Path:
    """Engine bytes and their sidecar (key, checksum), each written atomically."""
    path = Path(path)
    atomic_write_bytes(path, data)
    meta = {"key": asdict(key), "engine_sha256": hashlib.sha256(data).hexdigest()}
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(meta, indent=1).encode())
    return path


def calibration_batches(
    folder: str | Path, input_hw: tuple[int, int], limit: int = 64
) -> list[np.ndarray]:
    """INT8 calibration inputs: up to ``limit`` images of ``folder`` preprocessed exactly as at
    run time and padded to the engine's input size, [1,3,H,W] float32 each."""
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
) -> Path:
    """Build (or reuse) the engine of ``onnx_path``; returns the engine file.

    text: a ``TextArrays`` used as the fixed prompt input during INT8 calibration.
    """
    trt = require_tensorrt()
    meta = io_spec.read_metadata(onnx_path)
    input_hw = tuple(json.loads(meta[io_spec.META_INPUT_SIZE]))
    text_dim = int(meta[io_spec.META_TEXT_DIM])
    profile = profile or choose_profile(input_hw)
    key = engine_key(onnx_path, trt.__version__, gpu_name(), precision, profile, dla_core)
    path = engine_path(cache_dir, onnx_path, key)
    if not force:
        try:
            check_engine_file(path, key, onnx_path)
            return path
        except EngineError:
            pass
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
    for name, (lo, opt, hi) in profile.shapes(text_dim).items():
        trt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(trt_profile)
    cache_file = Path(cache_dir) / "timing.cache"
    timing = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        if calib_images is None or text is None:
            raise ValueError("int8 needs --calib-images DIR (and prompts for the text input)")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _calibrator(
            trt, calibration_batches(calib_images, input_hw), text, Path(cache_dir)
        )
        config.set_calibration_profile(trt_profile)
    if dla_core >= 0:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build an engine from {onnx_path} (see its log)")
    atomic_write_bytes(cache_file, bytes(config.get_timing_cache().serialize()))
    return write_engine(path, bytes(serialized), key)


def _calibrator(trt, batches: Sequence[np.ndarray], text: Any, cache_dir: Path):
    """An entropy calibrator feeding preprocessed images with one fixed prompt set."""
    from cuda.bindings import runtime as cudart

    from ..inference.backend import make_feed

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            self.buffers: dict[str, _DeviceBuffer] = {}
            self.cache = cache_dir / "int8.calib"

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):
            if self.index >= len(batches):
                return None
            feed = make_feed(batches[self.index], text, None, 100)
            self.index += 1
            ptrs = []
            for name in names:
                arr = np.ascontiguousarray(feed[name])
                buf = self.buffers.setdefault(name, _DeviceBuffer())
                ptr = buf.ensure(arr.nbytes)
                (err,) = cudart.cudaMemcpy(
                    ptr, arr.ctypes.data, arr.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
                )
                _check(err, "cudaMemcpy")
                ptrs.append(ptr)
            return ptrs

        def read_calibration_cache(self):
            return self.cache.read_bytes() if self.cache.is_file() else None

        def write_calibration_cache(self, cache) -> None:
            atomic_write_bytes(self.cache, bytes(cache))

    return Calibrator()
