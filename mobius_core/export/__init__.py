"""Export to ONNX / TensorRT and the runtime backends (contract: io_spec)."""
