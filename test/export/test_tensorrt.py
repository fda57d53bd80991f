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


def _real_tensorrt() -> str:
    """Why the real-TensorRT test cannot run here ('' where it can)."""
    if not HAS_TRT:
        return "tensorrt is not importable (no NVIDIA GPU stack; test_tensorrt_double covers it)"
    import tensorrt

    if str(tensorrt.__version__).endswith("+double"):
        return "tensorrt is the test double (test_tensorrt_double covers it)"
    return ""


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
    assert prof.fixed_hw == (320, 320)
    assert prof.admits(2, 64, 32, (320, 320)) and not prof.admits(1, 65, 8, (320, 320))
    assert not prof.admits(1, 8, 8, (320, 352))
    with pytest.raises(ValueError, match="multiple of 32"):
        choose_profile((300, 320))
    with pytest.raises(ValueError, match="prompts <= max_prompts"):
        choose_profile((320, 320), prompts=10, max_prompts=5)
    with pytest.raises(ValueError, match="--dynamic-hw"):
        choose_profile((320, 320), size=256)


def test_dynamic_profile_covers_the_budget_ladder_and_camera_aspects():
    prof = choose_profile((320, 320), dynamic=True)
    assert prof.height == (160, 320, 576) and prof.width == (160, 448, 576)
    assert prof.fixed_hw is None and prof.max_hw == (576, 576) and prof.opt_hw == (320, 448)
    for short in range(320, 159, -32):  # every step of the node's ladder, both aspects
        for long in (short * 4 / 3, short * 16 / 9):
            hw = (-(-short // 32) * 32, -(-round(long) // 32) * 32)
            assert prof.admits(1, 6, 8, hw) and prof.admits(1, 6, 8, hw[::-1])
    assert not prof.admits(1, 6, 8, (320, 608))
    small = choose_profile((320, 320), dynamic=True, min_size=256, size=288, max_aspect=4 / 3)
    assert small.height == (256, 288, 384) and small.width == (256, 384, 384)
    visual = prof.shapes(384, visual=True)
    assert visual["visual_boxes"] == ((1, 1, 4), (1, 4, 4), (1, 16, 4))
    assert visual["visual_valid"] == ((1, 1), (1, 4), (1, 16))
    assert Profile.from_dict(json.loads(json.dumps(prof.__dict__))) == prof


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
    write_engine(path, b"serialized engine", key, {io_spec.META_CONFIG: "shapes_tiny"})
    check_engine_file(path, key, onnx_file)  # fits
    assert json.loads(path.with_suffix(".json").read_text())["meta"] == {
        io_spec.META_CONFIG: "shapes_tiny"
    }
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
    assert json.loads(json.dumps(Profile(320, 320).__dict__))["height"] == [320, 320, 320]


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


@pytest.mark.tensorrt
@pytest.mark.skipif(bool(_real_tensorrt()), reason=_real_tensorrt() or "runs")
def test_build_and_run_an_engine_on_a_camera_frame(tmp_path):  # pragma: no cover - needs a GPU
    """The real TensorRT: a --dynamic-hw engine runs a 640x480 frame (fed at its aspect),
    pruned and not, with the instances onnxruntime finds."""
    from mobius_core.cli import main
    from mobius_core.data.synthetic import SEEN_CATEGORIES, render_scene
    from mobius_core.inference.factory import SegmenterSpec, build_segmenter

    onnx_path = tmp_path / "m.onnx"
    assert main(["export", "shapes_tiny", "--dynamic-hw", "--out", str(onnx_path)]) == 0
    assert main(["build-engine", str(onnx_path), "--precision", "fp32", "--cache-dir",
                 str(tmp_path)]) == 0  # fmt: skip
    (engine,) = tmp_path.glob("*.engine")
    image = render_scene(np.random.default_rng(0), SEEN_CATEGORIES, size=(480, 640))[0]
    for prune in (True, False):
        segs = [build_segmenter(SegmenterSpec(backend=b, model=str(m), prune=prune,
                                              score_threshold=0.2))
                for b, m in (("trt", engine), ("ort", onnx_path))]  # fmt: skip
        for s in segs:
            s.set_prompts(["red circle", "blue square", "green triangle"])
        (a,), (b,) = (s([image]) for s in segs)
        assert segs[0].backend.fixed_hw is None and segs[0].last_outputs.masks.shape[-1] == 112
        assert a.label_texts == b.label_texts
        np.testing.assert_allclose(a.boxes, b.boxes, rtol=1e-2, atol=1.0)  # fp32 kernels
        segs[0].backend.close()
