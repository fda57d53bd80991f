"""Frame-rate budget: pick the best-quality setting whose measured latency fits 1/target_fps.

The settings form a ladder ordered from best quality to fastest: for each input size
(largest first), pruning off and then the sigmoid schedule from the loosest to the tightest
bounds. Pruning is tried before a smaller input because it costs less accuracy (the paper's
Table 8); a smaller size is the step of last resort, taken only when the model's graph
accepts other sizes.

The controller keeps a smoothed latency for the level in use and remembers what every level
it used cost, with the time it was measured. When over budget it jumps straight to the best
level predicted to fit (measured cost where fresh, otherwise the current cost scaled by the
pixel ratio); when comfortably under budget it probes one level up, unless that level was
measured too slow within ``memory_s``. A dwell time between moves and the memory of failed
probes keep it from oscillating: at a steady load it settles on one level.

Pure Python, no ROS and no clock of its own: the node feeds it measured latencies and times.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Level:
    """One setting: input short side, pruning bounds (None = off), min_keep."""

    size: int
    prune: tuple[float, float, float] | None  # (b_low, b_high, beta)
    min_keep: int

    def prune_dict(self) -> dict[str, float] | None:
        if self.prune is None:
            return None
        return dict(zip(("prune_low", "prune_high", "prune_beta"), self.prune))

    def describe(self) -> str:
        if self.prune is None:
            return f"{self.size}px, pruning off"
        lo, hi, _ = self.prune
        return f"{self.size}px, prune {lo:.3f}-{hi:.3f} keep>={self.min_keep}"


def build_ladder(
    sizes: Sequence[int],
    low: tuple[float, float] = (0.02, 0.3),
    high: tuple[float, float] = (0.1, 0.7),
    min_keep: tuple[int, int] = (10, 1),
    steps: int = 4,
    beta: float = 1.0,
) -> list[Level]:
    """Levels from best quality to fastest. ``low``/``high``: (loosest, tightest) value of
    b_low and b_high; ``min_keep``: (loosest, tightest); ``steps`` pruning settings per
    size, evenly spaced between the two ends."""
    if not sizes:
        raise ValueError("the budget ladder needs at least one input size")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    for name, (a, b) in (("low", low), ("high", high)):
        if not 0.0 <= a <= b <= 1.0:
            raise ValueError(f"pruning {name} bounds must satisfy 0 <= loosest <= tightest <= 1")
    if not (low[0] <= high[0] and low[1] <= high[1]):
        raise ValueError("b_low must not exceed b_high at either end of the pruning range")
    levels = []
    for size in sorted({int(s) for s in sizes}, reverse=True):
        levels.append(Level(size, None, 0))
        for k in range(steps):
            t = k / (steps - 1) if steps > 1 else 1.0
            lo = low[0] + t * (low[1] - low[0])
            hi = high[0] + t * (high[1] - high[0])
            keep = round(min_keep[0] + t * (min_keep[1] - min_keep[0]))
            levels.append(Level(size, (round(lo, 4), round(hi, 4), beta), max(1, keep)))
    return levels


class BudgetController:
    """Chooses a ladder level from measured per-frame latency (seconds).

    Args:
        levels: from :func:`build_ladder`, best quality first.
        target_fps: the rate to hold; 0 turns the controller off (level 0).
        margin: a level fits when its latency is at most (1 - margin) / target_fps.
        slack: the level in use is left only when its latency exceeds (1 + slack) /
            target_fps (noise alone should not move it).
        dwell: frames to measure at a level before the next move.
        smoothing: weight of the newest frame in the latency average.
        memory_s: how long a level measured too slow is not probed again.
    """

    def __init__(
        self,
        levels: Sequence[Level],
        target_fps: float = 0.0,
        margin: float = 0.05,
        slack: float = 0.03,
        dwell: int = 8,
        smoothing: float = 0.2,
        memory_s: float = 30.0,
    ) -> None:
        if not levels:
            raise ValueError("the budget controller needs at least one level")
        if not 0.0 <= margin < 0.5:
            raise ValueError(f"margin must be in [0, 0.5), got {margin}")
        if dwell < 1 or not 0.0 < smoothing <= 1.0 or memory_s < 0:
            raise ValueError("dwell >= 1, 0 < smoothing <= 1 and memory_s >= 0 are required")
        self.levels = list(levels)
        if not 0.0 <= slack < 0.5:
            raise ValueError(f"slack must be in [0, 0.5), got {slack}")
        self.margin, self.dwell, self.smoothing, self.memory_s = margin, dwell, smoothing, memory_s
        self.slack = slack
        self.index = 0
        self.moves = 0
        self._avg: float | None = None
        self._frames = 0
        self._seen: dict[int, tuple[float, float]] = {}  # level -> (latency, when)
        self.target_fps = 0.0
        self.set_target(target_fps)

    @property
    def level(self) -> Level:
        return self.levels[self.index]

    @property
    def budget_s(self) -> float:
        return 1.0 / self.target_fps if self.target_fps > 0 else float("inf")

    def set_target(self, fps: float) -> None:
        if fps < 0 or fps != fps:
            raise ValueError(f"target_fps must be >= 0 (0 = off), got {fps}")
        self.target_fps = float(fps)
        if fps == 0:
            self._move(0)

    def _move(self, index: int) -> bool:
        if index == self.index:
            return False
        self.index, self._avg, self._frames = index, None, 0
        self.moves += 1
        return True

    def _cost(self, index: int) -> float:
        """Relative cost estimate: pixels, with each pruning step a little cheaper."""
        lv = self.levels[index]
        steps = (
            0
            if lv.prune is None
            else 1
            + sum(1 for other in self.levels[:index] if other.size == lv.size and other.prune)
        )
        return (lv.size / self.levels[0].size) ** 2 * 0.97**steps

    def _estimate(self, index: int, now: float) -> float:
        seen = self._seen.get(index)
        if seen is not None and now - seen[1] <= self.memory_s:
            return seen[0]
        assert self._avg is not None
        return self._avg * self._cost(index) / self._cost(self.index)

    def update(self, latency_s: float, now: float) -> bool:
        """Feed one frame's processing time; True when the level changed."""
        if self.target_fps == 0 or not latency_s > 0:
            return False
        self._frames += 1
        if self._frames == 1 and self.moves:  # the first frame after a move warms up
            return False
        a = self.smoothing
        self._avg = latency_s if self._avg is None else (1 - a) * self._avg + a * latency_s
        self._seen[self.index] = (self._avg, now)
        if self._frames < self.dwell:
            return False
        fits = (1.0 - self.margin) * self.budget_s
        if self._avg > (1.0 + self.slack) * self.budget_s:  # over: the best level that fits
            for j in range(self.index + 1, len(self.levels)):
                if self._estimate(j, now) <= fits:
                    return self._move(j)
            return self._move(len(self.levels) - 1)
        if self.index > 0 and self._avg <= fits:  # headroom: probe one level up
            if self._estimate(self.index - 1, now) <= fits:
                return self._move(self.index - 1)
        return False

    def state(self) -> dict[str, str]:
        """For diagnostics."""
        return {
            "budget_target_fps": f"{self.target_fps:g}",
            "budget_level": f"{self.index}/{len(self.levels) - 1}",
            "budget_setting": self.level.describe(),
            "budget_latency_ms": "" if self._avg is None else f"{self._avg * 1e3:.1f}",
            "budget_moves": str(self.moves),
        }
