"""Config defaults, the zoo, and validation errors that name the key and the fix."""

from __future__ import annotations

import pytest

from mobius_core.config import ConfigError, apply_overrides, load_config, parse_set_args, zoo_names

REQUIRED_ZOO = {
    "mini_m",
    "mini_l",
    "mobius_0",
    "mobius_1",
    "mobius_2",
    "mobius_3",
    "r50",
    "glee_maskdino",
    "glee_rtdetr",
    "shapes_tiny",
}


def test_zoo_has_every_named_config():
    assert REQUIRED_ZOO <= set(zoo_names())


@pytest.mark.parametrize("name", sorted(REQUIRED_ZOO))
def test_zoo_configs_load_and_are_named(name):
    cfg = load_config(name)
    assert cfg.name == name
    assert cfg.description


def test_paper_defaults():
    m = load_config("r50").model
    assert m.hidden_dim == 256
    assert m.decoder.num_layers == 9
    assert m.decoder.num_queries == 300
    assert m.pixel_decoder.bottleneck_stride == 16
    assert m.decoder.scales == "single"
    assert m.pixel_decoder.num_blocks == 6 and m.pixel_decoder.ffn_dim == 2048


def test_zoo_entries_match_the_paper():
    mini_m = load_config("mini_m").model
    assert mini_m.backbone.name == "mobilenetv4_conv_medium"
    assert (mini_m.pixel_decoder.num_blocks, mini_m.pixel_decoder.ffn_dim) == (3, 1024)
    mini_l = load_config("mini_l").model  # inherits mini_m through `base`
    assert mini_l.backbone.name == "mobilenetv4_conv_large"
    assert (mini_l.pixel_decoder.num_blocks, mini_l.pixel_decoder.ffn_dim) == (3, 1024)
    for i in range(4):
        m = load_config(f"mobius_{i}").model
        assert m.backbone.name == f"fastervit_{i}"
        assert (m.pixel_decoder.num_blocks, m.pixel_decoder.ffn_dim) == (6, 2048)
    glee = load_config("glee_maskdino").model
    assert glee.pixel_decoder.kind == "maskdino" and glee.decoder.scales == "multi"
    assert load_config("glee_rtdetr").model.pixel_decoder.kind == "rtdetr"
    assert load_config("shapes_tiny").model.backbone.name == "mobilenetv4_conv_small"


def test_unknown_key_names_key_and_allowed_keys():
    with pytest.raises(ConfigError) as err:
        load_config("r50", {"model.decoder.num_querys": 10})
    msg = str(err.value)
    assert "model.decoder.num_querys" in msg and "num_queries" in msg


def test_bad_choice_lists_allowed_values():
    with pytest.raises(ConfigError) as err:
        load_config("r50", {"model.pixel_decoder.kind": "fpn"})
    msg = str(err.value)
    assert "model.pixel_decoder.kind" in msg
    assert "bottleneck" in msg and "maskdino" in msg and "rtdetr" in msg
    with pytest.raises(ConfigError, match="8, 16, 32"):
        load_config("r50", {"model.pixel_decoder.bottleneck_stride": 4})


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ({"model.decoder.num_queries": "many"}, "must be an integer"),
        ({"model.decoder.num_queries": 0}, "out of range"),
        ({"model.pruning.enabled": "yes"}, "true or false"),
        ({"model.pruning.low": 0.5, "model.pruning.high": 0.1}, "must not exceed"),
        ({"model.hidden_dim": 200}, "divisible|multiple of 32"),
        ({"model.decoder": 3}, "must be a mapping"),
        ({"model.pixel_mean": [0.5, 0.5]}, "3 values"),
    ],
)
def test_bad_values(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config("r50", override)


def test_yaml_file_with_base_and_overrides(tmp_path):
    path = tmp_path / "robot.yaml"
    path.write_text("base: mini_m\nmodel:\n  decoder: {num_queries: 100}\n")
    cfg = load_config(path)
    assert cfg.name == "robot"
    assert cfg.model.backbone.name == "mobilenetv4_conv_medium"
    assert cfg.model.decoder.num_queries == 100
    cfg2 = apply_overrides(cfg, {"model": {"decoder": {"num_layers": 3}}})
    assert cfg2.model.decoder.num_layers == 3 and cfg2.model.decoder.num_queries == 100
    assert cfg.model.decoder.num_layers == 9  # the original is untouched


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="neither a zoo name nor a YAML file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"base: {loop}\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        load_config(loop)
    unknown_top = tmp_path / "top.yaml"
    unknown_top.write_text("modle: {}\n")
    with pytest.raises(ConfigError, match="unknown config key 'modle'"):
        load_config(unknown_top)


def test_parse_set_args():
    assert parse_set_args(["a.b=3", "c=true", "d=[1, 2]"]) == {"a.b": 3, "c": True, "d": [1, 2]}
    assert parse_set_args(["lr=5e-4", "name=abc"]) == {"lr": 5e-4, "name": "abc"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set_args(["novalue"])


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "1e999"])
def test_nan_and_inf_are_refused_by_bounded_fields_from_set(text):
    # NaN compares false with both bounds of a range check: it must be refused on its own
    with pytest.raises(ConfigError, match=r"train\.lr=.* not a finite number.*0\.0 <= train\.lr"):
        load_config("shapes_tiny", parse_set_args([f"train.lr={text}"]))
    with pytest.raises(ConfigError, match=r"model\.classifier\.prior_prob=.* not a finite"):
        load_config("r50", parse_set_args([f"model.classifier.prior_prob={text}"]))


@pytest.mark.parametrize("text", [".nan", ".NaN", ".inf", "-.inf"])
def test_nan_and_inf_are_refused_in_a_yaml_file(text, tmp_path):
    path = tmp_path / "nan.yaml"
    path.write_text(f"base: shapes_tiny\ntrain:\n  lr: {text}\n")
    with pytest.raises(ConfigError, match=r"train\.lr=.* not a finite number.*0\.0 <= train\.lr"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"model\.pixel_std\[1\]=.* not a finite number"):
        load_config("r50", parse_set_args([f"model.pixel_std=[0.2, {text}, 0.2]"]))


def test_cli_config_refuses_nan_with_the_key_and_the_range(capsys):
    from mobius_core.cli import main

    assert main(["config", "shapes_tiny", "--set", "train.lr=nan"]) == 2
    err = capsys.readouterr().err
    assert "train.lr=nan" in err and "0.0 <= train.lr <= 1.0" in err


def _bounded_float_keys(obj, prefix=""):
    import dataclasses
    import typing

    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _bounded_float_keys(value, f"{prefix}{f.name}.")
        elif hints[f.name] is float and f.metadata.get("min") is not None:
            yield f"{prefix}{f.name}"


def test_every_bounded_float_field_refuses_nan():
    keys = list(_bounded_float_keys(load_config("r50")))
    assert len(keys) >= 28 and "train.max_minutes" in keys
    for key in keys:
        with pytest.raises(ConfigError, match=rf"{key}=nan is not a finite number"):
            load_config("r50", {key: float("nan")})
