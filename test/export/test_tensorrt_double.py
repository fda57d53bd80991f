"""`mobius build-engine`, the tensorrt backend, `mobius predict --backend trt` against a test
double of TensorRT 10 (``test/trt_double``: the same graph run in onnxruntime behind the
TensorRT, cuda-python and pycuda APIs), compared with onnxruntime on camera-sized frames."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobius_core.cli import main
from mobius_core.data.synthetic import SEEN_CATEGORIES, render_scene
from mobius_core.inference import io_spec, trt_backend
from mobius_core.inference.factory import SegmenterSpec, build_segmenter

pytest.importorskip("onnxruntime")
_spec = importlib.util.spec_from_file_location(
    "trt_double_activate", Path(__file__).resolve().parents[1] / "trt_double" / "activate.py"
)
double = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(double)

PROMPTS = ["red circle", "blue square", "green triangle", "yellow star", "purple hexagon",
           "orange cross"]  # fmt: skip
LIBS = ("cuda-python", "pycuda")


@pytest.fixture(scope="module")
def gpu():
    with double.active() as fake:
        yield fake


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """The shipped shapes_tiny as a --dynamic-hw graph with point/box inputs."""
    out = tmp_path_factory.mktemp("trt") / "m.onnx"
    assert main(["export", "shapes_tiny", "--dynamic-hw", "--visual", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def engine(gpu, graph):
    cache = graph.parent / "engines"
    assert main(["build-engine", str(graph), "--cache-dir", str(cache)]) == 0
    (path,) = cache.glob("*.engine")
    return path


def frames(hw: tuple[int, int], count: int = 2, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [render_scene(rng, SEEN_CATEGORIES, size=hw, min_objects=3)[0] for _ in range(count)]


def segmenter(backend: str, model: Path, prune: bool = True, cuda: str | None = None,
              monkeypatch=None):  # fmt: skip
    if cuda and monkeypatch is not None:
        monkeypatch.setenv("MOBIUS_CUDA", cuda)
    spec = SegmenterSpec(backend=backend, model=str(model), prune=prune, score_threshold=0.1)
    return build_segmenter(spec)


def assert_same(a, b) -> int:
    """Same instances (labels equal, boxes within 1e-3 relative); returns how many."""
    assert a.label_texts == b.label_texts
    assert np.array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.boxes, b.boxes, rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-3, atol=1e-4)
    return len(a)


def test_build_engine_covers_camera_frames_and_carries_the_metadata(gpu, graph, engine, capsys):
    info = json.loads(engine.with_suffix(".json").read_text())
    assert info["meta"] == io_spec.read_metadata(graph)  # every mobius.* key travels along
    prof = info["key"]["profile"]
    assert prof["height"] == [160, 320, 576] and prof["width"] == [160, 448, 576]
    before = engine.stat().st_mtime_ns
    assert main(["build-engine", str(graph), "--cache-dir", str(engine.parent)]) == 0
    assert engine.stat().st_mtime_ns == before and "H 160..576" in capsys.readouterr().out
    backend = trt_backend.TensorRTBackend(engine)
    try:
        assert backend.fixed_hw is None and backend.max_hw == (576, 576)
        assert backend.input_hw == (320, 448) and backend.text_dim == 384 and backend.layers == 3
        assert backend.accepts_visual and backend.requires_visual
        assert backend.meta[io_spec.META_CONFIG] == "shapes_tiny"
        assert io_spec.META_DEFAULT_PRUNING in backend.meta
        assert backend.ranges["visual_boxes"] == ((1, 1, 4), (1, 4, 4), (1, 16, 4))
    finally:
        backend.close()


@pytest.mark.parametrize("cuda", LIBS)
def test_segmenter_matches_onnxruntime_on_camera_frames(gpu, graph, engine, cuda, monkeypatch):
    """Everything with cuda-python; pycuda (the Jetson path) on fewer setups to save time."""
    monkeypatch.setenv("MOBIUS_CUDA", cuda)
    full = cuda == "cuda-python"
    found = 0
    for prune in (True, False) if full else (False,):
        trt, ort = segmenter("trt", engine, prune), segmenter("ort", graph, prune)
        assert trt.info.config.name == ort.info.config.name == "shapes_tiny"
        assert trt.info.default_pruning == ort.info.default_pruning and trt.info.dynamic
        assert trt.backend.cuda.name == cuda
        for prompts in (PROMPTS[:2], PROMPTS) if full else (PROMPTS,):
            trt.set_prompts(prompts), ort.set_prompts(prompts)
            for hw in ((480, 640), (720, 1280)):
                for image in frames(hw, 1, seed=len(prompts)):
                    for a, b in zip(trt([image]), ort([image])):
                        found += assert_same(a, b)
                    padded = trt.last_outputs.masks.shape[-2:]
                    assert padded == ((80, 112) if hw == (480, 640) else (80, 144))  # at aspect
        image = frames((480, 640), 1)[0]
        clicks = [[(200.0, 150.0), (100.0, 80.0, 300.0, 260.0)]]
        (a,), (b,) = trt([image], clicks), ort([image], clicks)
        assert assert_same(a, b) and any(t.startswith("point (") for t in a.label_texts)
        trt.short_side = 256  # a budget step: a smaller input, still inside the profile
        ort.short_side = 256
        assert_same(trt([image])[0], ort([image])[0])
        trt.backend.close()
    assert found > (10 if full else 3)  # the shipped model finds the shapes
    assert gpu.stats["pageable_async_copies"] == 0  # every async copy from page-locked memory


def test_pinned_buffers_are_reused_and_close_frees_everything(gpu, engine, monkeypatch):
    start = gpu.live()
    for cuda in LIBS:
        monkeypatch.setenv("MOBIUS_CUDA", cuda)
        seg = segmenter("trt", engine)
        seg.set_prompts(PROMPTS[:3])
        image = frames((480, 640), 1)[0]
        seg([image])
        mallocs, live = gpu.stats["mallocs"], gpu.live()
        for _ in range(3):
            seg([image])
        assert gpu.stats["mallocs"] == mallocs and gpu.live() == live  # nothing new per frame
        assert live["pinned"] > 0 and live["streams"] == start["streams"] + 1
        seg.backend.close()
        seg.backend.close()  # idempotent
        assert gpu.live() == start, cuda
        with pytest.raises(RuntimeError, match="closed"):
            seg([image])
    backend = trt_backend.TensorRTBackend(engine)  # and when it is just dropped
    del backend
    assert gpu.live() == start


def test_predict_with_trt_prints_what_onnxruntime_prints(gpu, graph, engine, tmp_path, capsys):
    for i, hw in enumerate(((480, 640), (720, 1280))):
        path = tmp_path / f"{i}.png"
        Image.fromarray(frames(hw, 1, seed=5)[0]).save(path)
        runs = []
        for backend, model in (("trt", engine), ("ort", graph)):
            args = ["predict", str(path), "--prompts", ",".join(PROMPTS), "--threshold", "0.1",
                    "--json", "--backend", backend, "--model", str(model)]  # fmt: skip
            assert main(args) == 0
            runs.append(json.loads(capsys.readouterr().out))
        a, b = runs
        assert a and [r["label"] for r in a] == [r["label"] for r in b]
        for ra, rb in zip(a, b):
            assert ra["box"] == pytest.approx(rb["box"], rel=1e-3, abs=0.11)


def test_a_square_only_profile_fails_on_a_camera_frame(gpu, graph, tmp_path, monkeypatch):
    """The old engines: one square profile at the export size and no fixed_hw. The double
    refuses a 640x480 frame (fed as 320x448), as TensorRT does."""
    from mobius_core.export.tensorrt import build_engine

    square = trt_backend.Profile(320, 320)
    path = build_engine(graph, tmp_path, "fp32", square)
    seg = segmenter("trt", path)
    assert seg.backend.fixed_hw == (320, 320) and seg.backend.max_hw is None  # fixed: padded
    seg.set_prompts(PROMPTS[:2])
    image = frames((480, 640), 1)[0]
    assert seg([image])[0] is not None and seg.last_outputs.masks.shape[-2:] == (80, 80)
    monkeypatch.setattr(seg.backend, "fixed_hw", None)  # what the old backend amounted to
    seg.pad_to, seg.max_size = None, 1333
    with pytest.raises(ValueError, match=r"320x448 .*outside .*profile"):
        seg([image])
    monkeypatch.setattr(seg.backend, "_check_profile", lambda feed: None)  # TensorRT itself
    with pytest.raises(ValueError, match="TensorRT refused shape"):
        seg([image])
    seg.backend.close()


def test_the_double_refuses_what_tensorrt_refuses(gpu, graph, engine):
    import tensorrt as trt
    from cuda.bindings import runtime as cudart

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    assert trt.OnnxParser(network, logger).parse_from_file(str(graph))
    config = builder.create_builder_config()
    assert builder.build_serialized_network(network, config) is None  # dynamic, no profile
    prof = builder.create_optimization_profile()
    with pytest.raises(ValueError, match="min <= opt <= max"):
        prof.set_shape("image", (1, 3, 320, 320), (1, 3, 256, 320), (1, 3, 320, 320))
    prof.set_shape("image", (1, 3, 64, 64), (1, 3, 64, 64), (1, 3, 64, 64))
    config.add_optimization_profile(prof)
    assert builder.build_serialized_network(network, config) is None  # text inputs unset
    data = engine.read_bytes()
    runtime = trt.Runtime(logger)
    assert runtime.deserialize_cuda_engine(data.replace(trt.__version__.encode(), b"9.0.0")) is None
    eng = runtime.deserialize_cuda_engine(data)
    assert eng.get_tensor_shape("image")[2:] == (-1, -1)
    assert eng.get_tensor_mode("masks") == trt.TensorIOMode.OUTPUT
    assert eng.get_tensor_dtype("labels").name == "INT64"
    ctx = eng.create_execution_context()
    assert not ctx.set_input_shape("image", (1, 3, 480, 640))  # 640 > 576
    assert not ctx.set_input_shape("text_tokens", (2, 8, 512))  # the fixed text width
    assert ctx.set_input_shape("image", (1, 3, 320, 448))
    err, stream = cudart.cudaStreamCreate()
    assert not ctx.execute_async_v3(int(stream))  # shapes, addresses, allocators missing
    with pytest.raises(TypeError, match=r"IOutputAllocator\.__init__"):

        class Bad(trt.IOutputAllocator):
            def __init__(self) -> None:  # forgets the base __init__
                pass

        ctx.set_output_allocator("masks", Bad())
    (err,) = cudart.cudaStreamDestroy(stream)
    assert err == cudart.cudaError_t.cudaSuccess
    assert cudart.cudaFree(12345)[0] != cudart.cudaError_t.cudaSuccess


def test_fixed_graph_and_int8_calibration(gpu, random_text_encoder, tmp_path, monkeypatch, capsys):
    import torch

    from mobius_core.build import build_model
    from mobius_core.config import load_config
    from mobius_core.export.onnx import export_image_graph
    from mobius_core.export.tensorrt import build_engine
    from mobius_core.inference.text import TorchTextSource

    cfg = load_config(
        "shapes_tiny",
        {"model.hidden_dim": 64, "model.decoder.num_queries": 12, "model.decoder.ffn_dim": 64,
         "model.pixel_decoder.ffn_dim": 64, "model.input_size": 64},
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg, text_encoder=random_text_encoder).eval()
    meta = {io_spec.META_CONFIG: "shapes_tiny"}
    onnx_path = export_image_graph(model, tmp_path / "f.onnx", (64, 96), meta)
    (tmp_path / "calib").mkdir()
    for i, im in enumerate(frames((48, 80), 3)):
        Image.fromarray(im).save(tmp_path / "calib" / f"{i}.png")
    text = TorchTextSource(model.text_encoder).encode(["red circle", "blue square"])
    start = gpu.live()
    for cuda in LIBS:
        monkeypatch.setenv("MOBIUS_CUDA", cuda)
        path = build_engine(onnx_path, tmp_path / cuda, "int8", calib_images=tmp_path / "calib",
                            text=text)  # fmt: skip
        assert (tmp_path / cuda / "int8.calib").is_file() and gpu.live() == start  # freed
    args = ["build-engine", str(onnx_path), "--size", "320", "--cache-dir", str(tmp_path)]
    assert main(args) == 2 and "--dynamic-hw" in capsys.readouterr().err
    trt, ort = segmenter("trt", path), segmenter("ort", onnx_path)
    assert trt.backend.fixed_hw == ort.backend.fixed_hw == (64, 96) and not trt.info.dynamic
    for s in (trt, ort):
        s.set_prompts(["red circle", "blue square"])
    for hw in ((480, 640), (720, 1280)):
        image = frames(hw, 1)[0]
        assert_same(trt([image])[0], ort([image])[0])
        assert trt.last_outputs.masks.shape[-2:] == (16, 24)  # padded to the fixed size
    trt.backend.close()
    stale = path.with_suffix(".json")
    info = json.loads(stale.read_text())
    del info["meta"]
    stale.write_text(json.dumps(info))
    with pytest.raises(trt_backend.EngineError, match="metadata"):
        trt_backend.TensorRTBackend(path)


def test_predict_trt_without_a_model_builds_the_shipped_engine_once(gpu, tmp_path, capsys):
    """No --model: the shipped model's engine, built from its cached ONNX bundle into
    ``$MOBIUS_CACHE/engines`` on the first call and reused (not rebuilt) on the next."""
    from mobius_core.cache import cache_root

    path = tmp_path / "f.png"
    Image.fromarray(frames((480, 640), 1, seed=5)[0]).save(path)
    args = ["predict", str(path), "--prompts", ",".join(PROMPTS), "--threshold", "0.1",
            "--json", "--backend", "trt"]  # fmt: skip
    runs, engines = [], []
    for word in ("built", "reusing"):
        builds = gpu.stats["engine_builds"]
        assert main(args) == 0
        out = capsys.readouterr()
        runs.append(json.loads(out.out))  # the engine line goes to stderr: stdout stays JSON
        (line,) = [ln for ln in out.err.splitlines() if ln.startswith("tensorrt:")]
        assert line.startswith(f"tensorrt: {word} engine ") and "shipped shapes_tiny" in line
        engine = Path(line.split(" engine ")[1].split(" (")[0])
        assert engine.parent == cache_root() / "engines" and engine.is_file()
        assert gpu.stats["engine_builds"] == builds + (word == "built")
        engines.append((engine, engine.stat().st_mtime_ns))
    assert engines[0] == engines[1]  # the same file, untouched
    assert runs[0] and runs[0] == runs[1]


def test_an_engine_profile_bounds_the_size_and_the_budget_ladder(gpu, graph, tmp_path):
    """The profile's largest H/W caps the input size (what each call feeds, the size
    reported, the ladder's top); sizes below its smallest are left out of the node's budget
    ladder with one note for the log. torch/onnxruntime ladders are as before."""
    from mobius_core.export.tensorrt import build_engine
    from mobius_ros.model import budget_sizes, load_model
    from mobius_ros.params import NodeParams

    profile = trt_backend.choose_profile((320, 320), dynamic=True, min_size=224)
    path = build_engine(graph, tmp_path, "fp32", profile)
    p = NodeParams(backend="tensorrt", model=str(path), input_size=640, threads=1)
    m = load_model(p)
    seg = m.segmenter
    assert seg.backend.image_range == ((224, 576), (224, 576))
    assert seg.short_side == seg.info.size == 576 and seg.max_size == 576
    assert m.sizes == list(range(576, 223, -32))
    (note,) = m.notes
    assert "192, 160 left out" in note and "H 224..576, W 224..576" in note
    seg.set_prompts(PROMPTS[:2])
    assert seg([frames((720, 1280), 1)[0]])[0] is not None
    assert max(seg.last_outputs.masks.shape[-2:]) * 4 <= 576  # inside the profile
    seg.backend.close()
    plain = NodeParams()  # no profile: every size down to budget_min_size (160)
    assert budget_sizes(plain, 320, True) == [320, 288, 256, 224, 192, 160]
    assert budget_sizes(NodeParams(budget_sizes=[256, 192]), 320, True, 224) == [320, 256]
    assert budget_sizes(plain, 320, False, 224) == [320]
