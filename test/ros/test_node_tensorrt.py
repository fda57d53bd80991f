"""The node with ``backend:=tensorrt`` on an engine from ``mobius build-engine``, against the
TensorRT test double (``test/trt_double`` on the node's PYTHONPATH): 640x480 and 1280x720
camera frames give the instances onnxruntime gives, for other prompt counts and with
pruning on and off. Local traffic only, a ROS_DOMAIN_ID of its own."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from mobius_core.cli import main
from mobius_core.data.synthetic import SEEN_CATEGORIES, render_scene

pytestmark = pytest.mark.ros

DOMAIN = 90 + os.getpid() % 10  # test_node & co. use 20..79, test_torch_free 80..89
PROMPTS = ["red circle", "yellow triangle", "green star", "orange hexagon"]
ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "trt_double_activate", Path(__file__).resolve().parents[1] / "trt_double" / "activate.py"
)
double = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(double)


def _ros_or_skip():
    from mobius_ros.localenv import local_ros_env

    os.environ.update(local_ros_env(DOMAIN))
    try:
        import rclpy  # noqa: F401
        from mobius_ros.msg import InstanceArray  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"rclpy or the built interfaces are missing ({exc}); run `make ros`")


@pytest.fixture(scope="module")
def ros(tmp_path_factory):
    _ros_or_skip()
    import rclpy

    from mobius_ros.harness import Harness, ros_list, start_node, stop

    work = tmp_path_factory.mktemp("node_trt")
    graph = work / "m.onnx"
    assert main(["export", "shapes_tiny", "--dynamic-hw", "--out", str(graph)]) == 0
    with double.active():
        assert main(["build-engine", str(graph), "--cache-dir", str(work)]) == 0
    (engine,) = work.glob("*.engine")
    log = work / "node.log"
    params = {"backend": "tensorrt", "model": str(engine), "prompts": ros_list(PROMPTS),
              "score_threshold": "0.2", "threads": "1", "tracking": "false"}  # fmt: skip
    proc = start_node(params, DOMAIN, log, env=double.env(), root=ROOT)  # this checkout's node
    rclpy.init()
    client = Harness("mobius_trt_client")
    try:
        if not client.wait_for_node(180):
            pytest.fail(f"the node did not come up:\n{log.read_text()[-3000:]}")
        first = render_scene(np.random.default_rng(0), SEEN_CATEGORIES, size=(480, 640))[0]
        if client.send(client.image(first), timeout=180) is None:
            pytest.fail(f"the node never segmented a frame:\n{log.read_text()[-3000:]}")
        client.graph, client.log = graph, log
        yield client
    finally:
        client.close()
        rclpy.shutdown()
        stop(proc)


def _reference(graph: Path, prompts: list[str], prune: bool):
    from mobius_core.inference.factory import SegmenterSpec, build_segmenter

    seg = build_segmenter(SegmenterSpec(model=str(graph), prune=prune, score_threshold=0.2))
    seg.set_prompts(prompts)
    return seg


def test_camera_frames_give_the_instances_onnxruntime_gives(ros):
    seen = 0
    for prune in (True, False):
        if not prune:
            assert ros.set_param("pruning", False).successful
        for prompts in (PROMPTS, PROMPTS[:2] + ["purple hexagon", "blue square", "black cross"]):
            assert ros.set_prompts(prompts, "category").success
            ref = _reference(ros.graph, prompts, prune)
            for i, hw in enumerate(((480, 640), (720, 1280))):
                frame = render_scene(np.random.default_rng(i + 1), SEEN_CATEGORIES, size=hw)[0]
                out = ros.send(ros.image(frame), timeout=60)
                assert out is not None, ros.log.read_text()[-3000:]
                assert list(out.prompts) == prompts
                (want,) = ref([frame])
                got = sorted((inst.label, tuple(inst.box)) for inst in out.instances)
                expect = sorted(zip(want.label_texts, map(tuple, want.boxes.tolist())))
                assert [g[0] for g in got] == [e[0] for e in expect], (hw, prompts, prune)
                for (_, a), (_, b) in zip(got, expect):
                    np.testing.assert_allclose(a, b, rtol=1e-3, atol=0.5)
                seen += len(got)
    assert ros.set_param("pruning", True).successful
    assert seen > 0
    log = ros.log.read_text()
    assert "model: tensorrt" in log and "Traceback" not in log
