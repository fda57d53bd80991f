"""Test double of ``pycuda.driver``: every call needs ``init()`` and a current context on the
calling thread (pycuda's contexts are per thread), as pycuda does."""

from __future__ import annotations

import threading

import _mobius_fake_gpu as gpu
import numpy as np

_state = {"init": False}
_local = threading.local()


class Error(Exception):
    pass


class LogicError(Error):
    pass


def init(flags: int = 0) -> None:
    _state["init"] = True


def _stack() -> list:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def _need_context(what: str) -> None:
    if not _state["init"]:
        raise LogicError(f"cu{what} failed: not initialized")
    if not _stack():
        raise LogicError(f"cu{what} failed: invalid device context (none is current)")


class Context:
    def __init__(self, primary: bool) -> None:
        self.primary, self.live = primary, True

    def push(self) -> None:
        if not self.live:
            raise LogicError("context was detached")
        _stack().append(self)

    @staticmethod
    def pop() -> None:
        if not _stack():
            raise LogicError("cuCtxPopCurrent failed: no context is current")
        _stack().pop()

    def detach(self) -> None:
        if self in _stack():
            _stack().remove(self)
        self.live = False

    @staticmethod
    def synchronize() -> None:
        _need_context("CtxSynchronize")
        for handle in list(gpu.streams):
            gpu.synchronize(handle)


class Device:
    def __init__(self, ordinal: int) -> None:
        if not _state["init"]:
            raise LogicError("cuDeviceGet failed: not initialized")
        if ordinal != 0:
            raise LogicError(f"cuDeviceGet failed: invalid device ordinal {ordinal}")
        self.ordinal = ordinal

    def name(self) -> str:
        return gpu.DEVICE_NAME

    @staticmethod
    def count() -> int:
        return 1

    def make_context(self, flags: int = 0) -> Context:
        ctx = Context(primary=False)
        ctx.push()
        return ctx

    def retain_primary_context(self) -> Context:
        return Context(primary=True)


class DeviceAllocation:
    def __init__(self, nbytes: int) -> None:
        self.ptr = gpu.malloc(nbytes)
        self.nbytes = nbytes

    def __int__(self) -> int:
        return self.ptr

    __index__ = __int__

    def free(self) -> None:
        if self.ptr:
            gpu.free(self.ptr)
            self.ptr = 0


def mem_alloc(nbytes: int) -> DeviceAllocation:
    _need_context("MemAlloc")
    return DeviceAllocation(int(nbytes))


class HostAllocation:
    """The base of a page-locked array (``pagelocked_empty(...).base``)."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.shape, self.dtype = shape, dtype
        self.nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self.ptr = gpu.host_alloc(self.nbytes)

    def free(self) -> None:
        if self.ptr:
            gpu.host_free(self.ptr)
            self.ptr = 0

    @property
    def __array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False),
                "version": 3}  # fmt: skip


def pagelocked_empty(shape, dtype, order: str = "C", mem_flags: int = 0) -> np.ndarray:
    _need_context("MemHostAlloc")
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return np.asarray(HostAllocation(shape, dtype))  # its ``base`` is the allocation


def _host(array) -> tuple[int, int]:
    arr = np.asarray(array)
    if not arr.flags.c_contiguous:
        raise LogicError("host buffer must be contiguous")
    return arr.ctypes.data, arr.nbytes


class Stream:
    def __init__(self, flags: int = 0) -> None:
        _need_context("StreamCreate")
        self.handle = gpu.stream_create()

    def synchronize(self) -> None:
        _need_context("StreamSynchronize")
        gpu.synchronize(self.handle)

    def __del__(self) -> None:  # pycuda destroys a stream with its last reference
        try:
            if self.handle in gpu.streams:
                gpu.stream_destroy(self.handle)
        except Exception:
            pass


def _handle(stream) -> int:
    if stream is None:
        raise LogicError("this test double wants an explicit stream")
    return stream.handle


def memcpy_htod_async(dest, src, stream=None) -> None:
    _need_context("MemcpyHtoDAsync")
    ptr, nbytes = _host(src)
    dst = int(dest)
    gpu.device_view(dst, nbytes)
    gpu.enqueue_copy(_handle(stream), lambda: gpu.copy_h2d(dst, ptr, nbytes), ptr, nbytes)


def memcpy_dtoh_async(dest, src, stream=None) -> None:
    _need_context("MemcpyDtoHAsync")
    ptr, nbytes = _host(dest)
    source = int(src)
    gpu.device_view(source, nbytes)
    gpu.enqueue_copy(_handle(stream), lambda: gpu.copy_d2h(ptr, source, nbytes), ptr, nbytes)


def memcpy_htod(dest, src) -> None:
    _need_context("MemcpyHtoD")
    ptr, nbytes = _host(src)
    for handle in list(gpu.streams):
        gpu.synchronize(handle)
    gpu.copy_h2d(int(dest), ptr, nbytes)


def memcpy_dtoh(dest, src) -> None:
    _need_context("MemcpyDtoH")
    ptr, nbytes = _host(dest)
    for handle in list(gpu.streams):
        gpu.synchronize(handle)
    gpu.copy_d2h(ptr, int(src), nbytes)
