"""Package files: launch file, package.xml, CMake install rules, the installed executable.
launch/launch_ros are not installable here, so the launch file is checked by parsing."""

from __future__ import annotations

import ast
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, "id", getattr(n.func, "attr", None)) == name]  # fmt: skip


def test_launch_file_declares_its_arguments_and_starts_the_installed_executable():
    src = (ROOT / "launch" / "segment.launch.py").read_text()
    tree = ast.parse(src)
    declared = {c.args[0].value for c in _calls(tree, "DeclareLaunchArgument")}
    assert declared == {"params_file", "namespace", "image", "backend", "model", "target_fps",
                        "use_rviz"}  # fmt: skip
    module = {t.id: a.value.value for a in tree.body if isinstance(a, ast.Assign)
              for t in a.targets if isinstance(a.value, ast.Constant)}  # fmt: skip
    assert module["PACKAGE"] == "mobius_ros" and module["EXECUTABLE"] == "mobius_node"
    assert "segment.yaml" in src and "mobius.rviz" in src
    for f in ("config/segment.yaml", "config/mobius.rviz", "config/fastdds_local.xml"):
        assert (ROOT / f).is_file()


def test_package_xml_and_cmake_agree():
    pkg = ET.parse(ROOT / "package.xml").getroot()
    assert pkg.get("format") == "3" and pkg.findtext("name") == "mobius_ros"
    assert pkg.find("export/build_type").text == "ament_cmake"
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for msg in sorted((ROOT / "msg").glob("*.msg")) + sorted((ROOT / "srv").glob("*.srv")):
        assert f'"{msg.parent.name}/{msg.name}"' in cmake
    assert "rosidl_generate_interfaces" in cmake and "install(DIRECTORY launch config" in cmake
    assert cmake.index("rosidl_generate_interfaces") < cmake.index("install(DIRECTORY mobius_ros/")
    assert "lib/${PROJECT_NAME}" in cmake


def test_installed_executable_runs_the_node_entry_point():
    exe = Path(sys.prefix) / "lib" / "mobius_ros" / "mobius_node"
    if not exe.is_file():
        pytest.skip(f"{exe} not installed; run `make ros`")
    assert os.access(exe, os.X_OK)
    text = exe.read_text()
    assert text.startswith("#!") and "mobius_ros.cli" in text and '"node"' in text
    share = Path(sys.prefix) / "share" / "mobius_ros"
    assert (share / "launch" / "segment.launch.py").is_file()
    assert (share / "config" / "segment.yaml").is_file()
