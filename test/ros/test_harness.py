"""start_node's two modes: ``source`` runs the checkout's code (python -m from the
repository root) whichever copy of mobius_ros the caller imported, the installed copy that
``make ros`` put into site-packages included; otherwise the installed node executable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mobius_ros import harness
from mobius_ros.harness import NODE_EXE, node_command, source_root, start_node

ROOT = Path(__file__).resolve().parents[2]


def test_source_mode_runs_the_checkout_from_its_root():
    argv, cwd = node_command(True, ROOT)
    assert argv == [sys.executable, "-m", "mobius_ros.cli", "node"]
    assert cwd == ROOT


def test_the_checkout_is_found_when_the_installed_copy_is_imported(tmp_path):
    """From a folder outside the checkout the installed copy (site-packages, after `make ros`)
    is the one imported; the folder above it is no source tree, the checkout still is found."""
    code = "import mobius_ros.harness as h; print(h.__file__); print(h.source_root())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, check=True).stdout.splitlines()  # fmt: skip
    assert Path(out[1]) == ROOT, out
    if "site-packages" in out[0]:  # the case the harness once got wrong
        assert not harness.is_checkout(Path(out[0]).parents[1])
    assert source_root() == ROOT


def test_source_mode_puts_the_given_checkout_first(tmp_path):
    """The node process imports mobius_ros from ``root`` (a stand-in checkout whose cli
    reports where it was imported from), not from the caller's copy."""
    fake = tmp_path / "checkout"
    (fake / "mobius_ros").mkdir(parents=True)
    (fake / "package.xml").write_text("<package/>\n")
    (fake / "mobius_ros" / "__init__.py").write_text("")
    (fake / "mobius_ros" / "cli.py").write_text("import sys\nprint(__file__, sys.argv[1:])\n")
    log = tmp_path / "node.log"
    proc = start_node({"prompts": "['a']"}, 5, log, source=True, root=fake, cwd=tmp_path)
    assert proc.wait(60) == 0
    text = log.read_text()
    assert str(fake / "mobius_ros" / "cli.py") in text, text
    assert "'node', '--ros-args', '-p', \"prompts:=['a']\"" in text, text


def test_source_mode_refuses_a_folder_that_is_no_checkout(tmp_path):
    with pytest.raises(FileNotFoundError, match="no source checkout"):
        node_command(True, tmp_path)


def test_installed_mode_runs_the_installed_executable():
    if not NODE_EXE.is_file():
        with pytest.raises(FileNotFoundError, match="make ros"):
            node_command(False)
        return
    argv, cwd = node_command(False)
    assert argv == [str(NODE_EXE)] and cwd is None
    assert NODE_EXE.read_text().startswith("#!")
