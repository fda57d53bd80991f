"""Running a model: backends behind one feed/outputs contract, text sources, the Segmenter.

``io_spec`` (the contract), ``prompts`` (validation, embeddings as NumPy), ``text`` (text
sources), ``backend`` (the ``Backend`` protocol, feeds), one module per backend
(``torch_backend``, ``ort_backend``, ``trt_backend``), ``segmenter``, ``preprocess`` (the
resize in onnxruntime), ``bench`` and ``factory`` (``build_segmenter``, the one way to get a
ready Segmenter from plain values). Importing this package, onnxruntime's backend or
TensorRT's imports neither torch nor timm.
"""

from .factory import ModelInfo, SegmenterSpec, build_segmenter
from .prompts import TextArrays, validate_prompts
from .segmenter import Segmenter

__all__ = [
    "ModelInfo",
    "Segmenter",
    "SegmenterSpec",
    "TextArrays",
    "build_segmenter",
    "validate_prompts",
]
