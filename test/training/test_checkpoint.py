"""Checkpoint integrity: a content hash checked on load, and errors that name the file."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from mobius_core.training import checkpoint
from mobius_core.training.checkpoint import (
    HASH_KEY,
    CheckpointError,
    add_content_hash,
    load_checkpoint,
    same_content,
    save_checkpoint,
    shipped_checkpoint,
)


def _state():
    g = torch.Generator().manual_seed(0)
    return {
        "model": {
            "big": torch.randn(256, 1024, generator=g),  # 1 MB of float32
            "half": torch.randn(8, 8, generator=g).half(),
            "bf16": torch.randn(5, generator=g).bfloat16(),
            "mask": torch.rand(7, generator=g) > 0.5,
            "count": torch.tensor(3),
            "empty": torch.zeros(0, 4),
            "nan": torch.tensor([float("nan"), 1.0]),
        },
        "optimizer": {"state": {0: {"step": torch.tensor(2.0)}}, "param_groups": [
            {"lr": 1e-3, "betas": (0.9, 0.999), "params": [0], "foreach": None}]},
        "step": 7,
        "config": {"train": {"lr": 1e-3, "short_sides": [224, 256]}},
        "prompts": ["red circle"],
    }  # fmt: skip


def _zero_inside(path, tensor, size=65536):
    """Zero ``size`` bytes of ``tensor``'s data where it lies inside the file ``path``."""
    data = bytearray(path.read_bytes())
    storage = torch.empty(0, dtype=torch.uint8).set_(tensor.untyped_storage())
    raw = storage.numpy().tobytes()  # the bytes as stored, whatever the tensor's layout
    at = data.find(raw[:4096])
    assert at >= 0 and len(raw) > 2 * size
    data[at + size : at + 2 * size] = bytes(size)
    path.write_bytes(bytes(data))


def test_zeroed_tensor_data_is_refused_with_the_file_and_the_fix(tmp_path):
    state = _state()
    path = save_checkpoint(tmp_path / "ck.pt", state)
    assert same_content(load_checkpoint(path), state)
    _zero_inside(path, state["model"]["big"])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and "damaged" in msg and "SHA-256" in msg
    assert "copy it again" in msg and "earlier checkpoint" in msg


def test_a_changed_value_outside_the_tensors_is_refused_too(tmp_path):
    path = save_checkpoint(tmp_path / "ck.pt", _state())
    state = torch.load(path, weights_only=True)
    state["step"] = 8  # the recorded hash was for step 7
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(path)


def test_save_records_the_hash_atomically_and_leaves_the_state_alone(tmp_path):
    state = _state()
    path = save_checkpoint(tmp_path / "ck.pt", state)
    assert HASH_KEY not in state
    raw = torch.load(path, weights_only=True)
    assert raw[HASH_KEY] == checkpoint.content_sha256(state)
    assert HASH_KEY not in load_checkpoint(path)  # the loaded state is the saved one
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary left behind


def test_a_checkpoint_without_a_hash_loads_with_one_warning(tmp_path, caplog):
    path = tmp_path / "old.pt"
    torch.save(_state(), path)  # as checkpoints were written before they carried a hash
    with caplog.at_level(logging.WARNING, logger=checkpoint.log.name):
        first = load_checkpoint(path)
        load_checkpoint(path)
        load_checkpoint(str(path))
    warnings = [r for r in caplog.records if "no content hash" in r.getMessage()]
    assert len(warnings) == 1
    assert str(path) in warnings[0].getMessage()
    assert "python -m mobius_core.training.checkpoint" in warnings[0].getMessage()
    assert same_content(first, _state())


def test_adding_a_hash_keeps_every_tensor_bit_for_bit(tmp_path, caplog):
    path = tmp_path / "old.pt"
    torch.save(_state(), path)
    assert add_content_hash(path) is True
    assert add_content_hash(path) is False  # has one, checked
    assert torch.load(path, weights_only=True)[HASH_KEY]
    with caplog.at_level(logging.WARNING, logger=checkpoint.log.name):
        again = load_checkpoint(path)
    assert "no content hash" not in caplog.text
    assert same_content(again, _state())
    assert not same_content(again, {**_state(), "step": 8})
    nan_moved = _state()
    nan_moved["model"]["nan"] = torch.tensor([1.0, float("nan")])
    assert not same_content(again, nan_moved)
    assert checkpoint.main([str(path)]) == 0


def test_the_shipped_weights_carry_a_valid_hash(caplog):
    path = shipped_checkpoint("shapes_tiny")
    assert path is not None
    assert len(torch.load(path, weights_only=True)[HASH_KEY]) == 64
    with caplog.at_level(logging.WARNING, logger=checkpoint.log.name):
        state = load_checkpoint(path)
    assert "no content hash" not in caplog.text
    assert len(state["model"]) > 100


def test_damaged_shipped_weights_say_to_reinstall(tmp_path, monkeypatch):
    copy = tmp_path / "shapes_tiny.pt"
    copy.write_bytes(shipped_checkpoint("shapes_tiny").read_bytes())
    tensor = max(torch.load(copy, weights_only=True)["model"].values(), key=torch.Tensor.numel)
    _zero_inside(copy, tensor, size=4096)
    monkeypatch.setattr(checkpoint, "WEIGHTS_DIR", tmp_path.resolve())
    with pytest.raises(CheckpointError, match=r"damaged.*reinstall the package"):
        load_checkpoint(copy)


def test_an_empty_file_says_empty_and_names_the_file(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and "empty (0 bytes)" in msg and "truncated" in msg
    assert "()" not in msg and "copy it again" in msg


def test_a_truncated_file_names_the_file(tmp_path):
    path = save_checkpoint(tmp_path / "ck.pt", _state())
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"ck\.pt is corrupt or truncated"):
        load_checkpoint(path)


class _RunsCode:
    def __reduce__(self):
        return (os.getpid, ())  # harmless, but code all the same


class Unlisted:
    """A class of this test module: not a tensor or a plain value."""


@pytest.mark.parametrize("payload", [_RunsCode(), Unlisted()], ids=["reduce", "object"])
def test_pickled_code_is_refused_without_advice_to_load_it_unsafely(tmp_path, payload):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(2)}, "extra": payload}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and "refused" in msg
    assert "code or Python objects other than tensors" in msg
    assert "weights_only" not in msg and "trust" not in msg and "safe_globals" not in msg
    # nor in the traceback: torch's own message, with that advice, is not chained
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_a_release_carries_a_content_hash(tmp_path, capsys):
    from mobius_core.cli import main

    full = save_checkpoint(tmp_path / "full.pt", _state())
    assert main(["release", str(full), "--out", str(tmp_path / "rel.pt"), "--half"]) == 0
    raw = torch.load(tmp_path / "rel.pt", weights_only=True)
    assert raw[HASH_KEY] == checkpoint.content_sha256(raw)
    assert raw["model"]["big"].dtype == torch.float16
    assert "rel.pt: 0.5 MB, 7 tensors" in capsys.readouterr().out
