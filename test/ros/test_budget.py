"""The frame-rate budget controller on simulated latency traces (no ROS, no clock)."""

from __future__ import annotations

import numpy as np
import pytest

from mobius_ros.budget import BudgetController, Level, build_ladder

SIZES = [320, 288, 256, 224, 192, 160]


def latency_of(level: Level, base_s: float = 0.1, prune_gain: float = 0.04) -> float:
    """A plausible cost model: pixels times a pruning discount."""
    lo = 0.0 if level.prune is None else level.prune[0]
    return (
        base_s * (level.size / 320) ** 2 * (1 - prune_gain - lo * 0.1) ** (level.prune is not None)
    )


def simulate(ctrl, frames, load=lambda i: 1.0, noise=0.05, seed=0):
    """Feed ``frames`` frames; returns (per-frame level index, per-frame latency)."""
    rng = np.random.default_rng(seed)
    now, idx, lat = 0.0, [], []
    for i in range(frames):
        t = latency_of(ctrl.level) * load(i) * (1 + noise * rng.standard_normal())
        now += max(t, 1 / ctrl.target_fps if ctrl.target_fps else 0)  # throttled to the target
        ctrl.update(t, now)
        idx.append(ctrl.index)
        lat.append(t)
    return np.array(idx), np.array(lat)


def test_ladder_orders_quality_then_speed():
    ladder = build_ladder([256, 320], steps=3)
    assert [lv.size for lv in ladder] == [320] * 4 + [256] * 4
    assert ladder[0].prune is None and ladder[4].prune is None
    assert ladder[1].prune[:2] == (0.02, 0.1) and ladder[3].prune[:2] == (0.3, 0.7)
    assert [lv.min_keep for lv in ladder[1:4]] == [10, 6, 1]


@pytest.mark.parametrize("bad", [dict(sizes=[]), dict(steps=0), dict(low=(0.5, 0.1)),
                                 dict(low=(0.5, 0.6), high=(0.1, 0.7))])  # fmt: skip
def test_ladder_rejects_bad_bounds(bad):
    kw = dict(sizes=[320], low=(0.02, 0.3), high=(0.1, 0.7), steps=4) | bad
    with pytest.raises(ValueError):
        build_ladder(**kw)


@pytest.mark.parametrize("target", [12.0, 15.0, 20.0, 30.0])
def test_settles_within_budget_and_stops_moving(target):
    ctrl = BudgetController(build_ladder(SIZES), target)
    idx, lat = simulate(ctrl, 200)
    final = idx[-1]
    assert latency_of(ctrl.levels[final]) <= 1 / target  # within budget...
    assert latency_of(ctrl.levels[final - 1]) > 0.9 / target  # ...leaving little quality unused
    rate = 1 / np.maximum(lat[50:], 1 / target)  # throttled to the target
    assert abs(rate.mean() - target) / target < 0.1
    assert len(set(idx[100:])) == 1  # no oscillation once settled
    assert ctrl.moves <= 6


def test_budget_off_keeps_the_best_level():
    ctrl = BudgetController(build_ladder(SIZES), 0.0)
    idx, _ = simulate(ctrl, 50)
    assert set(idx) == {0}


def test_follows_a_load_change_down_and_back_up():
    ctrl = BudgetController(build_ladder(SIZES), 15.0, memory_s=5.0)
    load = lambda i: 1.8 if 100 <= i < 200 else 1.0  # noqa: E731  another process takes CPU
    idx, _ = simulate(ctrl, 400, load)
    assert idx[190] > idx[95]  # moved to a faster level under load
    assert abs(idx[399] - idx[95]) <= 1  # and back up once the load is gone
    assert latency_of(ctrl.levels[idx[399]]) <= 1 / 15
    assert len(set(idx[350:])) == 1


def test_unreachable_target_sits_at_the_fastest_level():
    ctrl = BudgetController(build_ladder(SIZES), 1000.0)
    idx, _ = simulate(ctrl, 100)
    assert idx[-1] == len(ctrl.levels) - 1


def test_target_zero_returns_to_the_best_level_and_bad_values_raise():
    ctrl = BudgetController(build_ladder(SIZES), 1000.0)
    simulate(ctrl, 30)
    assert ctrl.index > 0
    ctrl.set_target(0)
    assert ctrl.index == 0
    with pytest.raises(ValueError):
        ctrl.set_target(-1)
    with pytest.raises(ValueError):
        BudgetController([], 10)
    assert set(ctrl.state()) >= {"budget_target_fps", "budget_level", "budget_setting"}
