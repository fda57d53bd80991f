"""Put the TensorRT / cuda-python / pycuda test doubles in front of whatever is installed.

``with active() as gpu:`` (``gpu`` is the fake GPU module) for in-process tests; ``env()``
for a subprocess (PYTHONPATH). Modules of the real libraries already imported (torch
imports cuda-python's) are set aside and restored afterwards.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SHADOWED = ("tensorrt", "cuda", "pycuda", "_mobius_fake_gpu")


def _ours(name: str) -> bool:
    return name.split(".")[0] in SHADOWED


@contextlib.contextmanager
def active() -> Iterator[object]:
    saved = {k: m for k, m in sys.modules.items() if _ours(k)}
    for k in saved:
        del sys.modules[k]
    sys.path.insert(0, str(ROOT))
    importlib.invalidate_caches()
    try:
        gpu = importlib.import_module("_mobius_fake_gpu")
        assert importlib.import_module("tensorrt").__version__.endswith("+double")
        yield gpu
    finally:
        sys.path.remove(str(ROOT))
        for k in [k for k in sys.modules if _ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
        importlib.invalidate_caches()


def env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default os.environ) with the doubles first on PYTHONPATH."""
    out = dict(os.environ if base is None else base)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), out.get("PYTHONPATH", "")) if p)
    return out
