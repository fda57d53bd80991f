"""The default node (onnxruntime, the shipped model) runs without torch once its bundle is
cached: the node runs in a process where ``import torch`` and ``import timm`` fail (a
PYTHONPATH folder whose ``torch`` and ``timm`` packages raise ImportError and leave a mark),
segments a 640x480 frame, and has no libtorch mapped. With a cold cache and no torch it
refuses with the fix. The bundle is built once here, in this process (which has torch)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mobius_ros.harness import Harness, ros_list, start_node, stop
from mobius_ros.localenv import local_ros_env

pytestmark = pytest.mark.ros

DOMAIN = 80 + os.getpid() % 10  # test_node & co. use 20..79
PROMPTS = ["red circle", "yellow triangle", "green star", "orange hexagon"]  # as test_node
BLOCKED = ("torch", "timm")
NODE_EXE = Path(sys.prefix) / "lib" / "mobius_ros" / "mobius_node"  # installed by `make ros`
BLOCKER = """import os
with open(os.path.join(os.environ["MOBIUS_BLOCK_MARKS"], __name__), "a") as f:
    f.write("imported\\n")
raise ImportError("{name} is blocked by test_torch_free")
"""


def _blocker(folder: Path) -> tuple[Path, Path]:
    """(a PYTHONPATH folder where torch and timm cannot be imported, the folder where an
    attempt to import them leaves a file)."""
    marks = folder / "marks"
    marks.mkdir(parents=True)
    for name in BLOCKED:
        (folder / "path" / name).mkdir(parents=True)
        (folder / "path" / name / "__init__.py").write_text(BLOCKER.format(name=name))
    return folder / "path", marks


def _env(folder: Path, cache: Path) -> tuple[dict[str, str], Path]:
    path, marks = _blocker(folder)
    env = dict(os.environ, MOBIUS_CACHE=str(cache), MOBIUS_BLOCK_MARKS=str(marks))
    env["PYTHONPATH"] = os.pathsep.join([str(path), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env, marks


def _ros_or_skip():
    os.environ.update(local_ros_env(DOMAIN))
    try:
        import rclpy  # noqa: F401
        from mobius_ros.msg import InstanceArray  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"rclpy or the built interfaces are missing ({exc}); run `make ros`")
    if not NODE_EXE.is_file():
        pytest.skip(f"{NODE_EXE} is not installed; run `make ros`")


def _start(params: dict[str, str], log: Path, env: dict[str, str]):
    """The installed node executable (what `ros2 run` and the launch file start), which
    imports the installed copy with the blocker first on sys.path."""
    return start_node(params, DOMAIN, log, source=False, env=env)


def mapped(pid: int, *names: str) -> list[str]:
    """The files mapped into process ``pid`` whose path holds one of ``names``."""
    files = {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
             if len(line.split()) >= 6}  # fmt: skip
    return sorted(f for f in files if any(n in f for n in names))


def vm(pid: int, key: str) -> float:
    """VmRSS / VmHWM of ``pid`` in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key}")


@pytest.fixture(scope="module")
def warm_cache():
    """The shipped model's bundle in this session's cache (exported here, with torch)."""
    from mobius_core.bundle import shipped_bundle
    from mobius_core.config import load_config

    bundle = shipped_bundle(load_config("shapes_tiny"))
    assert bundle.image.is_file() and bundle.text is not None and bundle.text.is_file()
    return Path(os.environ["MOBIUS_CACHE"])


def test_bundle_lookup_is_torch_free_with_a_warm_cache(warm_cache, tmp_path):
    """In-process form of the node's model load, in a subprocess without torch."""
    env, marks = _env(tmp_path, warm_cache)
    code = (
        "import sys, numpy as np\n"
        "from mobius_ros.model import load_model\n"
        "from mobius_ros.params import NodeParams\n"
        "m = load_model(NodeParams())\n"
        "m.segmenter.set_prompts(['red circle'])\n"
        "m.segmenter([np.zeros((480, 640, 3), np.uint8)])\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'timm', 'onnx'))\n"
        "print('visual', m.visual, 'heavy', bad)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert not list(marks.iterdir()), f"tried to import {[p.name for p in marks.iterdir()]}"
    # the shipped checkpoint has a visual prompter: the manifest said so without torch
    assert "visual True" in r.stdout and "'torch" not in r.stdout and "'timm" not in r.stdout


def test_default_node_without_torch_segments_a_frame_with_a_warm_cache(warm_cache, tmp_path):
    _ros_or_skip()
    import rclpy

    from mobius_ros.camera import demo_frames

    env, marks = _env(tmp_path, warm_cache)
    log = tmp_path / "node.log"
    # the default node; prompts and threshold as test_node's, so the frames have instances
    params = {"prompts": ros_list(PROMPTS), "score_threshold": "0.2"}
    proc = _start(params, log, env)
    rclpy.init()
    client = Harness("mobius_torch_free_client")
    try:
        assert client.wait_for_node(180), f"the node did not come up:\n{log.read_text()[-3000:]}"
        frames = demo_frames(4, (480, 640))
        out = client.send(client.image(frames[0]), timeout=180)
        assert out is not None, f"no InstanceArray:\n{log.read_text()[-3000:]}"
        assert type(out).__name__ == "InstanceArray"
        found = [len(client.send(client.image(f)).instances) for f in frames]
        assert sum(found) > 0  # the model runs, not only the node
        assert proc.poll() is None
        assert not list(marks.iterdir()), f"tried to import {[p.name for p in marks.iterdir()]}"
        assert mapped(proc.pid, "libtorch", "torch/", "timm") == []
        assert vm(proc.pid, "VmHWM") < 900  # with torch it was ~1300 MB
    finally:
        client.close()
        rclpy.shutdown()
        stop(proc)


def test_cold_cache_without_torch_is_refused_with_the_fix(tmp_path):
    """Nothing cached and torch missing: configure fails with a message naming the fixes."""
    _ros_or_skip()
    env, marks = _env(tmp_path, tmp_path / "empty_cache")
    log = tmp_path / "node.log"
    proc = _start({}, log, env)
    try:
        end = time.monotonic() + 180
        while time.monotonic() < end and "configure failed" not in log.read_text():
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        text = log.read_text()
        assert "configure failed" in text, text[-3000:]
        assert "needs torch" in text and "python -m mobius_core.bundle" in text, text[-3000:]
        assert "Traceback" not in text
        assert "torch" in [p.name for p in marks.iterdir()]  # it tried, and said what to do
    finally:
        stop(proc)


def test_the_bundle_command_prints_its_files(warm_cache):
    r = subprocess.run([sys.executable, "-m", "mobius_core.bundle"], capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "image graph:" in r.stdout and "visual prompter: yes" in r.stdout
    assert str(warm_cache / "onnx") in r.stdout and r.stdout.count(".onnx") >= 2
