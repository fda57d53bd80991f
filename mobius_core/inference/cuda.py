"""The little CUDA the tensorrt backend needs: device buffers, page-locked host buffers,
asynchronous copies, a stream and the device name, through cuda-python
(``cuda.bindings.runtime``, what an x86 install has) or pycuda (``pycuda.driver``, what many
Jetson images have), behind one interface.

:func:`load` picks the library by what is importable (cuda-python first); the environment
variable ``MOBIUS_CUDA`` (``cuda-python`` or ``pycuda``) or the ``prefer`` argument names one.
Pointers are plain ints; host buffers are numpy arrays over page-locked memory, so
``cudaMemcpyAsync`` really is asynchronous.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

LIBRARIES = ("cuda-python", "pycuda")


class CudaError(RuntimeError):
    """A CUDA call failed."""


class CudaPython:
    """cuda-python's runtime API (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6)."""

    name = "cuda-python"

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as rt
        except ImportError:
            from cuda import cudart as rt  # cuda-python < 12.6
        self.rt = rt
        self._pinned: dict[int, int] = {}  # id(array) -> its host pointer

    def _check(self, result: Any, what: str) -> Any:
        err, *rest = result
        if err != self.rt.cudaError_t.cudaSuccess:
            raise CudaError(f"{what} failed: {err}")
        return rest[0] if len(rest) == 1 else rest

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(max(1, int(nbytes))), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self._check(self.rt.cudaFree(ptr), "cudaFree")

    def pinned_empty(self, nbytes: int) -> np.ndarray:
        """At least ``nbytes`` (>= 1) of page-locked host memory as a uint8 array; give that
        array to free_pinned."""
        n = max(1, int(nbytes))
        ptr = int(self._check(self.rt.cudaMallocHost(n), "cudaMallocHost"))
        array = np.ctypeslib.as_array((ctypes.c_ubyte * n).from_address(ptr))
        self._pinned[id(array)] = ptr
        return array

    def free_pinned(self, array: np.ndarray) -> None:
        ptr = self._pinned.pop(id(array))
        self._check(self.rt.cudaFreeHost(ptr), "cudaFreeHost")

    def h2d_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream),
                    "cudaMemcpyAsync")  # fmt: skip

    def d2h_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream),
                    "cudaMemcpyAsync")  # fmt: skip

    def h2d(self, dst: int, src: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpy(dst, src.ctypes.data, src.nbytes, kind), "cudaMemcpy")

    def stream_create(self) -> Any:
        return self._check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    @staticmethod
    def stream_handle(stream: Any) -> int:
        return int(stream)

    def stream_sync(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def stream_destroy(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        yield  # the runtime API uses the device's primary context on every thread

    def device_name(self) -> str:
        props = self._check(self.rt.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
        name = props.name
        return (name.decode() if isinstance(name, bytes) else str(name)).strip("\x00 ")

    def close(self) -> None:
        pass


class PyCuda:
    """pycuda's driver API on device 0's primary context, made current around each use (pycuda
    contexts belong to a thread; the node calls from its worker threads)."""

    name = "pycuda"

    def __init__(self) -> None:
        import pycuda.driver as drv

        self.drv = drv
        drv.init()
        self.context = drv.Device(0).retain_primary_context()
        self._allocations: dict[int, Any] = {}

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        self.context.push()
        try:
            yield
        finally:
            self.drv.Context.pop()

    def malloc(self, nbytes: int) -> int:
        with self.active():
            alloc = self.drv.mem_alloc(max(1, int(nbytes)))
        self._allocations[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        with self.active():
            self._allocations.pop(int(ptr)).free()

    def pinned_empty(self, nbytes: int) -> np.ndarray:
        with self.active():
            return self.drv.pagelocked_empty(max(1, int(nbytes)), np.uint8)

    def free_pinned(self, array: np.ndarray) -> None:
        with self.active():
            array.base.free()  # pagelocked_empty's array is based on its HostAllocation

    def h2d_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        with self.active():
            self.drv.memcpy_htod_async(dst, src, stream)

    def d2h_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        with self.active():
            self.drv.memcpy_dtoh_async(dst, src, stream)

    def h2d(self, dst: int, src: np.ndarray) -> None:
        with self.active():
            self.drv.memcpy_htod(dst, src)

    def stream_create(self) -> Any:
        with self.active():
            return self.drv.Stream()

    @staticmethod
    def stream_handle(stream: Any) -> int:
        return int(stream.handle)

    def stream_sync(self, stream: Any) -> None:
        with self.active():
            stream.synchronize()

    def stream_destroy(self, stream: Any) -> None:
        with self.active():
            stream.synchronize()  # pycuda destroys it with its last reference

    def device_name(self) -> str:
        return str(self.drv.Device(0).name())

    def close(self) -> None:
        """Release the retained primary context (after everything in it is freed)."""
        if self.context is not None:
            context, self.context = self.context, None
            context.detach()


def load(prefer: str | None = None) -> CudaPython | PyCuda:
    """The CUDA layer of the first importable library (``prefer`` or ``$MOBIUS_CUDA`` first);
    an ImportError saying what to install when there is none."""
    want = prefer or os.environ.get("MOBIUS_CUDA") or None
    if want is not None and want not in LIBRARIES:
        raise ValueError(f"unknown CUDA library {want!r}; use one of {LIBRARIES}")
    order = [want] if want else list(LIBRARIES)
    errors = []
    for name in order:
        try:
            return CudaPython() if name == "cuda-python" else PyCuda()
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise ImportError(
        "the tensorrt backend needs cuda-python (`pip install cuda-python` matching the CUDA "
        "version; on Jetson `pip install cuda-python==<JetPack's CUDA major.minor>.*`) or "
        f"pycuda for device buffers ({'; '.join(errors)})"
    )
