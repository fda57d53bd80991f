"""Backbones: levels read from the network match the real outputs; local checkpoints."""

from __future__ import annotations

import argparse
import copy
import warnings

import pytest
import timm
import torch
from safetensors.torch import save_file

from mobius_core.modeling.backbone import (
    FASTERVIT_NAMES,
    TARGET_STRIDES,
    Backbone,
    BackboneCheckpointError,
    FasterViTBackbone,
    TimmBackbone,
    build_backbone,
)
from mobius_core.types import BackboneFeatures

TIMM_NAMES = [
    "resnet50",
    "mobilenetv4_conv_small",
    "mobilenetv4_conv_medium",
    "mobilenetv4_conv_large",
    "mobilenetv4_hybrid_medium",
]


def _run(backbone: Backbone, h: int, w: int, batch: int = 1, seed: int = 0) -> BackboneFeatures:
    torch.manual_seed(seed)
    with torch.no_grad():
        return backbone.eval()(torch.randn(batch, 3, h, w))


def _check_shapes(backbone: Backbone, feats: BackboneFeatures, h: int, w: int, batch: int):
    assert isinstance(feats, BackboneFeatures)
    assert backbone.strides == TARGET_STRIDES
    assert feats.strides == backbone.strides
    assert len(feats.maps) == len(backbone.channels) == 4
    for m, c, s in zip(feats.maps, backbone.channels, backbone.strides):
        assert tuple(m.shape) == (batch, c, h // s, w // s)
        assert torch.isfinite(m).all()


def _timm_channels(name: str) -> tuple[int, ...]:
    """Channels of the stride 4..32 levels as timm's own feature_info reports them."""
    net = timm.create_model(name, pretrained=False, features_only=True)
    info = net.feature_info
    by_stride = dict(zip(info.reduction(), info.channels()))
    return tuple(by_stride[s] for s in TARGET_STRIDES)


# ---------------------------------------------------------------------------
# levels and shapes


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_timm_levels_match_outputs(name):
    backbone = build_backbone(name)
    assert isinstance(backbone, TimmBackbone)
    feats = _run(backbone, 128, 96, batch=2)
    _check_shapes(backbone, feats, 128, 96, batch=2)
    assert backbone.channels == _timm_channels(name)


@pytest.mark.parametrize("name", sorted(timm.list_models("mobilenetv4*")))
def test_every_mobilenetv4_variant_builds(name):
    backbone = build_backbone(name)
    _check_shapes(backbone, _run(backbone, 64, 64), 64, 64, batch=1)


def test_timm_model_without_stride_4_is_rejected():
    with pytest.raises(ValueError, match=r"vit_tiny_patch16_224.*strides \(16, 16"):
        TimmBackbone("vit_tiny_patch16_224")


def test_fastervit_0_levels_match_outputs():
    backbone = build_backbone("fastervit_0")
    assert isinstance(backbone, FasterViTBackbone)
    assert backbone.input_size == 224 and backbone.size_multiple == 224
    assert backbone.channels == (64, 128, 256, 512)
    for h, w in [(224, 224), (128, 128), (96, 160)]:
        _check_shapes(backbone, _run(backbone, h, w, batch=2), h, w, batch=2)


def test_fastervit_s5_is_the_native_stage_output():
    """At the built size no padding happens: S5 is FasterViT's own last-stage output and
    each stage's S_i, downsampled, is the next stage's input."""
    backbone = build_backbone("fastervit_0").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feats = backbone(x)
        y = backbone.body.patch_embed(x)
        for level in backbone.body.levels:
            y = level(y)
        assert torch.allclose(feats.maps[-1], y, atol=1e-5)
        down = backbone.body.levels[1].downsample(feats.maps[1])
        assert down.shape == feats.maps[2].shape


@pytest.mark.parametrize("name", FASTERVIT_NAMES[1:])
def test_fastervit_larger_variants_build_and_run(name):
    backbone = build_backbone(name)
    feats = _run(backbone, 128, 128)
    _check_shapes(backbone, feats, 128, 128, batch=1)
    assert backbone.channels[1:] == tuple(2 * c for c in backbone.channels[:-1])


@pytest.mark.parametrize(("resolution", "built"), [(128, 224), (224, 224), (384, 448), (800, 896)])
def test_fastervit_resolution_rounds_up_to_multiple_of_224(resolution, built):
    backbone = FasterViTBackbone("fastervit_0", resolution=resolution)
    assert backbone.input_size == built


def test_fastervit_runs_384_and_800():
    for size in (384, 800):
        backbone = build_backbone("fastervit_0", resolution=size)
        _check_shapes(backbone, _run(backbone, size, size), size, size, batch=1)


def test_fastervit_rejects_inputs_larger_than_built_size():
    backbone = build_backbone("fastervit_0")
    with pytest.raises(ValueError, match=r"224x224.*multiple of 224.*resolution=448"):
        backbone(torch.randn(1, 3, 256, 224))


def test_fastervit_deepcopy_after_training_step():
    backbone = build_backbone("fastervit_0").train()
    feats = backbone(torch.randn(2, 3, 128, 128))
    sum(m.mean() for m in feats.maps).backward()
    clone = copy.deepcopy(backbone).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        for a, b in zip(backbone.eval()(x).maps, clone(x).maps):
            assert torch.equal(a, b)


def test_bad_images_rejected():
    backbone = build_backbone("mobilenetv4_conv_small")
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        backbone(torch.randn(1, 1, 64, 64))


# ---------------------------------------------------------------------------
# factory


@pytest.mark.parametrize("name", ["resnet18", "fastervit_4", "faster_vit_0_224", "", "vit_base"])
def test_unknown_name_lists_allowed(name):
    with pytest.raises(
        ValueError, match=r"allowed:.*mobilenetv4_conv_small.*resnet50.*fastervit_3"
    ):
        build_backbone(name)


def test_unknown_mobilenetv4_variant():
    with pytest.raises(ValueError, match=r"mobilenetv4_conv_tiny.*mobilenetv4_conv_small"):
        build_backbone("mobilenetv4_conv_tiny")


# ---------------------------------------------------------------------------
# checkpoints


def _same_outputs(a: Backbone, b: Backbone, h: int = 64, w: int = 64) -> bool:
    fa, fb = _run(a, h, w), _run(b, h, w)
    return all(torch.equal(x, y) for x, y in zip(fa.maps, fb.maps))


@pytest.mark.parametrize("layout", ["own", "raw", "wrapped_model", "ddp", "safetensors"])
def test_checkpoint_roundtrip(tmp_path, layout):
    name = "mobilenetv4_conv_small"
    src = build_backbone(name)
    with torch.no_grad():  # make BN statistics non-trivial so a no-op load would differ
        for buf_name, buf in src.named_buffers():
            if buf_name.endswith("running_mean"):
                buf.normal_()
    raw = src.body.state_dict()
    path = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pth")
    if layout == "own":
        torch.save(src.state_dict(), path)
    elif layout == "raw":
        torch.save(raw, path)
    elif layout == "wrapped_model":
        torch.save({"model": raw, "epoch": 3}, path)
    elif layout == "ddp":
        torch.save({"state_dict": {f"module.{k}": v for k, v in raw.items()}}, path)
    else:
        save_file({k: v.contiguous() for k, v in raw.items()}, str(path))
    fresh = build_backbone(name)
    assert not _same_outputs(src, fresh)
    loaded = build_backbone(name, pretrained_path=path)
    assert _same_outputs(src, loaded)


def test_full_timm_classifier_checkpoint_drops_head(tmp_path):
    name = "mobilenetv4_conv_small"
    full = timm.create_model(name, pretrained=False)
    path = tmp_path / "imagenet.pth"
    torch.save(full.state_dict(), path)
    backbone = build_backbone(name)
    result = backbone.load_pretrained(path)
    assert result.loaded == len(backbone.body.state_dict())
    assert result.missing == ()
    assert result.dropped and all(k.startswith("classifier.") for k in result.dropped)
    assert set(result.unexpected) <= {k for k in full.state_dict() if "head" in k}


def test_fastervit_checkpoint_roundtrip_and_resolution_transfer(tmp_path):
    """A full FasterViT classification checkpoint (NVIDIA's layout, 224 geometry) loads into
    the backbone built at 224 and at 448; head/norm are dropped, geometry recomputed."""
    import fastervit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = fastervit.create_model("faster_vit_0_224", pretrained=False).eval()
    path = tmp_path / "fastervit_0_224_1k.pth"
    torch.save({"state_dict": full.state_dict()}, path)

    backbone = build_backbone("fastervit_0", pretrained_path=path).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        y = full.patch_embed(x)
        for level in full.levels:
            y = level(y)
        assert torch.allclose(backbone(x).maps[-1], y, atol=1e-5)

    big = FasterViTBackbone("fastervit_0", pretrained_path=path, resolution=448)
    result = big.load_pretrained(path)
    assert result.missing == ()
    assert {k.split(".")[0] for k in result.dropped} == {"head", "norm"}
    own = big.body.state_dict()
    for k, v in full.state_dict().items():
        if k in own and own[k].shape == v.shape and not k.endswith(big._derived_suffixes):
            assert torch.equal(own[k], v), k


def test_missing_checkpoint_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=r"nope\.pth.*never downloaded"):
        build_backbone("mobilenetv4_conv_small", pretrained_path=path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_garbage_checkpoint_file(tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(b"this is not a checkpoint\x00\x01\x02" * 10)
    with pytest.raises(BackboneCheckpointError, match=f"garbage{suffix}"):
        build_backbone("mobilenetv4_conv_small", pretrained_path=path)


def test_pickled_objects_rejected_with_hint(tmp_path):
    path = tmp_path / "train_ckpt.pth.tar"
    src = build_backbone("mobilenetv4_conv_small")
    torch.save({"state_dict": src.body.state_dict(), "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(BackboneCheckpointError, match=r"train_ckpt\.pth\.tar.*re-save"):
        build_backbone("mobilenetv4_conv_small", pretrained_path=path)


def test_wrong_shape_checkpoint(tmp_path):
    sd = build_backbone("mobilenetv4_conv_small").body.state_dict()
    sd["conv_stem.weight"] = torch.zeros(7, 3, 3, 3)
    path = tmp_path / "wrong_shape.pth"
    torch.save(sd, path)
    with pytest.raises(BackboneCheckpointError, match=r"wrong_shape\.pth.*conv_stem\.weight"):
        build_backbone("mobilenetv4_conv_small", pretrained_path=path)


def test_other_model_checkpoint_is_a_shape_error(tmp_path):
    path = tmp_path / "medium.pth"
    torch.save(build_backbone("mobilenetv4_conv_medium").state_dict(), path)
    with pytest.raises(BackboneCheckpointError, match=r"medium\.pth.*wrong shape"):
        build_backbone("mobilenetv4_conv_small", pretrained_path=path)


def test_no_matching_key_checkpoint(tmp_path):
    path = tmp_path / "unrelated.pth"
    torch.save({"encoder.weight": torch.zeros(3), "decoder.bias": torch.zeros(2)}, path)
    with pytest.raises(BackboneCheckpointError, match=r"no tensor of .*unrelated\.pth"):
        build_backbone("resnet50", pretrained_path=path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(BackboneCheckpointError, match=r"tensor\.pth.*does not hold a state_dict"):
        build_backbone("resnet50", pretrained_path=path)
