"""Latest-frame worker: inference off the executor thread, never a queue.

The subscription callback hands every incoming frame to :meth:`LatestFrameWorker.submit`,
which only replaces the pending slot (a frame that was waiting is counted as dropped). One
thread takes the newest frame and runs the processing function on it, so the node always
works on the freshest image and memory does not grow with the input rate. A processing
error is reported through ``on_error`` and the thread goes on with the next frame.

``min_period_s`` (1 / target_fps when the budget is on) keeps the worker from starting
frames faster than the budget asks, leaving the rest of the CPU or GPU to other nodes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np


class LatencyStats:
    """Rolling per-frame statistics for diagnostics (thread-safe)."""

    def __init__(self, window: int = 100) -> None:
        self._lock = threading.Lock()
        self.latency: deque[float] = deque(maxlen=window)
        self.done: deque[float] = deque(maxlen=window)
        self.frames = 0
        self.received = 0
        self.dropped = 0
        self.errors = 0

    def add(self, latency_s: float, finished_at: float) -> None:
        with self._lock:
            self.latency.append(latency_s)
            self.done.append(finished_at)
            self.frames += 1

    def summary(self) -> dict[str, float]:
        with self._lock:
            lat = np.asarray(self.latency, dtype=np.float64)
            done = list(self.done)
            frames, dropped, errors = self.frames, self.dropped, self.errors
            received = self.received
        fps = (
            (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 and done[-1] > done[0] else 0.0
        )
        return {
            "latency_p50_ms": float(np.percentile(lat, 50) * 1e3) if lat.size else 0.0,
            "latency_p95_ms": float(np.percentile(lat, 95) * 1e3) if lat.size else 0.0,
            "fps": fps,
            "frames": frames,
            "received": received,
            "dropped": dropped,
            "errors": errors,
        }


class LatestFrameWorker:
    """Runs ``process(frame)`` on the newest submitted frame in a background thread."""

    def __init__(
        self,
        process: Callable[[Any], None],
        on_error: Callable[[Exception], None] | None = None,
        stats: LatencyStats | None = None,
        name: str = "mobius-inference",
    ) -> None:
        self.process = process
        self.on_error = on_error or (lambda exc: None)
        self.stats = stats or LatencyStats()
        self.min_period_s = 0.0
        self._cond = threading.Condition()
        self._pending: Any = None
        self._stop = False
        self._last_start = 0.0
        self.busy = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, frame: Any) -> None:
        with self._cond:
            self.stats.received += 1
            if self._pending is not None:
                self.stats.dropped += 1
            self._pending = frame
            self._cond.notify()

    def _take(self) -> Any:
        with self._cond:
            while not self._stop:
                wait = self._last_start + self.min_period_s - time.monotonic()
                if self._pending is not None and wait <= 0:
                    frame, self._pending = self._pending, None
                    self.busy = True
                    return frame
                self._cond.wait(timeout=wait if self._pending is not None else None)
            return None

    def _run(self) -> None:
        while True:
            frame = self._take()
            if frame is None:
                return
            start = time.monotonic()
            self._last_start = start
            try:
                self.process(frame)
            except Exception as exc:  # reported, and the next frame is processed
                self.stats.errors += 1
                self.on_error(exc)
            finally:
                self.busy = False

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout)
