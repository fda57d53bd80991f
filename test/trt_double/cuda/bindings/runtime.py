"""Test double of ``cuda.bindings.runtime`` (cuda-python): every call returns a tuple whose
first item is a ``cudaError_t``, as cuda-python's do, and works on the fake GPU of
``_mobius_fake_gpu``."""

from __future__ import annotations

import enum
from types import SimpleNamespace

import _mobius_fake_gpu as gpu


class cudaError_t(enum.IntEnum):
    cudaSuccess = gpu.SUCCESS
    cudaErrorInvalidValue = gpu.INVALID_VALUE
    cudaErrorMemoryAllocation = gpu.OUT_OF_MEMORY
    cudaErrorInvalidDevicePointer = gpu.INVALID_DEVICE_POINTER
    cudaErrorInvalidResourceHandle = gpu.INVALID_HANDLE


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


class cudaStream_t:
    """A stream handle: ``int(stream)`` is the address TensorRT takes."""

    def __init__(self, handle: int = 0) -> None:
        self._handle = int(handle)

    def __int__(self) -> int:
        return self._handle

    def getPtr(self) -> int:
        return self._handle

    def __repr__(self) -> str:
        return f"<cudaStream_t {self._handle:#x}>"


def _err(exc: gpu.FakeCudaError) -> cudaError_t:
    return cudaError_t(exc.code)


def _stream(stream) -> int:
    if stream is None:
        raise TypeError("stream must be a cudaStream_t or an int, not None")
    return int(stream)


def cudaMalloc(size):
    try:
        return (cudaError_t.cudaSuccess, gpu.malloc(int(size)))
    except gpu.FakeCudaError as exc:
        return (_err(exc), 0)


def cudaFree(devPtr):
    try:
        gpu.free(int(devPtr))
    except gpu.FakeCudaError as exc:
        return (_err(exc),)
    return (cudaError_t.cudaSuccess,)


def cudaMallocHost(size):
    return (cudaError_t.cudaSuccess, gpu.host_alloc(int(size)))


def cudaFreeHost(ptr):
    try:
        gpu.host_free(int(ptr))
    except gpu.FakeCudaError as exc:
        return (_err(exc),)
    return (cudaError_t.cudaSuccess,)


def _copy(dst: int, src: int, count: int, kind: cudaMemcpyKind):
    if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
        gpu.device_view(dst, count)  # checked when issued, as the driver does
        return (lambda: gpu.copy_h2d(dst, src, count)), src
    if kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
        gpu.device_view(src, count)
        return (lambda: gpu.copy_d2h(dst, src, count)), dst
    if kind == cudaMemcpyKind.cudaMemcpyDeviceToDevice:
        gpu.device_view(src, count), gpu.device_view(dst, count)
        return (lambda: gpu.copy_d2d(dst, src, count)), None
    raise gpu.FakeCudaError(gpu.INVALID_VALUE, f"memcpy kind {kind} is not supported here")


def cudaMemcpyAsync(dst, src, count, kind, stream):
    try:
        work, host = _copy(int(dst), int(src), int(count), cudaMemcpyKind(kind))
        if host is None:
            gpu.enqueue(_stream(stream), work)
        else:
            gpu.enqueue_copy(_stream(stream), work, host, int(count))
    except gpu.FakeCudaError as exc:
        return (_err(exc),)
    return (cudaError_t.cudaSuccess,)


def cudaMemcpy(dst, src, count, kind):
    try:
        work, _ = _copy(int(dst), int(src), int(count), cudaMemcpyKind(kind))
        for handle in list(gpu.streams):  # the legacy default stream waits for all others
            gpu.synchronize(handle)
        work()
    except gpu.FakeCudaError as exc:
        return (_err(exc),)
    return (cudaError_t.cudaSuccess,)


def cudaStreamCreate():
    return (cudaError_t.cudaSuccess, cudaStream_t(gpu.stream_create()))


def cudaStreamSynchronize(stream):
    try:
        gpu.synchronize(_stream(stream))
    except gpu.FakeCudaError as exc:
        return (_err(exc),)
    return (cudaError_t.cudaSuccess,)


def cudaStreamDestroy(stream):
    try:
        gpu.stream_destroy(_stream(stream))
    except gpu.FakeCudaError as exc:
        return (_err(exc),)
    return (cudaError_t.cudaSuccess,)


def cudaDeviceSynchronize():
    try:
        for handle in list(gpu.streams):
            gpu.synchronize(handle)
    except gpu.FakeCudaError as exc:
        return (_err(exc),)
    return (cudaError_t.cudaSuccess,)


def cudaGetDeviceProperties(device):
    if int(device) != 0:
        return (cudaError_t.cudaErrorInvalidValue, None)
    props = SimpleNamespace(name=gpu.DEVICE_NAME.encode(), major=8, minor=7)
    return (cudaError_t.cudaSuccess, props)
