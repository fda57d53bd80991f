"""The node's parameter declaration without the model: descriptors from the one table, start-up
values from a params file (empty lists, integers for numbers, unknown names)."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.ros

DOMAIN = 20 + (os.getpid() + 15) % 60


@pytest.fixture
def rclpy_ctx():
    from mobius_ros.localenv import local_ros_env

    os.environ.update(local_ros_env(DOMAIN))
    try:
        import rclpy
        from rclpy.context import Context

        from mobius_ros.node import declare_node_parameters, descriptor  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"rclpy or the built interfaces are missing ({exc}); run `make ros`")
    contexts = []

    def make(args):
        ctx = Context()
        rclpy.init(args=["test", "--ros-args", *args], context=ctx)
        contexts.append(ctx)
        return ctx

    yield make
    for ctx in contexts:
        ctx.try_shutdown()


def _node(make, tmp_path, body: str):
    from rclpy.node import Node

    f = tmp_path / "p.yaml"
    f.write_text("/**:\n  ros__parameters:\n" + body)
    return Node("mobius", context=make(["--params-file", str(f)]))


def test_descriptors_carry_description_range_and_read_only():
    pytest.importorskip("rclpy")
    from rcl_interfaces.msg import ParameterType

    from mobius_ros.node import descriptor

    d = descriptor("target_fps")
    assert d.type == ParameterType.PARAMETER_DOUBLE and "frame-rate" in d.description
    (r,) = d.floating_point_range
    assert (r.from_value, r.to_value) == (0.0, 1000.0)
    (r,) = descriptor("max_instances").integer_range
    assert (r.from_value, r.to_value, r.step) == (1, 1000, 1)
    assert (
        descriptor("backend").read_only
        and "onnxruntime" in descriptor("backend").additional_constraints
    )
    assert not descriptor("prompts").read_only and descriptor("prompts").dynamic_typing


def test_a_params_file_with_empty_lists_and_integers_declares(rclpy_ctx, tmp_path):
    from mobius_ros.node import declare_node_parameters

    node = _node(rclpy_ctx, tmp_path, "    budget_sizes: []\n    target_fps: 5\n"
                 "    mode: referring\n    use_sim_time: false\n")  # fmt: skip
    try:
        p = declare_node_parameters(node)
        assert p.budget_sizes == [] and p.target_fps == 5.0 and p.mode == "referring"
        assert node.get_parameter("target_fps").value == 5.0
        assert node.describe_parameter("target_fps").floating_point_range[0].to_value == 1000.0
    finally:
        node.destroy_node()


@pytest.mark.parametrize(("body", "words"), [
    ("    target_fsp: 5.0\n", "did you mean 'target_fps'"),
    ("    target_fps: .nan\n", "NaN"),
    ("    score_threshold: 2.0\n", "score_threshold"),
    ("    prompts: [1, 2]\n", "prompts"),
])  # fmt: skip
def test_bad_start_up_values_name_the_parameter(rclpy_ctx, tmp_path, body, words):
    from mobius_ros.node import declare_node_parameters

    node = _node(rclpy_ctx, tmp_path, body)
    try:
        with pytest.raises(ValueError, match=words):
            declare_node_parameters(node)
    finally:
        node.destroy_node()


def test_an_unconfigured_node_resolves_its_topic_and_answers_why(rclpy_ctx):
    """Before configure (autostart false, as a lifecycle manager starts it): the image topic
    follows `-r image:=...` for both transports, set_prompts says the node is not
    configured, and parameter changes are checked without a model."""
    from mobius_ros.srv import SetPrompts
    from rclpy.parameter import Parameter

    from mobius_ros.node import SegmentationNode

    ctx = rclpy_ctx(["-r", "image:=/cam/x", "-p", "transport:=compressed", "-p",
                     "autostart:=false"])  # fmt: skip
    node = SegmentationNode(context=ctx)
    try:
        assert node.model is None and node._frame_topic() == "/cam/x/compressed"
        node.p.transport = "raw"
        assert node._frame_topic() == "/cam/x"
        reply = node._on_set_prompts(SetPrompts.Request(prompts=["mug"]), SetPrompts.Response())
        assert not reply.success and "not configured" in reply.message
        bad = node.set_parameters([Parameter("prompts", value=["a", "a"])])[0]
        assert not bad.successful and "duplicate" in bad.reason
        ok = node.set_parameters([Parameter("prompts", value=["mug", "cup"])])[0]
        assert ok.successful and node.p.prompts == ["mug", "cup"]
        assert node.set_parameters([Parameter("use_sim_time", value=True)])[0].successful
    finally:
        node.destroy_node()
