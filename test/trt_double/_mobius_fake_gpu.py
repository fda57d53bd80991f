"""The one fake GPU behind the test doubles of cuda-python, pycuda and TensorRT.

Device memory is a dict of address -> bytearray; page-locked host memory is real host memory
(ctypes buffers) that the doubles remember, so a copy can tell a pinned source from a pageable
one. Streams are queues: asynchronous copies and engine launches run in order when the stream
is synchronised, so code that reads a result before synchronising reads stale memory, as it
would on a GPU. ``live()`` counts what is allocated (the leak tests read it).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable

ALIGN = 256
DEVICE_NAME = "Fake GPU (test double)"


class FakeCudaError(RuntimeError):
    def __init__(self, code: int, what: str) -> None:
        super().__init__(what)
        self.code = code


# error codes shared with the cuda-python double (cudaError_t values)
SUCCESS, INVALID_VALUE, OUT_OF_MEMORY, INVALID_DEVICE_POINTER, INVALID_HANDLE = 0, 1, 2, 17, 400

_lock = threading.RLock()
device: dict[int, bytearray] = {}
pinned: dict[int, ctypes.Array] = {}
streams: dict[int, list[Callable[[], None]]] = {}
# engine_builds: networks the TensorRT double serialized (a cache hit builds none)
stats = {"pageable_async_copies": 0, "async_copies": 0, "launches": 0, "mallocs": 0}
stats["engine_builds"] = 0
_next = [0x7F0000000000]
_next_stream = [0x5000]
capacity = 1 << 32  # bytes of fake device memory


def live() -> dict[str, int]:
    """What is allocated now: device buffers (and bytes), pinned host buffers, streams."""
    with _lock:
        return {
            "device": len(device),
            "device_bytes": sum(len(b) for b in device.values()),
            "pinned": len(pinned),
            "streams": len(streams),
        }


def malloc(nbytes: int) -> int:
    if nbytes < 0:
        raise FakeCudaError(INVALID_VALUE, f"malloc of {nbytes} bytes")
    with _lock:
        if sum(len(b) for b in device.values()) + nbytes > capacity:
            raise FakeCudaError(OUT_OF_MEMORY, "out of device memory")
        ptr = _next[0]
        _next[0] += max(ALIGN, -(-nbytes // ALIGN) * ALIGN)
        device[ptr] = bytearray(nbytes)
        stats["mallocs"] += 1
        return ptr


def free(ptr: int) -> None:
    with _lock:
        if int(ptr) not in device:
            raise FakeCudaError(INVALID_DEVICE_POINTER, f"free of {int(ptr):#x}: not allocated")
        del device[int(ptr)]


def host_alloc(nbytes: int) -> int:
    with _lock:
        buf = (ctypes.c_ubyte * max(1, nbytes))()
        ptr = ctypes.addressof(buf)
        pinned[ptr] = buf
        return ptr


def host_free(ptr: int) -> None:
    with _lock:
        if int(ptr) not in pinned:
            raise FakeCudaError(INVALID_VALUE, f"free of host pointer {int(ptr):#x}: not pinned")
        del pinned[int(ptr)]


def is_pinned(ptr: int, nbytes: int) -> bool:
    with _lock:
        return any(p <= ptr and ptr + nbytes <= p + len(b) for p, b in pinned.items())


def device_view(ptr: int, nbytes: int) -> memoryview:
    """The device bytes [ptr, ptr + nbytes) (inside one allocation), else FakeCudaError."""
    ptr = int(ptr)
    with _lock:
        for base, buf in device.items():
            if base <= ptr and ptr + nbytes <= base + len(buf):
                return memoryview(buf)[ptr - base : ptr - base + nbytes]
    raise FakeCudaError(
        INVALID_DEVICE_POINTER, f"{nbytes} bytes at {ptr:#x} are not inside a device allocation"
    )


def has_device(ptr: int, nbytes: int) -> bool:
    try:
        device_view(ptr, nbytes)
        return True
    except FakeCudaError:
        return False


def copy_h2d(dst: int, src: int, nbytes: int) -> None:
    view = device_view(dst, nbytes)
    view[:] = ctypes.string_at(int(src), nbytes)


def copy_d2h(dst: int, src: int, nbytes: int) -> None:
    data = bytes(device_view(src, nbytes))
    ctypes.memmove(int(dst), data, nbytes)


def copy_d2d(dst: int, src: int, nbytes: int) -> None:
    device_view(dst, nbytes)[:] = bytes(device_view(src, nbytes))


def stream_create() -> int:
    with _lock:
        handle = _next_stream[0]
        _next_stream[0] += 16
        streams[handle] = []
        return handle


def check_stream(handle: int) -> None:
    if int(handle) not in streams:
        raise FakeCudaError(INVALID_HANDLE, f"stream {int(handle):#x} does not exist")


def enqueue(handle: int, work: Callable[[], None]) -> None:
    with _lock:
        check_stream(handle)
        streams[int(handle)].append(work)


def enqueue_copy(handle: int, work: Callable[[], None], host_ptr: int, nbytes: int) -> None:
    """An asynchronous copy; counts those from/to pageable host memory."""
    with _lock:
        check_stream(handle)
        stats["async_copies"] += 1
        if not is_pinned(int(host_ptr), nbytes):
            stats["pageable_async_copies"] += 1
        streams[int(handle)].append(work)


def synchronize(handle: int) -> None:
    with _lock:
        check_stream(handle)
        queue = streams[int(handle)]
        while queue:
            queue.pop(0)()


def stream_destroy(handle: int) -> None:
    with _lock:
        synchronize(handle)
        del streams[int(handle)]
