"""The ONNX export cache heals: a damaged, stale or unrecorded file is checked and re-exported.

The exporter is replaced by a fake that writes a small real ONNX graph (no torch export), so
each test counts exports exactly; the cache folder is always a tmp_path, never ~/.cache.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from types import SimpleNamespace

import pytest
import torch

from mobius_core import bundle, cache
from mobius_core.atomic import atomic_write_bytes
from mobius_core.config import load_config
from mobius_core.export import onnx as onnx_export
from mobius_core.inference import io_spec

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _graph_bytes() -> bytes:
    """A one-node graph with the export format's metadata: loads in onnxruntime."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = io_spec.META_FORMAT, io_spec.FORMAT_VERSION
    return model.SerializeToString()


@pytest.fixture
def exports(monkeypatch, tmp_path):
    """``.calls``: the paths the fake exporter wrote; ``.during``: run inside each export.
    The cache points at tmp_path/cache."""
    fake = SimpleNamespace(calls=[], during=lambda: None)

    def fake_export(cfg, model, path, size, dynamic_hw, visual=False):
        fake.calls.append(path)
        fake.during()
        return atomic_write_bytes(path, _graph_bytes())

    monkeypatch.setattr(onnx_export, "export_config_model", fake_export)
    monkeypatch.setattr("mobius_core.build.build_model", lambda cfg: torch.nn.Linear(1, 1))
    monkeypatch.setattr(
        "mobius_core.training.checkpoint.load_model_weights", lambda *args, **kwargs: None
    )
    monkeypatch.setattr("mobius_core.training.checkpoint.load_checkpoint", lambda path: {})
    monkeypatch.setenv("MOBIUS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "weights.pt").write_bytes(b"weights")
    return fake


def _export(tmp_path):
    return bundle.cached_image_graph(load_config("shapes_tiny"), tmp_path / "weights.pt", 320)


def _record(path):
    return path.with_name(path.name + ".json")


def _warnings(caplog):
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_cache_folder_follows_mobius_cache(exports, tmp_path):
    path = _export(tmp_path)
    assert path.parent == tmp_path / "cache" / "onnx" and path.is_file()
    assert cache.read_record(_record(path)) == {
        path.name: {"size": path.stat().st_size, "sha256": cache._sha256(path)}
    }


def test_whole_cached_export_is_reused_untouched(exports, tmp_path, caplog):
    path = _export(tmp_path)
    before = path.stat()
    record_before = _record(path).stat()
    assert _export(tmp_path) == path
    assert len(exports.calls) == 1 and not _warnings(caplog)
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert _record(path).stat().st_mtime_ns == record_before.st_mtime_ns


@pytest.mark.parametrize("damage", ["truncated", "empty", "overwritten"])
def test_damaged_cached_export_is_exported_again_with_one_warning(
    exports, tmp_path, caplog, damage
):
    path = _export(tmp_path)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # same size, other bytes
        path.write_bytes(bytes(b ^ 0xFF for b in data))
    with caplog.at_level(logging.WARNING):
        assert _export(tmp_path) == path
    assert len(exports.calls) == 2
    (warning,) = _warnings(caplog)
    message = warning.getMessage()
    assert "\n" not in message and str(path) in message and "exporting it again" in message
    assert path.read_bytes() == data and cache.is_whole(_record(path))
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # a usable model
    caplog.clear()
    assert _export(tmp_path) == path and len(exports.calls) == 2 and not _warnings(caplog)


def test_stale_record_is_exported_again(exports, tmp_path, caplog):
    path = _export(tmp_path)
    meta = json.loads(_record(path).read_text())
    meta["files"][path.name]["sha256"] = "0" * 64
    _record(path).write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING):
        _export(tmp_path)
    assert len(exports.calls) == 2 and len(_warnings(caplog)) == 1
    assert "checksum" in _warnings(caplog)[0].getMessage() and cache.is_whole(_record(path))


def test_unrecorded_export_from_an_older_version_is_kept_if_it_loads(exports, tmp_path, caplog):
    path = _export(tmp_path)
    _record(path).unlink()
    inode = path.stat().st_ino
    with caplog.at_level(logging.WARNING):
        _export(tmp_path)
    assert len(exports.calls) == 1 and not _warnings(caplog) and path.stat().st_ino == inode
    assert cache.is_whole(_record(path))  # recorded now
    _record(path).unlink()
    path.write_bytes(b"\x08garbage")  # no record, and not a graph
    with caplog.at_level(logging.WARNING):
        _export(tmp_path)
    assert len(exports.calls) == 2 and len(_warnings(caplog)) == 1
    assert "not a readable ONNX model" in _warnings(caplog)[0].getMessage()
    assert cache.is_whole(_record(path))


def test_a_start_that_waits_for_another_export_does_not_export_again(
    exports, tmp_path, monkeypatch, caplog
):
    """Two starts at once: the second waits for the lock and finds the first one's export."""
    opened = threading.Event()
    open_lock = cache._open_lock

    def spy_open_lock(record):
        f = open_lock(record)
        if threading.current_thread().name == "second":
            opened.set()
        return f

    monkeypatch.setattr(cache, "_open_lock", spy_open_lock)
    exports.during = lambda: opened.wait(timeout=60)  # the second reached the lock
    results = {}

    def start(name):
        results[name] = _export(tmp_path)

    first = threading.Thread(target=start, args=("first",), name="first")
    first.start()
    while not exports.calls and first.is_alive():  # the first start is inside its export
        first.join(timeout=0.01)
    second = threading.Thread(target=start, args=("second",), name="second")
    with caplog.at_level(logging.WARNING):
        second.start()
        first.join()
        second.join()
    assert opened.is_set(), "the second start never needed the lock"
    assert results["first"] == results["second"] and len(exports.calls) == 1
    assert not _warnings(caplog) and cache.is_whole(_record(results["first"]))


