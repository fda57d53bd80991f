"""Running a model: backends behind one feed/outputs contract, text sources, the Segmenter.

``io_spec`` (the contract), ``prompts`` (validation, embeddings as NumPy), ``text`` (text
sources), ``backend`` (the ``Backend`` protocol, feeds), one module per backend
(``torch_backend``, ``ort_backend``, ``trt_backend``), ``segmenter``, ``preprocess`` (the
resize in onnxruntime), ``bench`` and ``factory`` (``build_segmenter``, the one way to get a
ready Segmenter from plain values). Importing this package, onnxruntime's backend or
TensorRT's imports neither torch nor timm.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ModelInfo": "factory",
    "SegmenterSpec": "factory",
    "build_segmenter": "factory",
    "PromptError": "prompts",
    "TextArrays": "prompts",
    "validate_prompts": "prompts",
    "Segmenter": "segmenter",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """The public names, imported on first use: importing one submodule (say ``prompts``,
    which the text encoder uses) does not import the rest of the package."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
