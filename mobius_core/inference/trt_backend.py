"""The TensorRT backend: an engine from ``mobius build-engine`` behind the runtime interface.

Written against TensorRT's public Python API (10.x: ``Runtime``, ``ICudaEngine`` tensor
names and shapes, ``IExecutionContext.set_input_shape`` / ``set_tensor_address`` /
``execute_async_v3`` with an ``IOutputAllocator`` for the data-dependent number of kept
queries) and cuda-python (``cuda.bindings.runtime``) for device buffers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..postprocess import RawOutputs
from . import io_spec


class EngineError(ValueError):
    """An engine file is missing, corrupt or built for something else; the message says how
    to rebuild it."""


def require_tensorrt():
    """The ``tensorrt`` module, or an ImportError that says how to get it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ImportError(
            "the tensorrt backend needs NVIDIA TensorRT's Python bindings: on Jetson they come "
            "with JetPack; on x86 `pip install tensorrt` (CUDA GPU required); use "
            "--backend ort on machines without them"
        ) from exc
    return trt


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: (min, opt, max) of every dynamic axis, fixed image size."""

    height: int
    width: int
    batch: tuple[int, int, int] = (1, 1, 1)
    prompts: tuple[int, int, int] = (1, 16, 256)
    tokens: tuple[int, int, int] = (1, 16, 64)

    def shapes(self, text_dim: int) -> dict[str, tuple[tuple[int, ...], ...]]:
        """input name -> (min shape, opt shape, max shape) for ``add_optimization_profile``."""
        out: dict[str, tuple[tuple[int, ...], ...]] = {}
        axes = {"batch": self.batch, "prompts": self.prompts, "tokens": self.tokens,
                "height": (self.height,) * 3, "width": (self.width,) * 3,
                "text_dim": (text_dim,) * 3}  # fmt: skip
        for spec in io_spec.IMAGE_INPUTS:
            dims = [axes[d] if isinstance(d, str) else (d, d, d) for d in spec.shape]
            out[spec.name] = tuple(tuple(d[i] for d in dims) for i in range(3))
        return out

    def admits(self, batch: int, prompts: int, tokens: int, hw: tuple[int, int]) -> bool:
        return (
            self.batch[0] <= batch <= self.batch[2]
            and self.prompts[0] <= prompts <= self.prompts[2]
            and self.tokens[0] <= tokens <= self.tokens[2]
            and tuple(hw) == (self.height, self.width)
        )


def choose_profile(
    input_hw: tuple[int, int],
    prompts: int = 16,
    max_prompts: int = 256,
    max_tokens: int = 64,
    max_batch: int = 1,
) -> Profile:
    """The profile for a graph exported at ``input_hw``: batch 1..max_batch, prompts
    1..max_prompts optimised for the expected count, tokens up to ``max_tokens``."""
    if prompts < 1 or max_prompts < prompts:
        raise ValueError(f"need 1 <= prompts <= max_prompts, got {prompts}, {max_prompts}")
    if max_batch < 1 or max_tokens < 2:
        raise ValueError(
            f"max_batch >= 1 and max_tokens >= 2 needed, got {max_batch}, {max_tokens}"
        )
    h, w = (int(v) for v in input_hw)
    if h % io_spec.SIZE_DIVISOR or w % io_spec.SIZE_DIVISOR:
        raise ValueError(f"input size {h}x{w} is not a multiple of {io_spec.SIZE_DIVISOR}")
    return Profile(h, w, (1, 1, max_batch), (1, prompts, max_prompts), (1, 16, max_tokens))


def gpu_name() -> str:
    """Name of CUDA device 0 (part of the engine key)."""
    from cuda.bindings import runtime as cudart

    err, props = cudart.cudaGetDeviceProperties(0)
    _check(err, "cudaGetDeviceProperties")
    name = props.name
    return (name.decode() if isinstance(name, bytes) else str(name)).strip("\x00 ")


def _check(err: Any, what: str) -> None:
    from cuda.bindings import runtime as cudart

    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"{what} failed: {err}")


class _DeviceBuffer:
    """A cudaMalloc'ed buffer that grows on demand."""

    def __init__(self, nbytes: int = 0) -> None:
        self.ptr, self.nbytes = 0, 0
        self.ensure(nbytes)

    def ensure(self, nbytes: int) -> int:
        from cuda.bindings import runtime as cudart

        if nbytes > self.nbytes:
            self.free()
            err, ptr = cudart.cudaMalloc(max(nbytes, 256))
            _check(err, "cudaMalloc")
            self.ptr, self.nbytes = int(ptr), max(nbytes, 256)
        return self.ptr

    def free(self) -> None:
        from cuda.bindings import runtime as cudart

        if self.ptr:
            cudart.cudaFree(self.ptr)
            self.ptr, self.nbytes = 0, 0


# ---------------------------------------------------------------------------------------------
# Run (needs tensorrt and a GPU)

