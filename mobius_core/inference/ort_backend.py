"""The onnxruntime backend: an exported image graph (CPU by default; any provider)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..postprocess import RawOutputs
from . import io_spec
from .backend import feed_specs, outputs_from_list


def ort_session(
    path: str | Path, providers: Sequence[str] | None = None, threads: int = 0, spin: bool = False
):
    """An onnxruntime session of ``path``; a clear error when it is missing or not a graph.

    spin: let onnxruntime's worker threads busy-wait between and after runs (its default).
    Off here: on a robot's few cores the spinning threads take the CPU from the Python steps
    that follow each inference and from the other nodes (benchmarks/RESULTS.md, "ORT
    spinning"), for no gain in inference time there.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model {path} does not exist; write it with `mobius export`")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(
            str(path), options, providers=list(providers or ["CPUExecutionProvider"])
        )
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ValueError(
            f"{path} cannot be loaded by onnxruntime ({str(exc)[:200]}); the file is corrupt "
            "or not an exported MOBIUS graph: re-export it with `mobius export`"
        ) from exc


def session_metadata(session: Any) -> dict[str, str]:
    """The ``mobius.*`` metadata of a loaded graph (``io_spec.read_metadata`` without reading
    the file again)."""
    return dict(session.get_modelmeta().custom_metadata_map)


class OnnxRuntimeBackend:
    """An exported image graph in onnxruntime (CPU by default)."""

    name = "onnxruntime"

    def __init__(
        self, model_path: str | Path, providers: Sequence[str] | None = None, threads: int = 0
    ) -> None:
        self.path = Path(model_path)
        self.session = ort_session(self.path, providers, threads)
        self.meta = session_metadata(self.session)
        if self.meta.get(io_spec.META_FORMAT) != io_spec.FORMAT_VERSION:
            raise ValueError(
                f"{self.path} is not a MOBIUS image graph of format {io_spec.FORMAT_VERSION} "
                f"(metadata {self.meta.get(io_spec.META_FORMAT)!r}); re-export it"
            )
        got = [i.name for i in self.session.get_inputs()]
        self.accepts_visual = got == io_spec.names(io_spec.VISUAL_GRAPH_INPUTS)
        self.requires_visual = self.accepts_visual  # its visual inputs are always fed
        if got != io_spec.names(io_spec.IMAGE_INPUTS) and not self.accepts_visual:
            raise ValueError(f"{self.path} has inputs {got}, not the io_spec image inputs")
        self.layers = int(self.meta.get(io_spec.META_LAYERS, 0))
        self.text_dim = int(self.meta.get(io_spec.META_TEXT_DIM, 0))
        self.input_hw = io_spec.input_size(self.meta)
        shape = self.session.get_inputs()[0].shape
        self.fixed_hw = (
            (int(shape[2]), int(shape[3])) if all(isinstance(s, int) for s in shape[2:]) else None
        )
        self.max_hw = None

    def infer(self, feed: dict[str, np.ndarray]) -> RawOutputs:
        io_spec.check_feed(
            feed, feed_specs(feed, self.accepts_visual, self.requires_visual, self.path)
        )
        hw = feed["image"].shape[2:]
        if self.fixed_hw is not None and tuple(hw) != self.fixed_hw:
            raise ValueError(
                f"{self.path} was exported for {self.fixed_hw[0]}x{self.fixed_hw[1]} inputs, "
                f"got {hw[0]}x{hw[1]}; pad to that size or export with --dynamic-hw"
            )
        return outputs_from_list(self.session.run(None, feed), hw)
