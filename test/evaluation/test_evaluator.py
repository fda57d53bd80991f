"""End-to-end evaluation on a generated synthetic split, through the API and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from mobius_core.build import build_model
from mobius_core.cli import main
from mobius_core.config import load_config
from mobius_core.data.synthetic import cached_split
from mobius_core.evaluation.evaluator import evaluate_dataset
from mobius_core.modeling.pruning import PruneSchedule
from mobius_core.training.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def val4(tmp_path_factory):
    return cached_split("val", 4, seed=0, size=(128, 128), root=tmp_path_factory.mktemp("syn"))


def test_cached_split_is_reused(val4, tmp_path_factory):
    again = cached_split("val", 4, seed=0, size=(128, 128), root=val4.ann_file.parents[2])
    assert again.ann_file == val4.ann_file and len(again) == 4
    assert (val4.ann_file.parents[1] / "complete").is_file()


def test_evaluate_dataset_reports_every_metric(val4, random_text_encoder):
    torch.manual_seed(0)
    model = build_model(load_config("shapes_tiny"), text_encoder=random_text_encoder)
    full = evaluate_dataset(model, val4, short_side=128)
    m = full.metrics
    for key in ("box_ap", "mask_ap", "mask_ap50", "ece", "kept_mean"):
        assert key in m and 0.0 <= m[key] <= 100.0
    assert m["kept_mean"] == 50.0 and m["images"] == 4.0
    assert 0.0 <= m["refer_p50"] <= 100.0 and 0.0 <= m["refer_oiou"] <= 100.0  # refs.json
    pruned = evaluate_dataset(model, val4, short_side=128, prune=PruneSchedule.fixed([30, 20, 10]))
    assert pruned.metrics["kept_mean"] == 10.0
    assert 0 < pruned.metrics["decoder_gflops"] < m["decoder_gflops"]
    assert all(r["category_id"] in val4.labels.ids for r in full.results)


def test_cli_eval_json(val4, tmp_path, capsys, random_text_encoder):
    torch.manual_seed(0)
    cfg = load_config("shapes_tiny", {"model.text_encoder.pretrained": False})
    model = build_model(cfg, text_encoder=random_text_encoder)
    ckpt = save_checkpoint(tmp_path / "m.pt", {"model": model.state_dict()})
    data = ["--data", str(val4.ann_file), "--images", str(val4.image_dir), "--size", "128"]
    args = ["eval", "shapes_tiny", "--set", "model.text_encoder.pretrained=false", *data]
    assert main([*args, "--checkpoint", str(ckpt), "--json", "--no-prune"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pruning"] is False and "mask_ap" in out and "ece" in out
    other = build_model(load_config("shapes_tiny", {"model.hidden_dim": 64}), random_text_encoder)
    bad = save_checkpoint(tmp_path / "bad.pt", {"model": other.state_dict()})
    assert main([*args, "--checkpoint", str(bad), "--json"]) == 2
    assert "does not fit this model" in capsys.readouterr().err
    assert main(["eval", "shapes_tiny", "--json"]) == 2
    assert "--synthetic" in capsys.readouterr().err
