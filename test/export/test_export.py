"""ONNX export, onnxruntime parity, one runtime interface, a torch-free deployment path."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from mobius_core import bundle
from mobius_core.build import build_model
from mobius_core.config import load_config
from mobius_core.export.onnx import (
    ImageGraph,
    example_inputs,
    export_image_graph,
    export_text_graph,
)
from mobius_core.inference import io_spec
from mobius_core.inference.backend import make_feed
from mobius_core.inference.ort_backend import OnnxRuntimeBackend
from mobius_core.inference.prompts import TextArrays, validate_prompts
from mobius_core.inference.segmenter import Segmenter
from mobius_core.inference.text import FileTextSource, OnnxTextSource, TorchTextSource
from mobius_core.inference.torch_backend import TorchBackend
from mobius_core.postprocess import RawOutputs

ort = pytest.importorskip("onnxruntime")

SIZE = 64


@pytest.fixture(scope="module")
def tiny(random_text_encoder, tmp_path_factory):
    cfg = load_config(
        "shapes_tiny",
        {"model.hidden_dim": 64, "model.decoder.num_queries": 12, "model.decoder.ffn_dim": 64,
         "model.pixel_decoder.ffn_dim": 64, "model.input_size": SIZE},
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg, text_encoder=random_text_encoder).eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_image_graph(model, path, (SIZE, SIZE), {io_spec.META_CONFIG: "tiny"})
    return model, path


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = np.full((SIZE, SIZE, 3), rng.integers(0, 255), dtype=np.uint8)
        y, x = rng.integers(0, SIZE // 2, size=2)
        img[y : y + 20, x : x + 20] = rng.integers(0, 255, size=3)
        out.append(img)
    return out


def test_onnxruntime_matches_eager_for_other_prompt_counts_and_images(tiny):
    model, path = tiny
    ort_backend = OnnxRuntimeBackend(path)
    torch_backend = TorchBackend(model)
    text = TorchTextSource(model.text_encoder)
    for prompts in (["red circle", "blue square"], ["a", "b", "c", "d", "e"]):  # traced with 3
        arrays = text.encode(prompts)
        for image in _images(3):
            batch = np.zeros((1, 3, SIZE, SIZE), np.float32)
            batch[0] = image.transpose(2, 0, 1) / 255.0
            feed = make_feed(batch, arrays, None, 5)
            a, b = ort_backend.infer(feed), torch_backend.infer(feed)
            assert a.prompt_scores.shape == b.prompt_scores.shape == (1, 12, len(prompts))
            np.testing.assert_allclose(a.prompt_scores, b.prompt_scores, atol=1e-4)
            np.testing.assert_allclose(a.boxes, b.boxes, rtol=1e-3, atol=1e-5)
            np.testing.assert_allclose(a.masks, b.masks, atol=2e-3)
            assert np.array_equal(a.prompt_scores.argmax(-1), b.prompt_scores.argmax(-1))
            assert np.array_equal(a.kept, b.kept)


def test_thresholds_are_inputs_one_file_many_settings(tiny):
    model, path = tiny
    backend = OnnxRuntimeBackend(path)
    arrays = TorchTextSource(model.text_encoder).encode(["x", "y"])
    batch = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)
    off = backend.infer(make_feed(batch, arrays, None, 3))
    hard = backend.infer(make_feed(batch, arrays, {"prune_low": 0.9, "prune_high": 0.99,
                                                   "prune_beta": 1.0}, 3))  # fmt: skip
    assert off.kept.tolist() == [[12, 12, 12]]
    assert hard.kept.tolist() == [[3, 3, 3]]  # nothing is that confident: min_keep holds
    assert hard.prompt_scores.shape[1] == 3 and off.prompt_scores.shape[1] == 12


def test_padding_prompts_score_zero(tiny):
    model, path = tiny
    backend = OnnxRuntimeBackend(path)
    arrays = TorchTextSource(model.text_encoder).encode(["x", "y", "z"])
    batch = np.random.default_rng(1).random((1, 3, SIZE, SIZE), dtype=np.float32)
    feed = make_feed(batch, arrays, None, 3)
    feed["prompt_valid"][2] = False
    out = backend.infer(feed)
    assert np.all(out.prompt_scores[..., 2] == 0.0) and np.all(out.prompt_scores[..., :2] > 0)


def test_feed_contract_errors_name_the_tensor(tiny):
    model, path = tiny
    backend = OnnxRuntimeBackend(path)
    arrays = TorchTextSource(model.text_encoder).encode(["x"])
    feed = make_feed(np.zeros((1, 3, SIZE, SIZE), np.float32), arrays, None, 3)
    bad = {**feed, "min_keep": feed["min_keep"].astype(np.int32)}
    with pytest.raises(ValueError, match="'min_keep' must be int64"):
        backend.infer(bad)
    bad = {**feed, "text_pooled": feed["text_pooled"][:0]}
    with pytest.raises(ValueError, match="axis 'prompts'"):
        backend.infer(bad)
    with pytest.raises(ValueError, match="exported for 64x64"):
        backend.infer({**feed, "image": np.zeros((1, 3, 96, 64), np.float32)})


def test_corrupt_or_missing_graph_gives_clear_errors(tmp_path, tiny):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(ValueError, match="re-export it"):
        OnnxRuntimeBackend(bad)
    with pytest.raises(FileNotFoundError, match="mobius export"):
        OnnxRuntimeBackend(tmp_path / "missing.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(tiny[1].read_bytes()[:5000])
    with pytest.raises(ValueError, match="re-export"):
        OnnxRuntimeBackend(truncated)


def test_segmenter_same_instances_on_every_backend_and_atomic_prompts(tiny):
    model, path = tiny
    text = TorchTextSource(model.text_encoder)
    from mobius_core.postprocess import PostProcessor

    post = PostProcessor(score_threshold=0.0, top_k=5)
    a = Segmenter(TorchBackend(model), text, SIZE, post=post, min_keep=4)
    b = Segmenter(OnnxRuntimeBackend(path), text, SIZE, post=post, min_keep=4, pad_to=(SIZE, SIZE))
    for seg in (a, b):
        assert seg.set_prompts(["red circle", "blue square"]) >= 0.0
    for image in _images(2, seed=3):
        (ia,), (ib,) = a([image]), b([image])
        assert ia.label_texts == ib.label_texts and len(ia) == 5
        np.testing.assert_allclose(ia.boxes, ib.boxes, rtol=1e-3, atol=1e-3)
        assert type(a.last_outputs) is type(b.last_outputs) is RawOutputs
    with pytest.raises(ValueError, match="duplicate prompts"):
        b.set_prompts(["x", "x"])
    with pytest.raises(ValueError, match="empty"):
        b.set_prompts([])
    assert b.prompts == ("red circle", "blue square")  # the failed requests changed nothing


def test_prompt_validation_messages():
    assert validate_prompts([" a ", "b"]) == ["a", "b"]
    with pytest.raises(ValueError, match="single string"):
        validate_prompts("a,b")
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        validate_prompts(["a", " "])
    with pytest.raises(ValueError, match="exceed the limit of 3"):
        validate_prompts(["a", "b", "c", "d"], max_prompts=3)
    with pytest.raises(ValueError, match="prompt 1 has type int"):
        validate_prompts(["a", 3])
    with pytest.raises(ValueError, match=r"duplicate prompts \['a'\]"):
        validate_prompts(["a", "b", " a"])
    assert validate_prompts(["a", "a"], unique=False) == ["a", "a"]  # the encoder in training


BAD_PROMPTS = [
    ("a,b", "single string"),
    ([], "prompt list is empty"),
    (["a", "  "], "prompt 1 is empty"),
    (["a", "x" * 201], "prompt 1 .* has 201 characters, over the limit of 200"),
    (["a", "b", "a"], "duplicate prompts"),
    (["a", None], "prompt 1 has type NoneType"),
]


@pytest.mark.parametrize(("prompts", "message"), BAD_PROMPTS)
def test_every_text_source_refuses_the_same_prompts_the_same_way(
    random_text_encoder, tmp_path, prompts, message
):
    """One validation (validate_prompts) behind the torch encoder, the ONNX text graph, an
    embeddings file and the Segmenter, whatever the backend."""
    graph = export_text_graph(random_text_encoder, tmp_path / "text.onnx")
    torch_source = TorchTextSource(random_text_encoder)
    file = torch_source.encode(["a", "b"]).save(tmp_path / "p.npz")
    sources = [torch_source, OnnxTextSource(graph), FileTextSource(file)]
    errors = []
    for source in sources:
        with pytest.raises(ValueError, match=message) as info:
            source.encode(prompts)
        errors.append(str(info.value))
    assert len(set(errors)) == 1, errors  # word for word the same
    backend = types.SimpleNamespace(text_dim=0, accepts_visual=False, requires_visual=False)
    seg = Segmenter(backend, sources[1], 64)
    seg.set_prompts(["a", "b"])
    with pytest.raises(ValueError, match=message):
        seg.set_prompts(prompts)
    assert seg.prompts == ("a", "b")  # a refused list leaves the previous one in force


def test_text_sources_refuse_a_prompt_over_their_token_limit(random_text_encoder, tmp_path):
    """The encoder that counts tokens refuses a prompt over its limit, never truncates it."""
    source = OnnxTextSource(export_text_graph(random_text_encoder, tmp_path / "text.onnx"))
    source.max_tokens = 4
    with pytest.raises(ValueError, match=r"prompt 1 .* tokens, over the text graph's limit of 4"):
        source.encode(["a", "one two three four five six"])


def test_text_graph_matches_the_encoder(random_text_encoder, tmp_path):
    path = export_text_graph(random_text_encoder, tmp_path / "text.onnx")
    assert (tmp_path / "text.tokenizer.json").is_file()
    source = OnnxTextSource(path)
    prompts = ["red circle", "the leftmost blue square on the table", "x"]
    got = source.encode(prompts)
    ref = TorchTextSource(random_text_encoder).encode(prompts)
    assert got.prompts == ref.prompts and got.tokens.shape == ref.tokens.shape
    np.testing.assert_array_equal(got.token_mask, ref.token_mask)
    np.testing.assert_allclose(got.pooled, ref.pooled, atol=1e-4)
    np.testing.assert_allclose(got.tokens, ref.tokens, atol=1e-4)
    runs = []
    run = source.session.run
    source.session.run = lambda names, feed: (
        runs.append(feed["input_ids"].shape) or run(names, feed)
    )
    source.batch_size = 2  # by two, shortest first: each batch padded only to its longest
    longer = prompts + ["a much longer prompt than all of the others put together"]
    again = source.encode(longer)
    assert len(runs) == 2 and runs[0][1] < runs[1][1] == again.tokens.shape[1]
    np.testing.assert_allclose(again.pooled[:3], got.pooled, atol=1e-5)
    np.testing.assert_allclose(again.tokens[:3, : got.tokens.shape[1]], got.tokens, atol=1e-5)
    assert not again.tokens[:3, got.tokens.shape[1] :].any()  # padding stays zero


def test_embeddings_file_round_trip_and_mismatch(tmp_path, random_text_encoder):
    arrays = TorchTextSource(random_text_encoder).encode(["a", "b"])
    path = arrays.save(tmp_path / "p.npz")
    source = FileTextSource(path)
    loaded = source.encode(["a", "b"])
    np.testing.assert_array_equal(loaded.pooled, arrays.pooled)
    with pytest.raises(ValueError, match="other prompts need a text encoder"):
        source.encode(["c"])
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(ValueError, match="mobius embed"):
        TextArrays.load(tmp_path / "bad.npz")


def test_onnxruntime_path_imports_neither_torch_nor_timm(tiny, tmp_path):
    model, path = tiny
    emb = TorchTextSource(model.text_encoder).encode(["red circle", "blue square"])
    emb.save(tmp_path / "p.npz")
    code = f"""
