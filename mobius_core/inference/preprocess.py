"""The shared preprocessing (``imageops.preprocess``) as a small onnxruntime graph.

Same geometry and arithmetic as the NumPy reference (bilinear, half-pixel centres, edge
clamp, /255, zero padding to multiples of 32) to within 2e-4, in ORT's C++ kernels: about
2–3 ms instead of 5 for 640x480 on these CPUs. Backends that already run onnxruntime use it;
tests hold it to the NumPy reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..imageops import input_sizes, padded_size


def _graph_bytes() -> bytes:
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Transpose", ["image"], ["chw"], perm=[2, 0, 1]),  # [H,W,3] -> [3,H,W]
        helper.make_node("Unsqueeze", ["chw", "axis0"], ["nchw"]),
        helper.make_node("Cast", ["nchw"], ["f"], to=TensorProto.FLOAT),
        helper.make_node(
            "Resize",
            ["f", "", "", "sizes"],
            ["resized"],
            mode="linear",
            coordinate_transformation_mode="pytorch_half_pixel",
        ),
        helper.make_node("Mul", ["resized", "inv255"], ["scaled"]),
        helper.make_node("Pad", ["scaled", "pads"], ["batch"], mode="constant"),
    ]
    graph = helper.make_graph(
        nodes,
        "mobius_preprocess",
        [
            helper.make_tensor_value_info("image", TensorProto.UINT8, ["height", "width", 3]),
            helper.make_tensor_value_info("sizes", TensorProto.INT64, [4]),
            helper.make_tensor_value_info("pads", TensorProto.INT64, [8]),
        ],
        [helper.make_tensor_value_info("batch", TensorProto.FLOAT, [1, 3, "h", "w"])],
        initializer=[
            helper.make_tensor("axis0", TensorProto.INT64, [1], [0]),
            helper.make_tensor("inv255", TensorProto.FLOAT, [], [1.0 / 255.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


class OrtPreprocessor:
    """Callable like ``imageops.preprocess`` (uint8 RGB images only)."""

    def __init__(self, threads: int = 1) -> None:
        """``threads``: ORT intra-op threads. 2 took ~1.2 ms instead of ~1.7 ms for 640x480
        on an idle 2-core machine, but a parallel section waits for its slowest thread: on
        the shared machine under load the node's preprocess p50 went up, so 1 stays the
        default (benchmarks/RESULTS.md, "Node overhead (issue 24)")."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        # no busy-waiting after the call: the model's session runs right after this one
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            _graph_bytes(), options, providers=["CPUExecutionProvider"]
        )

    def __call__(
        self, images: Sequence[np.ndarray], short_side: int, max_size: int = 1333
    ) -> tuple[np.ndarray, list[tuple[int, int]]]:
        sizes, outs = input_sizes(images, short_side, max_size), []
        for image in images:
            if image.dtype != np.uint8:
                raise ValueError(f"OrtPreprocessor takes uint8 images, got {image.dtype}")
        hp, wp = padded_size(max(s[0] for s in sizes), max(s[1] for s in sizes))
        for image, (h, w) in zip(images, sizes):
            feed = {
                "image": np.ascontiguousarray(image),
                "sizes": np.array([1, 3, h, w], np.int64),
                "pads": np.array([0, 0, 0, 0, 0, 0, hp - h, wp - w], np.int64),
            }
            outs.append(self.session.run(None, feed)[0])
        batch = outs[0] if len(outs) == 1 else np.concatenate(outs, 0)
        return batch, sizes