def test_unwritable_cache_folder_names_it_and_the_fix(exports, tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_folder"
    blocker.write_bytes(b"")
    monkeypatch.setenv("MOBIUS_CACHE", str(blocker))
    with pytest.raises(cache.CacheDirError) as info:
        _export(tmp_path)
    message = str(info.value)
    assert str(blocker / "onnx") in message and "MOBIUS_CACHE" in message
    assert "model:=" in message and not exports.calls


def test_read_only_cache_serves_a_whole_export_and_refuses_a_damaged_one(
    exports, tmp_path, monkeypatch
):
    path = _export(tmp_path)

    def read_only(record):
        raise PermissionError(13, os.strerror(13), str(record.parent))

    monkeypatch.setattr(cache, "_open_lock", read_only)
    assert _export(tmp_path) == path and len(exports.calls) == 1
    path.write_bytes(b"")
    with pytest.raises(cache.CacheDirError, match=r"0 bytes.*not writable.*MOBIUS_CACHE"):
        _export(tmp_path)
    assert len(exports.calls) == 1


def test_a_damaged_real_export_is_replaced_by_one_that_loads(
    tmp_path, monkeypatch, random_text_encoder, caplog
):
    """The real exporter behind the cache (a small model): damaged, re-exported, loads."""
    from mobius_core.build import build_model
    from mobius_core.inference.ort_backend import OnnxRuntimeBackend

    cfg = load_config(
        "shapes_tiny",
        {"model.hidden_dim": 64, "model.decoder.num_queries": 12, "model.decoder.ffn_dim": 64,
         "model.pixel_decoder.ffn_dim": 64, "model.input_size": 64},
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg, text_encoder=random_text_encoder)
    monkeypatch.setattr("mobius_core.build.build_model", lambda cfg: model)
    monkeypatch.setattr(
        "mobius_core.training.checkpoint.load_model_weights", lambda *args, **kwargs: None
    )
    monkeypatch.setattr("mobius_core.training.checkpoint.load_checkpoint", lambda path: {})
    (tmp_path / "weights.pt").write_bytes(b"weights")
    path = bundle.cached_image_graph(cfg, tmp_path / "weights.pt", 64, cache_dir=tmp_path)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 3)
    with caplog.at_level(logging.WARNING):
        again = bundle.cached_image_graph(cfg, tmp_path / "weights.pt", 64, cache_dir=tmp_path)
    assert again == path and path.stat().st_size == size and len(_warnings(caplog)) == 1
    backend = OnnxRuntimeBackend(path)
    assert backend.meta[io_spec.META_CONFIG] == "shapes_tiny" and backend.layers == 3


def test_the_text_graph_is_cached_once_heals_and_matches_the_torch_encoder(
    tmp_path, monkeypatch, caplog
):  # fmt: skip
    from mobius_core.build import build_text_encoder_from_config
    from mobius_core.inference.text import OnnxTextSource, TorchTextSource

    cfg = load_config("shapes_tiny")
    path = bundle.cached_text_graph(cfg, tmp_path)
    tok = io_spec.tokenizer_path(path)
    assert path.is_file() and tok.is_file() and path.parent == tmp_path / "onnx"
    prompts = ["red circle", "the small yellow triangle left of the blue square", "x"]
    got = OnnxTextSource(path).encode(prompts)
    ref = TorchTextSource(build_text_encoder_from_config(cfg.model)).encode(prompts)
    assert got.prompts == ref.prompts
    assert (got.token_mask == ref.token_mask).all()
    assert abs(got.pooled - ref.pooled).max() < 1e-4 and abs(got.tokens - ref.tokens).max() < 1e-4
    exports = []
    real = onnx_export.export_text_graph
    monkeypatch.setattr(onnx_export, "export_text_graph",
                        lambda enc, out: exports.append(out) or real(enc, out))  # fmt: skip
    assert bundle.cached_text_graph(cfg, tmp_path) == path and exports == []  # reused
    tok.write_text("{")  # a damaged tokenizer: the whole entry is exported again, one warning
    with caplog.at_level(logging.WARNING):
        assert bundle.cached_text_graph(cfg, tmp_path) == path
    assert exports == [path] and len(caplog.records) == 1
    assert "cached text graph" in caplog.records[0].getMessage()
    assert OnnxTextSource(path).encode(["x"]).prompts == ("x",)


def test_the_text_graph_refuses_a_prompt_over_its_token_limit_instead_of_truncating(tmp_path):
    from mobius_core.inference.text import OnnxTextSource

    path = bundle.cached_text_graph(load_config("shapes_tiny"), tmp_path)
    source = OnnxTextSource(path)
    long = "!" * 200  # 200 characters, one token each (+2 special)
    with pytest.raises(ValueError, match=r"prompt 1 .* takes \d+ tokens, over .* limit of 128"):
        source.encode(["fine", long])


def test_encoders_without_an_exportable_form_are_not_cached(tmp_path):
    cfg = load_config("shapes_tiny", {"model.text_encoder.pretrained": False})
    assert bundle.cached_text_graph(cfg, tmp_path) is None
    assert not (tmp_path / "onnx").exists()