import sys, numpy as np
from mobius_core.inference.ort_backend import OnnxRuntimeBackend
from mobius_core.inference.segmenter import Segmenter
from mobius_core.inference.text import FileTextSource
seg = Segmenter(OnnxRuntimeBackend({str(path)!r}), FileTextSource({str(tmp_path / "p.npz")!r}),
                {SIZE}, pad_to=({SIZE}, {SIZE}))
seg.set_prompts(["red circle", "blue square"])
(inst,) = seg([np.zeros((50, 70, 3), np.uint8)])
print(inst.masks.shape[1:], sorted(m for m in ("torch", "timm") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(50, 70) []", out.stdout  # masks at the image's size


def test_graph_wrapper_matches_the_model(tiny):
    model, _ = tiny
    inputs = example_inputs(model, (SIZE, SIZE), prompts=2)
    with torch.no_grad():
        scores, best, labels, boxes, masks, valid, kept = ImageGraph(model)(*inputs)
    assert scores.shape[-1] == 2 and torch.equal(best, scores.max(-1).values)
    assert torch.equal(labels, scores.argmax(-1)) and kept.shape == (1, 3)
    q = scores.shape[1]
    assert boxes.shape == (1, q, 4) and masks.shape[:2] == (1, q) and valid.shape == (1, q)


def test_metadata_recorded(tiny):
    meta = io_spec.read_metadata(tiny[1])
    assert meta[io_spec.META_FORMAT] == io_spec.FORMAT_VERSION
    assert meta[io_spec.META_CONFIG] == "tiny" and json.loads(meta[io_spec.META_INPUT_SIZE]) == [
        64,
        64,
    ]
    assert int(meta[io_spec.META_LAYERS]) == 3 and int(meta[io_spec.META_TEXT_DIM]) == 384


def test_cached_export_is_keyed_on_weights_config_and_graph_version(tmp_path, monkeypatch):
    """An unchanged checkpoint is exported once; a changed config default or graph version
    gets a new file (an old cached graph must never outlive a change of the exporter)."""
    from mobius_core.export import onnx as onnx_export

    calls = []

    def fake_export(cfg, model, path, size, dynamic_hw, visual=False):
        calls.append((path, visual))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"graph")
        return path

    monkeypatch.setattr(onnx_export, "export_config_model", fake_export)
    monkeypatch.setattr("mobius_core.build.build_model", lambda cfg: torch.nn.Linear(1, 1))
    monkeypatch.setattr(
        "mobius_core.training.checkpoint.load_model_weights", lambda *args, **kwargs: None
    )
    monkeypatch.setattr("mobius_core.training.checkpoint.load_checkpoint", lambda path: {})
    ckpt = tmp_path / "weights.pt"
    ckpt.write_bytes(b"weights")
    cfg = load_config("shapes_tiny")
    first = bundle.cached_image_graph(cfg, ckpt, 320, cache_dir=tmp_path)
    assert bundle.cached_image_graph(cfg, ckpt, 320, cache_dir=tmp_path) == first
    assert len(calls) == 1
    other = load_config("shapes_tiny", {"model.pruning.min_keep": 3})
    assert bundle.cached_image_graph(other, ckpt, 320, cache_dir=tmp_path) != first
    no_context = load_config("shapes_tiny", {"model.pruning.context": False})
    assert bundle.cached_image_graph(no_context, ckpt, 320, cache_dir=tmp_path) != first
    visual = bundle.cached_image_graph(cfg, ckpt, 320, cache_dir=tmp_path, visual=True)
    assert visual != first and calls[-1] == (visual, True)  # the point/box graph apart
    monkeypatch.setattr("mobius_core.bundle.GRAPH_VERSION", bundle.GRAPH_VERSION + 1)
    assert bundle.cached_image_graph(cfg, ckpt, 320, cache_dir=tmp_path) != first
    assert len(calls) == 5


@pytest.fixture(scope="module")
def tiny_visual(tiny, tmp_path_factory):
    model, _ = tiny
    path = tmp_path_factory.mktemp("onnx") / "tiny_visual.onnx"
    export_image_graph(model, path, (SIZE, SIZE), {io_spec.META_CONFIG: "tiny"}, visual=True)
    return model, path


def test_visual_graph_matches_eager_for_points_and_boxes(tiny_visual):
    model, path = tiny_visual
    ort_backend, torch_backend = OnnxRuntimeBackend(path), TorchBackend(model)
    assert (
        ort_backend.accepts_visual and ort_backend.requires_visual and torch_backend.accepts_visual
    )
    assert io_spec.read_metadata(path)[io_spec.META_VISUAL] == "1"
    arrays = TorchTextSource(model.text_encoder).encode(["red circle", "blue square"])
    images = _images(2, seed=3)
    batch = np.stack([im.transpose(2, 0, 1) / 255.0 for im in images]).astype(np.float32)
    # 4 prompts per image (traced with 3): points, boxes, and a padding slot in image 1
    boxes = np.array(
        [[[0.2, 0.3, 0.2, 0.3], [0.1, 0.1, 0.6, 0.5], [0.5, 0.5, 0.5, 0.5], [0, 0, 1, 1]],
         [[0.7, 0.2, 0.7, 0.2], [0.3, 0.3, 0.9, 0.8], [0.4, 0.6, 0.4, 0.6], [0, 0, 0, 0]]],
        dtype=np.float32,
    )  # fmt: skip
    valid = np.ones((2, 4), dtype=bool)
    valid[1, 3] = False
    feed = {**make_feed(batch, arrays, None, 5), "visual_boxes": boxes, "visual_valid": valid}
    a, b = ort_backend.infer(feed), torch_backend.infer(feed)
    assert a.prompt_scores.shape == b.prompt_scores.shape == (2, 12, 6)  # K=2 text + V=4
    np.testing.assert_allclose(a.prompt_scores, b.prompt_scores, atol=1e-4)
    np.testing.assert_allclose(a.masks, b.masks, atol=2e-3)
    assert np.array_equal(a.prompt_scores.argmax(1), b.prompt_scores.argmax(1))  # same answers
    assert np.all(a.prompt_scores[1, :, 5] == 0)  # the padding slot scores nothing
    # the text-only graph rejects visual inputs, the visual graph needs them: clear errors
    plain = make_feed(batch, arrays, None, 5)
    with pytest.raises(ValueError, match="feed visual_boxes"):
        ort_backend.infer(plain)
    b_plain = torch_backend.infer(plain)  # torch takes both
    assert b_plain.prompt_scores.shape[-1] == 2


def test_segmenter_answers_each_click_with_one_labelled_instance(tiny, tiny_visual):
    model, plain_path = tiny
    _, path = tiny_visual
    text = TorchTextSource(model.text_encoder)
    seg = Segmenter(OnnxRuntimeBackend(path), text, SIZE, pad_to=(SIZE, SIZE))
    ref = Segmenter(TorchBackend(model), text, SIZE, pad_to=(SIZE, SIZE))
    for s in (seg, ref):
        s.set_prompts(["red circle"])
    image = _images(1, seed=5)[0]
    clicks = [[(10, 20), (5, 5, 40, 30)]]
    got, want = seg([image], clicks)[0], ref([image], clicks)[0]
    assert got.label_texts[-2:] == ["point (10, 20)", "box (5, 5, 40, 30)"]
    assert got.labels[-2:].tolist() == [1, 2]  # after the one text prompt
    assert len(got) == len(want) and np.array_equal(got.masks[-2:], want.masks[-2:])
    # without clicks the visual graph gives what the plain graph gives
    plain = Segmenter(OnnxRuntimeBackend(plain_path), text, SIZE, pad_to=(SIZE, SIZE))
    plain.set_prompts(["red circle"])
    a, b = seg([image])[0], plain([image])[0]
    assert np.array_equal(a.labels, b.labels) and np.allclose(a.scores, b.scores, atol=1e-5)
    with pytest.raises(ValueError, match="outside the 64x64 image"):
        seg([image], [[(70, 10)]])
    with pytest.raises(ValueError, match="export --visual"):
        plain([image], [[(10, 10)]])


@pytest.mark.parametrize("kind", ["grid", "polar", "spectrum", "outline"])
def test_shape_head_exports_and_matches_eager(kind, random_text_encoder, tmp_path):
    cfg = load_config(
        "shapes_tiny",
        {"model.hidden_dim": 64, "model.decoder.num_queries": 12, "model.decoder.ffn_dim": 64,
         "model.pixel_decoder.ffn_dim": 64, "model.input_size": SIZE,
         "model.decoder.shape_grid": 6, "model.decoder.shape_kind": kind},
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg, text_encoder=random_text_encoder).eval()
    torch.nn.init.normal_(model.decoder.shape_head.embed.layers[-1].weight, std=0.5)
    path = tmp_path / "shape.onnx"
    export_image_graph(model, path, (SIZE, SIZE), {io_spec.META_CONFIG: "shape"})
    ort_backend, torch_backend = OnnxRuntimeBackend(path), TorchBackend(model)
    arrays = TorchTextSource(model.text_encoder).encode(["red circle", "blue square"])
    for thresholds in (None, {"prune_low": 0.3, "prune_high": 0.6, "prune_beta": 8.0}):
        for image in _images(2, seed=3):
            batch = image.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
            feed = make_feed(batch, arrays, thresholds, 3)
            a, b = ort_backend.infer(feed), torch_backend.infer(feed)
            np.testing.assert_allclose(a.prompt_scores, b.prompt_scores, atol=1e-4)
            np.testing.assert_allclose(a.masks, b.masks, atol=2e-3)
            assert np.array_equal(a.kept, b.kept)
