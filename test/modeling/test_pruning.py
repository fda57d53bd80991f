"""Query pruning: the threshold schedules (Eq. 5-7) and the keep rule."""

from __future__ import annotations

import math

import pytest
import torch

from mobius_core.modeling.pruning import PruneSchedule, gather_queries, select_kept


def test_sigmoid_schedule_matches_eq5():
    s = PruneSchedule.create("sigmoid", low=0.05, high=0.2, beta=1.0, min_keep=10)
    num_layers = 9
    got = s.thresholds(num_layers)
    for layer in range(num_layers):
        want = 0.05 + 0.15 / (1 + math.exp(-(10 * 1.0 / num_layers) * (layer - num_layers / 2)))
        assert got[layer].item() == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("kind", ["exponential", "logarithmic"])
def test_exp_and_log_schedules_span_low_to_high(kind):
    s = PruneSchedule.create(kind, low=0.1, high=0.3, beta=2.0, min_keep=1)
    t = s.thresholds(6)
    assert t[0].item() == pytest.approx(0.1, abs=1e-6)
    assert t[-1].item() == pytest.approx(0.3, abs=1e-6)
    assert torch.all(t[1:] >= t[:-1])
    mid = t[3].item()
    lin = 0.1 + 0.2 * 3 / 5
    # exponential stays below the straight line, logarithmic above it (Eq. 6, 7)
    assert (mid < lin) if kind == "exponential" else (mid > lin)


def test_schedule_rejects_bad_values():
    with pytest.raises(ValueError, match="low <= high"):
        PruneSchedule.create("sigmoid", low=0.5, high=0.1)
    with pytest.raises(ValueError, match="min_keep"):
        PruneSchedule.create("sigmoid", min_keep=0)
    with pytest.raises(ValueError, match="unknown"):
        PruneSchedule.create("cubic")


def test_select_kept_threshold_and_min_keep():
    conf = torch.tensor([[0.9, 0.1, 0.5, 0.05, 0.3], [0.2, 0.1, 0.15, 0.05, 0.01]])
    valid = torch.ones_like(conf, dtype=torch.bool)
    index, new_valid, kept = select_kept(conf, valid, torch.tensor(0.25), torch.tensor(2))
    assert kept.tolist() == [3, 2]  # image 0: >= 0.25; image 1: its two best
    assert index.shape == (2, 3)
    assert index[0].tolist() == [0, 2, 4]  # original order kept
    assert index[1, :2].tolist() == [0, 2] and new_valid[1].tolist() == [True, True, False]


def test_select_kept_reports_the_dropped_queries():
    conf = torch.tensor([[0.9, 0.1, 0.5, 0.05, 0.3], [0.2, 0.1, 0.15, 0.05, 0.01]])
    valid = torch.tensor([[True, True, True, True, True], [True, True, True, False, True]])
    index, new_valid, kept, dropped, dropped_valid = select_kept(
        conf, valid, torch.tensor(0.25), torch.tensor(2), with_dropped=True
    )
    assert kept.tolist() == [3, 2]
    assert dropped.shape == (2, 3)  # Q minus the smallest count
    real = [set(d[v].tolist()) for d, v in zip(dropped, dropped_valid)]
    assert real == [{1, 3}, {1, 4}]  # image 1: query 3 was already invalid, not dropped now
    for i in range(2):  # kept and dropped never overlap
        assert not set(index[i][new_valid[i]].tolist()) & real[i]


def test_select_kept_zero_threshold_keeps_everything_in_order():
    conf = torch.rand(3, 7)
    valid = torch.ones_like(conf, dtype=torch.bool)
    index, new_valid, kept = select_kept(conf, valid, torch.tensor(0.0), torch.tensor(1))
    assert torch.equal(index, torch.arange(7).expand(3, 7))
    assert new_valid.all() and kept.tolist() == [7, 7, 7]


def test_select_kept_never_revives_dropped_queries():
    conf = torch.tensor([[0.9, 0.8, 0.7, 0.6]])
    valid = torch.tensor([[True, False, True, False]])
    index, new_valid, kept = select_kept(conf, valid, torch.tensor(0.0), torch.tensor(4))
    assert kept.tolist() == [2]
    assert set(index[0][new_valid[0]].tolist()) == {0, 2}


def test_fixed_schedule_keeps_exact_counts():
    s = PruneSchedule.fixed([5, 3, 3])
    assert s.thresholds(3).min().item() > 1.0
    conf = torch.rand(1, 8)
    valid = torch.ones_like(conf, dtype=torch.bool)
    index, _, kept = select_kept(conf, valid, s.thresholds(3)[1], s.keep_floor(1))
    assert kept.item() == 3
    assert set(index[0].tolist()) == set(conf[0].topk(3).indices.tolist())


def test_gather_queries():
    x = torch.arange(2 * 4 * 3).reshape(2, 4, 3)
    index = torch.tensor([[3, 0], [1, 2]])
    out = gather_queries(x, index)
    assert torch.equal(out[0], x[0, [3, 0]]) and torch.equal(out[1], x[1, [1, 2]])


def test_schedule_moves_to_the_queries_device():
    s = PruneSchedule.fixed([4, 2]).to("meta")
    assert s.low.device.type == "meta" and s.counts is not None and s.counts.device.type == "meta"
    assert s.kind == "fixed"
