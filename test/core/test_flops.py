"""FLOP accounting: per-component counts, the kept-query trajectory and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from mobius_core.build import build_model
from mobius_core.cli import main
from mobius_core.config import load_config
from mobius_core.flops import count_flops, parse_size
from mobius_core.modeling.backbone import build_backbone

KEYS = ("vision_encoder", "pixel_decoder", "modality_fusion", "decoder", "total")


@pytest.fixture(scope="module")
def tiny(random_text_encoder):
    return build_model(load_config("shapes_tiny"), text_encoder=random_text_encoder)


def test_components_add_up(tiny):
    r = count_flops(tiny, 256, num_prompts=5)
    assert all(r[k] > 0 for k in KEYS)
    assert r["total"] == pytest.approx(
        r["vision_encoder"] + r["pixel_decoder"] + r["decoder"], abs=2e-3
    )
    assert r["modality_fusion"] < r["pixel_decoder"]
    assert abs(r["unassigned"]) < 1e-3  # every counted op belongs to a component
    assert r["size"] == [256, 256] and r["prompts"] == 5


def test_flops_grow_with_resolution_and_prompts(tiny):
    small, big = count_flops(tiny, 128, num_prompts=5), count_flops(tiny, 256, num_prompts=5)
    assert big["vision_encoder"] == pytest.approx(4 * small["vision_encoder"], rel=0.05)
    many = count_flops(tiny, 128, num_prompts=40)
    assert many["modality_fusion"] > small["modality_fusion"]
    assert many["vision_encoder"] == small["vision_encoder"]


def test_kept_trajectory_lowers_decoder_cost(tiny):
    full = count_flops(tiny, 256, num_prompts=5)
    assert full["kept"] == [50, 50, 50]
    pruned = count_flops(tiny, 256, num_prompts=5, kept=[30, 10, 5])
    assert pruned["kept"] == [30, 10, 5]
    assert pruned["decoder"] < full["decoder"]
    assert pruned["pixel_decoder"] == full["pixel_decoder"]
    with pytest.raises(ValueError, match="one count per decoder layer"):
        count_flops(tiny, 256, kept=[10, 5])
    with pytest.raises(ValueError, match="non-increasing"):
        count_flops(tiny, 256, kept=[10, 20, 5])


def test_resnet50_matches_fvcore_convention():
    # fvcore reports 4.1 GFLOPs (multiply-adds) for ResNet-50 at 224x224
    from torch.utils.flop_counter import FlopCounterMode

    backbone = build_backbone("resnet50").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        backbone(torch.zeros(1, 3, 224, 224))
    assert fc.get_total_flops() / 2e9 == pytest.approx(4.1, rel=0.03)


def test_parse_size():
    assert parse_size("800") == (800, 800)
    assert parse_size("384x640") == (384, 640)
    with pytest.raises(ValueError, match="N or HxW"):
        parse_size("big")


def test_cli_json(capsys):
    code = main(["flops", "shapes_tiny", "--size", "128", "--prompts", "3", "--json",
                 "--set", "model.text_encoder.pretrained=false"])  # fmt: skip
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert set(KEYS) <= set(out) and out["config"] == "shapes_tiny"
    code = main(["flops", "shapes_tiny", "--size", "128", "--kept", "9,x"])
    assert code == 2
    assert "--kept" in capsys.readouterr().err


def test_cli_config_errors_are_reported(capsys):
    assert main(["config", "r50", "--set", "model.decoder.num_querys=3"]) == 2
    assert "num_querys" in capsys.readouterr().err
    assert main(["config", "mini_m"]) == 0
    assert "mobilenetv4_conv_medium" in capsys.readouterr().out


def test_paper_efficiency_claims_at_800(random_text_encoder):
    """Tab. 10 at 800x800 with a ResNet-50: the ratios the paper's design rests on."""
    results = {}
    for name, overrides in [
        ("r50", {}),
        ("r50_multi", {"model.decoder.scales": "multi"}),
        ("glee_maskdino", {}),
    ]:
        cfg = load_config(name.replace("_multi", ""), overrides)
        model = build_model(cfg, text_encoder=random_text_encoder)
        results[name] = count_flops(model, 800, num_prompts=80)
    mobius, glee = results["r50"], results["glee_maskdino"]
    assert mobius["vision_encoder"] == pytest.approx(52.4, rel=0.03)
    assert mobius["pixel_decoder"] <= 0.5 * glee["pixel_decoder"]
    assert mobius["modality_fusion"] <= 0.3 * glee["modality_fusion"]
    assert mobius["decoder"] <= 0.55 * results["r50_multi"]["decoder"]
