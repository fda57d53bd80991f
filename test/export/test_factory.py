"""build_segmenter: plain values -> the Segmenter the CLI, the node and the benchmarks run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobius_core.build import build_model
from mobius_core.config import load_config
from mobius_core.export.onnx import export_config_model, export_text_graph
from mobius_core.inference import SegmenterSpec, build_segmenter, io_spec

pytest.importorskip("onnxruntime")

TINY = {"model.hidden_dim": 64, "model.decoder.num_queries": 12, "model.decoder.ffn_dim": 64,
        "model.pixel_decoder.ffn_dim": 64, "model.input_size": 64,
        "model.pruning.low": 0.01, "model.pruning.high": 0.3}  # fmt: skip


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, random_text_encoder):
    """A small model exported with dynamic and with fixed H/W, and its text graph."""
    out = tmp_path_factory.mktemp("factory")
    cfg = load_config("shapes_tiny", TINY)
    torch.manual_seed(0)
    model = build_model(cfg, text_encoder=random_text_encoder).eval()
    dyn = export_config_model(cfg, model, out / "dyn.onnx", 64, dynamic_hw=True)
    fixed = export_config_model(cfg, model, out / "fixed.onnx", 64)
    text = export_text_graph(random_text_encoder, out / "text.onnx")
    return dyn, fixed, text


def test_a_dynamic_graph_runs_at_its_size_with_the_pruning_it_records(graphs):
    dyn, _, text = graphs
    seg = build_segmenter(SegmenterSpec("ort", str(dyn), text_model=str(text), threads=1))
    info = seg.info
    assert info.backend == "onnxruntime" and info.dynamic and seg.pad_to is None
    assert seg.short_side == info.size == 64  # the export size, not shapes_tiny's 320
    assert info.config.name == "shapes_tiny"  # recorded in the graph
    assert info.default_pruning["prune_low"] == pytest.approx(0.01)  # the graph's, not the zoo's
    assert seg.prune == {"prune_low": pytest.approx(0.01), "prune_high": pytest.approx(0.3),
                         "prune_beta": info.default_pruning["prune_beta"]}  # fmt: skip
    assert seg.backend.text_dim == seg.text.dim == 384
    seg.set_prompts(["red circle", "blue square"])
    (inst,) = seg([np.zeros((48, 80, 3), np.uint8)])  # non-square: fed at its aspect
    assert inst.masks.shape[1:] == (48, 80)


def test_a_fixed_graph_pads_and_the_spec_turns_pruning_off_and_sets_the_size(graphs):
    _, fixed, text = graphs
    spec = SegmenterSpec("onnxruntime", str(fixed), text_model=str(text), prune=False,
                         score_threshold=0.9, max_instances=3)  # fmt: skip
    seg = build_segmenter(spec)
    assert seg.pad_to == (64, 64) and not seg.info.dynamic and seg.prune is None
    assert seg.post.score_threshold == 0.9 and seg.post.top_k == 3
    seg.set_prompts(["red circle"])
    (inst,) = seg([np.zeros((30, 90, 3), np.uint8)])
    assert inst.masks.shape[1:] == (30, 90)
    small = build_segmenter(SegmenterSpec("ort", str(graphs[0]), text_model=str(text), size=32))
    assert small.short_side == small.info.size == 32


def test_the_text_source_follows_the_spec(graphs, tmp_path):
    dyn, _, text = graphs
    seg = build_segmenter(SegmenterSpec("ort", str(dyn), text_model=str(text)))
    arrays = seg.text.encode(["a", "b"])
    arrays.save(tmp_path / "p.npz")
    file_seg = build_segmenter(SegmenterSpec("ort", str(dyn), embeddings=str(tmp_path / "p.npz")))
    assert type(file_seg.text).__name__ == "FileTextSource"
    assert type(seg.text).__name__ == "OnnxTextSource"
    with pytest.raises(ValueError, match="holds the prompts"):
        file_seg.set_prompts(["c"])


def test_spec_errors_name_the_fix(graphs):
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        build_segmenter(SegmenterSpec("tpu"))
    with pytest.raises(ValueError, match="needs a model"):
        build_segmenter(SegmenterSpec("trt"))
    with pytest.raises(ValueError, match="no shipped weights for config 'mini_m'"):
        build_segmenter(SegmenterSpec("ort", config="mini_m"))
    assert io_spec.input_size({}) == (0, 0)


def test_the_node_parameters_map_onto_the_spec():
    from mobius_ros.model import spec_from_params
    from mobius_ros.params import NodeParams

    p = NodeParams(backend="torch", model="w.pt", input_size=256, threads=2, max_prompts=9,
                   pruning=False, visual_prompts=False)  # fmt: skip
    spec = spec_from_params(p)
    assert (spec.backend, spec.model, spec.checkpoint) == ("torch", None, "w.pt")
    assert (spec.size, spec.threads, spec.max_prompts, spec.prune, spec.visual) == (
        256, 2, 9, False, False)  # fmt: skip
    spec = spec_from_params(NodeParams(backend="onnxruntime", model="m.onnx"))
    assert (spec.model, spec.checkpoint, spec.size) == ("m.onnx", None, None)
