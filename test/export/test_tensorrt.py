"""TensorRT engine logic without TensorRT: cache keys, file checks, profiles, calibration."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from mobius_core.export.tensorrt import (
    EngineError,
    Profile,
    calibration_batches,
    check_engine_file,
    choose_profile,
    engine_key,
    engine_path,
    rebuild_command,
    require_tensorrt,
    write_engine,
)
from mobius_core.inference import io_spec

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"graph bytes v1")
    return path


def test_profile_covers_every_input_and_admits_only_its_range():
    prof = choose_profile((320, 320), prompts=8, max_prompts=64, max_tokens=32, max_batch=2)
    shapes = prof.shapes(text_dim=384)
    assert set(shapes) == set(io_spec.names(io_spec.IMAGE_INPUTS))
    assert shapes["image"] == ((1, 3, 320, 320), (1, 3, 320, 320), (2, 3, 320, 320))
    assert shapes["text_tokens"] == ((1, 1, 384), (8, 16, 384), (64, 32, 384))
    assert shapes["prompt_valid"] == ((1,), (8,), (64,))
    assert shapes["min_keep"] == ((1,), (1,), (1,))
    assert prof.admits(2, 64, 32, (320, 320)) and not prof.admits(1, 65, 8, (320, 320))
    assert not prof.admits(1, 8, 8, (320, 352))
    with pytest.raises(ValueError, match="multiple of 32"):
        choose_profile((300, 320))
    with pytest.raises(ValueError, match="prompts <= max_prompts"):
        choose_profile((320, 320), prompts=10, max_prompts=5)


def test_cache_key_changes_with_everything_it_depends_on(onnx_file):
    prof = choose_profile((320, 320))
    base = engine_key(onnx_file, "10.3.0", "Orin", "fp16", prof)
    assert base.digest == engine_key(onnx_file, "10.3.0", "Orin", "fp16", prof).digest
    variants = [
        engine_key(onnx_file, "10.4.0", "Orin", "fp16", prof),
        engine_key(onnx_file, "10.3.0", "RTX 4090", "fp16", prof),
        engine_key(onnx_file, "10.3.0", "Orin", "int8", prof),
        engine_key(onnx_file, "10.3.0", "Orin", "fp16", prof, dla_core=0),
        engine_key(onnx_file, "10.3.0", "Orin", "fp16", choose_profile((320, 320), prompts=32)),
    ]
    onnx_file.write_bytes(b"graph bytes v2")
    variants.append(engine_key(onnx_file, "10.3.0", "Orin", "fp16", prof))
    digests = {v.digest for v in variants} | {base.digest}
    assert len(digests) == len(variants) + 1
    path = engine_path("engines", onnx_file, base)
    assert path.name == f"model-fp16-{base.digest}.engine"
    with pytest.raises(ValueError, match="precision"):
        engine_key(onnx_file, "10.3.0", "Orin", "bf16", prof)


def test_engine_file_checks(tmp_path, onnx_file):
    key = engine_key(onnx_file, "10.3.0", "Orin", "fp16", choose_profile((320, 320)))
    path = engine_path(tmp_path, onnx_file, key)
    with pytest.raises(EngineError, match=r"missing or empty.*mobius build-engine"):
        check_engine_file(path, key, onnx_file)
    write_engine(path, b"serialized engine", key)
    check_engine_file(path, key, onnx_file)  # fits
    other = engine_key(onnx_file, "10.4.0", "Orin", "fp16", choose_profile((320, 320)))
    with pytest.raises(EngineError, match=r"built for other \['tensorrt'\]"):
        check_engine_file(path, other, onnx_file)
    path.write_bytes(b"serialized engine, bit-flipped")
    with pytest.raises(EngineError, match="corrupt"):
        check_engine_file(path, key, onnx_file)
    path.with_suffix(".json").write_text("{broken")
    with pytest.raises(EngineError, match="sidecar"):
        check_engine_file(path, key, onnx_file)
    assert rebuild_command(onnx_file, key) == f"mobius build-engine {onnx_file} --precision fp16"
    assert json.loads(json.dumps(Profile(320, 320).__dict__))["height"] == 320


def test_calibration_batches_are_preprocessed_like_inference(tmp_path):
    for i, size in enumerate([(40, 60), (100, 80)]):
        Image.fromarray(np.full((*size, 3), 50 * (i + 1), np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    batches = calibration_batches(tmp_path, (64, 64))
    assert [b.shape for b in batches] == [(1, 3, 64, 64)] * 2
    assert batches[0][0, :, :42, :64].min() > 0 and batches[0][0, :, 43:].max() == 0  # padded
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no \.png/\.jpg"):
        calibration_batches(tmp_path / "empty", (64, 64))


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_missing_tensorrt_says_how_to_get_it():
    with pytest.raises(ImportError, match="--backend ort"):
        require_tensorrt()


@pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installable on CI (no NVIDIA GPU)")
def test_build_and_run_an_engine(tmp_path):  # pragma: no cover - needs TensorRT and a GPU
    import torch

    from mobius_core.build import build_model
    from mobius_core.config import load_config
    from mobius_core.export.onnx import export_image_graph
    from mobius_core.export.tensorrt import TensorRTBackend, build_engine
    from mobius_core.inference.backend import make_feed
    from mobius_core.inference.text import TorchTextSource

    cfg = load_config("shapes_tiny", {"model.text_encoder.pretrained": False})
    model = build_model(cfg).eval()
    onnx_path = export_image_graph(model, tmp_path / "m.onnx", (320, 320))
    engine = build_engine(onnx_path, tmp_path, "fp32")
    assert build_engine(onnx_path, tmp_path, "fp32") == engine  # cached
    backend = TensorRTBackend(engine)
    text = TorchTextSource(model.text_encoder).encode(["a", "b"])
    out = backend.infer(make_feed(np.zeros((1, 3, 320, 320), np.float32), text, None, 10))
    assert out.prompt_scores.shape[-1] == 2 and torch is not None
