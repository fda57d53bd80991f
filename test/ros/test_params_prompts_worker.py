"""Parameters, prompt state and the latest-frame worker, without ROS."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mobius_ros import params as P
from mobius_ros.prompts import PromptState
from mobius_ros.worker import LatestFrameWorker

ROOT = Path(__file__).resolve().parents[2]


def test_config_file_holds_the_dataclass_defaults():
    values = P.load_params_file(ROOT / "config" / "segment.yaml")
    defaults = P.NodeParams().as_dict()
    assert {k: defaults[k] for k in values} == values
    missing = set(defaults) - set(values)
    text = (ROOT / "config" / "segment.yaml").read_text()
    assert all(f"# {k}:" in text for k in missing)  # documented even where ROS can't hold it


def test_unknown_keys_name_the_nearest_one(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("/**:\n  ros__parameters:\n    target_fsp: 10.0\n")
    with pytest.raises(ValueError, match="did you mean 'target_fps'"):
        P.load_params_file(f)
    f.write_text("just text")
    with pytest.raises(ValueError, match="not a ROS 2 parameter file"):
        P.load_params_file(f)


@pytest.mark.parametrize(("name", "value"), [
    ("backend", "tensorflow"), ("mode", "panoptic"), ("score_threshold", 1.5),
    ("target_fps", -1.0), ("max_instances", 0), ("prune_low_range", [0.5, 0.1]),
    ("min_keep_range", [1, 10]), ("publish_overlay", "yes"), ("input_size", 7),
    ("target_fps", float("nan")), ("max_instances", 2.5),
])  # fmt: skip
def test_bad_values_are_rejected_with_the_limit(name, value):
    with pytest.raises(ValueError, match=name):
        P.check(name, value)


def test_numbers_convert_and_restart_only_parameters_are_listed():
    assert P.check("target_fps", 10) == 10.0
    assert P.check("prompts", ("a", "b")) == ["a", "b"]
    assert {"backend", "model", "input_size"} <= P.RESTART_ONLY
    assert "target_fps" not in P.RESTART_ONLY and "prompts" not in P.RESTART_ONLY


class FakeSegmenter:
    """Segmenter's prompt interface: encodes by uppercasing, can be told to fail."""

    def __init__(self):
        self._prompts, self.fail = (), False

    def set_prompts(self, prompts, task):
        if self.fail:
            raise RuntimeError("text encoder crashed")
        time.sleep(0.001)
        self._prompts = tuple(prompts)
        return 0.001

    @property
    def prompts(self):
        return self._prompts


def test_prompt_state_keeps_the_old_prompts_on_any_failure():
    seg = FakeSegmenter()
    state = PromptState(seg, max_prompts=3, max_chars=10)
    r = state.set(["mug", "cup"], "category")
    assert r.success and "2 prompts" in r.message and r.encode_ms > 0
    for prompts, mode, words in [
        ([], "", "empty"), (["a", "a"], "", "duplicate"), (["a", " "], "", "empty"),
        (["a", "b", "c", "d"], "", "limit"), (["x" * 11], "", "characters"),
        (["ok"], "panoptic", "unknown mode"),
    ]:  # fmt: skip
        r = state.set(prompts, mode)
        assert not r.success and words in r.message
        assert state.prompts == ("mug", "cup") and state.mode == "category"
    seg.fail = True
    r = state.set(["bowl"], "referring")
    assert not r.success and "old prompts stay" in r.message
    assert state.prompts == ("mug", "cup") and state.mode == "category"
    seg.fail = False
    assert state.set(["red mug"], "referring").success and state.mode == "referring"
    assert state.set([" bowl "]).success and state.prompts == ("bowl",)  # "" keeps the mode
    assert state.mode == "referring" and state.version == 3


def test_worker_takes_only_the_newest_frame_and_survives_errors():
    seen, errors = [], []
    gate, taken = threading.Event(), threading.Event()

    def process(frame):
        if frame == "bad":
            raise ValueError("bad frame")
        taken.set()
        gate.wait(60)
        seen.append(frame)

    w = LatestFrameWorker(process, errors.append)
    try:
        w.submit("bad")
        deadline = time.monotonic() + 60  # generous limits, for waiting on the thread
        while not errors and time.monotonic() < deadline:
            time.sleep(0.01)
        w.submit(0)
        assert taken.wait(60)  # frame 0 is in process(), held at the gate
        for i in range(1, 50):
            w.submit(i)  # each replaces the pending one
        gate.set()
        deadline = time.time() + 5
        while seen[-1:] != [49] and time.time() < deadline:
            time.sleep(0.01)
        assert seen == [0, 49]
        assert len(errors) == 1 and w.stats.errors == 1
        assert w.stats.dropped == 48 and w.stats.received == 51
    finally:
        w.close()


def test_worker_min_period_throttles_the_start_rate():
    starts = []
    # each frame's start as the worker took it, the time its throttle counts from
    w = LatestFrameWorker(lambda f: starts.append(w._last_start))
    w.min_period_s = 0.05
    try:
        deadline = time.monotonic() + 60  # a generous limit, for waiting on the thread
        while len(starts) < 6 and time.monotonic() < deadline:
            w.submit(1)  # frames every 5 ms: 10x the rate allowed
            time.sleep(0.005)
    finally:
        w.close()
    gaps = np.diff(starts)
    assert len(starts) >= 6
    assert gaps.min() >= 0.05 - 1e-9  # never two starts closer than min_period_s


def test_one_table_describes_and_checks_every_parameter():
    assert set(P.SPECS) == set(P.NAMES)
    assert all(s.description for s in P.SPECS.values())
    for name, spec in P.SPECS.items():  # every default passes its own checks
        assert P.check(name, getattr(P.NodeParams(), name)) == getattr(P.NodeParams(), name)
        if spec.lo is not None and P.kind(name) in (int, float):
            with pytest.raises(ValueError, match=name):
                P.check(name, P.kind(name)(spec.hi) + 1)
        if spec.choices:
            with pytest.raises(ValueError, match="one of"):
                P.check(name, "nonsense")
    assert P.check("budget_sizes", None) == []  # `[]` in a ROS parameter file reads as unset
    assert P.check("prune_low_range", [0, 0.3]) == [0.0, 0.3]
    for name, bad in [("budget_sizes", [320, 16]), ("budget_sizes", [2.5]),
                      ("prune_high_range", [float("nan"), 0.5]), ("score_threshold", 1.0),
                      ("track_iou_gate", 0.0), ("transport", "theora")]:  # fmt: skip
        with pytest.raises(ValueError, match=name):
            P.check(name, bad)
    assert "in [0, 1)" in P.SPECS["score_threshold"].constraints()
    assert P.RESTART_ONLY == {n for n, s in P.SPECS.items() if s.read_only}


def test_a_ros2_param_dump_file_loads(tmp_path):
    f = tmp_path / "dump.yaml"
    f.write_text(
        "/mobius:\n  ros__parameters:\n    budget_sizes: []\n    target_fps: 5.0\n"
        "    use_sim_time: false\n    start_type_description_service: true\n"
        "    qos_overrides:\n      /parameter_events:\n        publisher:\n          depth: 1000\n"
    )
    values = P.load_params_file(f)
    assert values == {"budget_sizes": [], "target_fps": 5.0}
    assert P.from_mapping(values).target_fps == 5.0
