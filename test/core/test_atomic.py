"""Atomic writes leave either the old file or the new one, never a partial one."""

from __future__ import annotations

import os

import pytest

from mobius_core.atomic import atomic_write_bytes


def test_write_replace_and_no_leftovers(tmp_path):
    path = atomic_write_bytes(tmp_path / "sub" / "f.bin", b"one")
    assert path.read_bytes() == b"one"
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert os.listdir(path.parent) == ["f.bin"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = atomic_write_bytes(tmp_path / "f.bin", b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]