_NUMPY = {"FLOAT": np.float32, "INT64": np.int64, "BOOL": np.bool_, "INT32": np.int32,
          "HALF": np.float16}  # fmt: skip


class TensorRTBackend:
    """An engine from :func:`build_engine` behind the runtime interface."""

    name = "tensorrt"

    def __init__(self, engine_file: str | Path) -> None:
        trt = require_tensorrt()
        from cuda.bindings import runtime as cudart

        self.trt, self.cudart = trt, cudart
        self.path = Path(engine_file)
        sidecar = self.path.with_suffix(".json")
        try:
            self.meta = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise EngineError(
                f"{self.path} has no readable sidecar {sidecar}; build engines with "
                "`mobius build-engine MODEL.onnx`"
            ) from exc
        data = self.path.read_bytes() if self.path.is_file() else b""
        if hashlib.sha256(data).hexdigest() != self.meta.get("engine_sha256"):
            raise EngineError(f"engine {self.path} is missing or corrupt; rebuild it with "
                              "`mobius build-engine MODEL.onnx --force`")  # fmt: skip
        key = self.meta["key"]
        if key["tensorrt"] != trt.__version__ or key["gpu"] != gpu_name():
            raise EngineError(
                f"engine {self.path} was built with TensorRT {key['tensorrt']} on "
                f"{key['gpu']!r}; this is TensorRT {trt.__version__} on {gpu_name()!r}: rebuild "
                "it with `mobius build-engine MODEL.onnx`"
            )
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise EngineError(f"TensorRT could not deserialize {self.path}; rebuild it")
        self.context = self.engine.create_execution_context()
        err, self.stream = cudart.cudaStreamCreate()
        _check(err, "cudaStreamCreate")
        self.inputs: dict[str, _DeviceBuffer] = {}
        self.allocator = _OutputAllocator(trt)
        for spec in io_spec.IMAGE_OUTPUTS:
            self.context.set_output_allocator(spec.name, self.allocator)
        self.layers = int(self.meta["key"]["profile"].get("layers", 0)) or 0
        self.text_dim = 0
        self.input_hw = (int(key["profile"]["height"]), int(key["profile"]["width"]))
        self.fixed_hw, self.max_hw = self.input_hw, None
        self.accepts_visual = self.requires_visual = False
        self.meta: dict[str, str] = {}
        self.profile = Profile(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in key["profile"].items()})  # fmt: skip

    def infer(self, feed: dict[str, np.ndarray]) -> RawOutputs:
        from .backend import outputs_from_list

        io_spec.check_feed(feed)
        b, k, t = feed["image"].shape[0], feed["text_tokens"].shape[0], feed["text_tokens"].shape[1]
        if not self.profile.admits(b, k, t, feed["image"].shape[2:]):
            raise ValueError(
                f"batch {b}, {k} prompts, {t} tokens, image {feed['image'].shape[2:]} are outside "
                f"this engine's profile {self.profile}; rebuild with a wider profile"
            )
        cudart = self.cudart
        for name, array in feed.items():
            arr = np.ascontiguousarray(array)
            ptr = self.inputs.setdefault(name, _DeviceBuffer()).ensure(arr.nbytes)
            (err,) = cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes,
                                            cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                            self.stream)  # fmt: skip
            _check(err, "cudaMemcpyAsync")
            self.context.set_input_shape(name, arr.shape)
            self.context.set_tensor_address(name, ptr)
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execution failed")
        values = []
        for spec in io_spec.IMAGE_OUTPUTS:
            shape = tuple(self.allocator.shapes[spec.name])
            dtype = _NUMPY[self.engine.get_tensor_dtype(spec.name).name]
            host = np.empty(shape, dtype=dtype)
            if host.nbytes:
                (err,) = cudart.cudaMemcpyAsync(host.ctypes.data,
                                                self.allocator.buffers[spec.name].ptr, host.nbytes,
                                                cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                                self.stream)  # fmt: skip
                _check(err, "cudaMemcpyAsync")
            values.append(host)
        (err,) = cudart.cudaStreamSynchronize(self.stream)
        _check(err, "cudaStreamSynchronize")
        return outputs_from_list(values, feed["image"].shape[2:])


class _OutputAllocator:
    """Grows device buffers for outputs whose size depends on the data (kept queries)."""

    def __new__(cls, trt):
        class Allocator(trt.IOutputAllocator):
            def __init__(self) -> None:
                trt.IOutputAllocator.__init__(self)
                self.buffers: dict[str, _DeviceBuffer] = {}
                self.shapes: dict[str, tuple[int, ...]] = {}

            def reallocate_output(self, tensor_name, memory, size, alignment):
                return self.buffers.setdefault(tensor_name, _DeviceBuffer()).ensure(int(size))

            def reallocate_output_async(self, tensor_name, memory, size, alignment, stream):
                return self.reallocate_output(tensor_name, memory, size, alignment)

            def notify_shape(self, tensor_name, shape):
                self.shapes[tensor_name] = tuple(shape)

        return Allocator()
