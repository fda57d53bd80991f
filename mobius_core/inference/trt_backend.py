"""The TensorRT backend: an engine from ``mobius build-engine`` behind the runtime interface.

Written against TensorRT's public Python API (10.x: ``Runtime``, ``ICudaEngine`` tensor
names, shapes and profile shapes, ``IExecutionContext.set_input_shape`` /
``set_tensor_address`` / ``execute_async_v3`` with an ``IOutputAllocator`` for the
data-dependent number of kept queries). Device and page-locked host memory come from
:mod:`.cuda` (cuda-python or pycuda, whichever is importable).

An engine built from a ``--dynamic-hw`` graph takes any padded (H, W) inside its profile
(``max_hw`` is the largest; the Segmenter keeps frames within it); one built for a single
size has ``fixed_hw`` set and the Segmenter pads every frame to it. The ONNX graph's
``mobius.*`` metadata travels in the engine's sidecar ``.json`` (``meta``).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..postprocess import RawOutputs
from . import io_spec
from .backend import feed_specs, outputs_from_list


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


Range = tuple[int, int, int]


def _range(value: int | Range | list) -> Range:
    if isinstance(value, int):
        return (value, value, value)
    lo, opt, hi = (int(v) for v in value)
    if not 1 <= lo <= opt <= hi:
        raise ValueError(f"a profile range needs 1 <= min <= opt <= max, got {value}")
    return lo, opt, hi


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: (min, opt, max) of every dynamic axis. ``height``/``width``
    are the padded image sizes (one int = a fixed size); ``visual`` the point/box prompts per
    image of a ``--visual`` graph."""

    height: Range
    width: Range
    batch: Range = (1, 1, 1)
    prompts: Range = (1, 16, 256)
    tokens: Range = (1, 16, 64)
    visual: Range = (1, 1, 16)

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _range(getattr(self, f.name)))
        for axis in (self.height, self.width):
            if any(v % io_spec.SIZE_DIVISOR for v in axis):
                raise ValueError(f"image sizes {axis} are not multiples of {io_spec.SIZE_DIVISOR}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Profile:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    @property
    def fixed_hw(self) -> tuple[int, int] | None:
        """The one (H, W) of a fixed-size profile, else None."""
        h, w = self.height, self.width
        return (h[0], w[0]) if h[0] == h[2] and w[0] == w[2] else None

    @property
    def opt_hw(self) -> tuple[int, int]:
        return self.height[1], self.width[1]

    @property
    def max_hw(self) -> tuple[int, int]:
        return self.height[2], self.width[2]

    def shapes(self, text_dim: int, visual: bool = False) -> dict[str, tuple[tuple[int, ...], ...]]:
        """input name -> (min shape, opt shape, max shape) for ``IOptimizationProfile``."""
        axes = {"batch": self.batch, "prompts": self.prompts, "tokens": self.tokens,
                "height": self.height, "width": self.width, "text_dim": (text_dim,) * 3,
                "visual_prompts": self.visual}  # fmt: skip
        specs = io_spec.VISUAL_GRAPH_INPUTS if visual else io_spec.IMAGE_INPUTS
        out: dict[str, tuple[tuple[int, ...], ...]] = {}
        for spec in specs:
            dims = [axes[d] if isinstance(d, str) else (d, d, d) for d in spec.shape]
            out[spec.name] = tuple(tuple(d[i] for d in dims) for i in range(3))
        return out

    def admits(
        self, batch: int, prompts: int, tokens: int, hw: tuple[int, int], visual: int = 1
    ) -> bool:
        inside = [
            (self.batch, batch), (self.prompts, prompts), (self.tokens, tokens),
            (self.height, hw[0]), (self.width, hw[1]), (self.visual, visual),
        ]  # fmt: skip
        return all(r[0] <= v <= r[2] for r, v in inside)


def _ceil32(v: float) -> int:
    d = io_spec.SIZE_DIVISOR
    return max(d, math.ceil(v / d) * d)


def choose_profile(
    input_hw: tuple[int, int],
    prompts: int = 16,
    max_prompts: int = 256,
    max_tokens: int = 64,
    max_batch: int = 1,
    dynamic: bool = False,
    min_size: int | None = None,
    size: int | None = None,
    max_aspect: float = 16 / 9,
    opt_aspect: float = 4 / 3,
    max_visual: int = 16,
) -> Profile:
    """The profile for a graph exported at ``input_hw``: batch 1..max_batch, prompts
    1..max_prompts optimised for the expected count, tokens up to ``max_tokens``.

    A fixed-size graph (``dynamic`` False) takes ``input_hw`` only. A ``--dynamic-hw`` graph
    takes what the Segmenter makes of a camera frame at every short side of the node's budget
    ladder: short sides ``min_size`` (default half of ``size``) .. ``size`` (default the
    export size's short side), frames of either orientation up to ``max_aspect`` (16:9: the
    long side reaches ``size * 16/9``), optimised for a ``opt_aspect`` (4:3) landscape frame
    at ``size``."""
    if prompts < 1 or max_prompts < prompts:
        raise ValueError(f"need 1 <= prompts <= max_prompts, got {prompts}, {max_prompts}")
    if max_batch < 1 or max_tokens < 2 or max_visual < 1:
        raise ValueError(
            f"max_batch >= 1, max_tokens >= 2 and max_visual >= 1 needed, got {max_batch}, "
            f"{max_tokens}, {max_visual}"
        )
    h, w = (int(v) for v in input_hw)
    if h % io_spec.SIZE_DIVISOR or w % io_spec.SIZE_DIVISOR:
        raise ValueError(f"input size {h}x{w} is not a multiple of {io_spec.SIZE_DIVISOR}")
    rest = dict(batch=(1, 1, max_batch), prompts=(1, prompts, max_prompts),
                tokens=(1, min(16, max_tokens), max_tokens),
                visual=(1, min(4, max_visual), max_visual))  # fmt: skip
    if not dynamic:
        if size is not None or min_size is not None:
            raise ValueError(
                f"the graph was exported for {h}x{w} only: --size/--min-size need a graph "
                "exported with `mobius export --dynamic-hw`"
            )
        return Profile((h, h, h), (w, w, w), **rest)
    top = int(size or min(h, w))
    low = int(min_size or top // 2)
    if not 1 <= low <= top or max_aspect < 1 or not 1 <= opt_aspect <= max_aspect:
        raise ValueError(
            f"need 1 <= min size <= size and 1 <= opt aspect <= max aspect, got {low}, {top}, "
            f"{opt_aspect:g}, {max_aspect:g}"
        )
    lo, hi = _ceil32(low), _ceil32(top * max_aspect)
    opt_h, opt_w = _ceil32(top), min(hi, _ceil32(top * opt_aspect))
    return Profile((lo, opt_h, hi), (lo, opt_w, hi), **rest)


def gpu_name(cuda: Any = None) -> str:
    """Name of CUDA device 0 (part of the engine key)."""
    from .cuda import load

    return (cuda or load()).device_name()


class _DeviceBuffer:
    """Device memory that grows on demand (freed with ``free``)."""

    def __init__(self, cuda: Any, nbytes: int = 0) -> None:
        self.cuda = cuda
        self.ptr, self.nbytes = 0, 0
        if nbytes:
            self.ensure(nbytes)

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.nbytes or not self.ptr:
            self.free()
            size = max(int(nbytes), 256)
            self.ptr, self.nbytes = self.cuda.malloc(size), size
        return self.ptr

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr, self.nbytes = self.ptr, 0, 0
            self.cuda.free(ptr)


class _PinnedBuffer:
    """Page-locked host memory that grows on demand; ``array`` views it as a tensor."""

    def __init__(self, cuda: Any) -> None:
        self.cuda = cuda
        self.raw: np.ndarray | None = None

    def array(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if self.raw is None or self.raw.nbytes < nbytes:
            self.free()
            self.raw = self.cuda.pinned_empty(max(nbytes, 256))
        return self.raw[:nbytes].view(dtype).reshape(shape)

    def free(self) -> None:
        if self.raw is not None:
            raw, self.raw = self.raw, None
            self.cuda.free_pinned(raw)


_NUMPY = {"FLOAT": np.float32, "INT64": np.int64, "BOOL": np.bool_, "INT32": np.int32,
          "HALF": np.float16}  # fmt: skip


class TensorRTBackend:
    """An engine from :func:`~mobius_core.export.tensorrt.build_engine` behind the runtime
    interface. ``close()`` frees its device memory, page-locked buffers and stream.

    cuda: ``cuda-python`` or ``pycuda`` (default: ``$MOBIUS_CUDA``, else whichever imports).
    """

    name = "tensorrt"

    def __init__(self, engine_file: str | Path, cuda: str | None = None) -> None:
        self._closed = True  # until everything close() frees exists
        trt = require_tensorrt()
        from .cuda import load

        self.trt, self.cuda = trt, load(cuda)
        self.path = Path(engine_file)
        sidecar = self.path.with_suffix(".json")
        fix = "rebuild it with `mobius build-engine MODEL.onnx --force`"
        try:
            info = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise EngineError(
                f"{self.path} has no readable sidecar {sidecar}; build engines with "
                "`mobius build-engine MODEL.onnx`"
            ) from exc
        data = self.path.read_bytes() if self.path.is_file() else b""
        if hashlib.sha256(data).hexdigest() != info.get("engine_sha256"):
            raise EngineError(f"engine {self.path} is missing or corrupt; {fix}")
        if not isinstance(info.get("meta"), dict):
            raise EngineError(f"{sidecar} does not carry the graph's metadata (older build); {fix}")
        key = info["key"]
        gpu = self.cuda.device_name()
        if key["tensorrt"] != trt.__version__ or key["gpu"] != gpu:
            raise EngineError(
                f"engine {self.path} was built with TensorRT {key['tensorrt']} on "
                f"{key['gpu']!r}; this is TensorRT {trt.__version__} on {gpu!r}: rebuild "
                "it with `mobius build-engine MODEL.onnx`"
            )
        self.meta: dict[str, str] = {str(k): str(v) for k, v in info["meta"].items()}
        if self.meta.get(io_spec.META_FORMAT) != io_spec.FORMAT_VERSION:
            raise EngineError(
                f"{self.path} is not built from a MOBIUS image graph of format "
                f"{io_spec.FORMAT_VERSION}; re-export the graph and {fix}"
            )
        with self.cuda.active():  # pycuda: TensorRT works in the context made current
            self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise EngineError(f"TensorRT could not deserialize {self.path}; {fix}")
        self._read_engine(fix)
        self._lock = threading.Lock()
        self.inputs: dict[str, _DeviceBuffer] = {}
        self.staging: dict[str, _PinnedBuffer] = {}
        self.results: dict[str, _PinnedBuffer] = {}
        self.allocator = _OutputAllocator(trt, self.cuda)
        self.stream = None
        self._closed = False
        self.stream = self.cuda.stream_create()
        with self.cuda.active():
            self.context = self.engine.create_execution_context()
        for name in self.output_names:
            if not self.context.set_output_allocator(name, self.allocator):
                raise EngineError(f"TensorRT refused an output allocator for {name!r}; {fix}")

    def _read_engine(self, fix: str) -> None:
        """Inputs, outputs, profile ranges and the attributes of the Backend protocol."""
        engine, trt = self.engine, self.trt
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in inputs]
        self.accepts_visual = inputs == io_spec.names(io_spec.VISUAL_GRAPH_INPUTS)
        self.requires_visual = self.accepts_visual  # its visual inputs are always fed
        if inputs != io_spec.names(io_spec.IMAGE_INPUTS) and not self.accepts_visual:
            raise EngineError(f"{self.path} has inputs {inputs}, not the io_spec image inputs")
        if self.output_names != io_spec.names(io_spec.IMAGE_OUTPUTS):
            raise EngineError(f"{self.path} has outputs {self.output_names}; {fix}")
        self.dtypes = {n: _NUMPY[engine.get_tensor_dtype(n).name] for n in names}
        self.ranges = {
            n: tuple(tuple(int(v) for v in s) for s in engine.get_tensor_profile_shape(n, 0))
            for n in inputs
        }
        graph_dim = int(engine.get_tensor_shape("text_tokens")[-1])
        self.text_dim = int(self.meta.get(io_spec.META_TEXT_DIM, 0)) or max(graph_dim, 0)
        if graph_dim > 0 and graph_dim != self.text_dim:
            raise EngineError(f"{self.path} takes {graph_dim}-d prompts but its metadata says "
                              f"{self.text_dim}; {fix}")  # fmt: skip
        kept = int(engine.get_tensor_shape("kept")[-1])
        self.layers = int(self.meta.get(io_spec.META_LAYERS, 0)) or max(kept, 0)
        (_, _, h0, w0), (_, _, h1, w1), (_, _, h2, w2) = self.ranges["image"]
        self.image_range = ((h0, h2), (w0, w2))
        self.fixed_hw = (h0, w0) if (h0, w0) == (h2, w2) else None
        self.max_hw = None if self.fixed_hw else (h2, w2)
        self.input_hw = self.fixed_hw or (h1, w1)

    def _check_profile(self, feed: dict[str, np.ndarray]) -> None:
        for name, array in feed.items():
            lo, _, hi = self.ranges[name]
            shape = tuple(array.shape)
            if all(a <= d <= b for a, d, b in zip(lo, shape, hi)):
                continue
            if name == "image":
                (h0, h2), (w0, w2) = self.image_range
                raise ValueError(
                    f"image {shape[2]}x{shape[3]} (batch {shape[0]}) is outside engine "
                    f"{self.path.name}'s profile (H {h0}..{h2}, W {w0}..{w2}, batch "
                    f"{lo[0]}..{hi[0]}): resize frames inside it or rebuild with `mobius "
                    "build-engine MODEL.onnx --size/--min-size/--max-aspect/--max-batch`"
                )
            raise ValueError(
                f"{name} of shape {shape} is outside engine {self.path.name}'s profile "
                f"{lo}..{hi}: rebuild with `mobius build-engine MODEL.onnx --max-prompts N` "
                "(or fewer prompts/tokens)"
            )

    def infer(self, feed: dict[str, np.ndarray]) -> RawOutputs:
        io_spec.check_feed(
            feed, feed_specs(feed, self.accepts_visual, self.requires_visual, self.path)
        )
        self._check_profile(feed)
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the tensorrt backend of {self.path} is closed")
            with self.cuda.active():
                return self._infer(feed)

    def _infer(self, feed: dict[str, np.ndarray]) -> RawOutputs:
        cuda, context, stream = self.cuda, self.context, self.stream
        for name in self.ranges:  # the engine's input order
            host = self.staging.setdefault(name, _PinnedBuffer(cuda))
            staged = host.array(feed[name].shape, self.dtypes[name])
            np.copyto(staged, feed[name], casting="same_kind")
            if name not in self.inputs:
                self.inputs[name] = _DeviceBuffer(cuda)
            ptr = self.inputs[name].ensure(staged.nbytes)
            cuda.h2d_async(ptr, staged, stream)
            if not context.set_input_shape(name, staged.shape):
                raise ValueError(f"TensorRT refused shape {staged.shape} for {name!r}")
            context.set_tensor_address(name, ptr)
        self.allocator.shapes.clear()
        if not context.execute_async_v3(cuda.stream_handle(stream)):
            raise RuntimeError(f"TensorRT could not run {self.path} (see its log)")
        cuda.stream_sync(stream)  # the kept-query count is known once the graph ran
        values = []
        for name in self.output_names:
            if name not in self.allocator.shapes:
                raise RuntimeError(f"TensorRT gave no shape for output {name!r}")
            host = self.results.setdefault(name, _PinnedBuffer(cuda))
            out = host.array(self.allocator.shapes[name], self.dtypes[name])
            if out.nbytes:
                cuda.d2h_async(out, self.allocator.buffers[name].ptr, stream)
            values.append(out)
        cuda.stream_sync(stream)
        # the page-locked buffers are reused by the next call: hand out copies
        return outputs_from_list([v.copy() for v in values], feed["image"].shape[2:])

    def close(self) -> None:
        """Free device buffers, page-locked host buffers and the stream (idempotent)."""
        if getattr(self, "_closed", True):
            return
        with self._lock:
            self._closed = True
            with self.cuda.active():
                try:
                    if self.stream is not None:
                        self.cuda.stream_sync(self.stream)
                finally:
                    held = (self.inputs, self.staging, self.results, self.allocator.buffers)
                    for buf in [b for group in held for b in group.values()]:
                        buf.free()
                    self.inputs.clear(), self.staging.clear(), self.results.clear()
                    self.allocator.buffers.clear()
                    self.context = None  # TensorRT's objects go before the memory and stream
                    if self.stream is not None:
                        stream, self.stream = self.stream, None
                        self.cuda.stream_destroy(stream)
            self.cuda.close()

    def __enter__(self) -> TensorRTBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the CUDA library may be gone already
            pass


def _OutputAllocator(trt: Any, cuda: Any):
    """An ``IOutputAllocator`` that grows device buffers for outputs whose size depends on
    the data (kept queries) and records their shapes."""

    class Allocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.buffers: dict[str, _DeviceBuffer] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def reallocate_output(self, tensor_name, memory, size, alignment):
            if tensor_name not in self.buffers:
                self.buffers[tensor_name] = _DeviceBuffer(cuda)
            return self.buffers[tensor_name].ensure(int(size))

        def reallocate_output_async(self, tensor_name, memory, size, alignment, stream):
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name, shape):
            self.shapes[tensor_name] = tuple(int(d) for d in shape)

    return Allocator()
