"""Synthetic video for tracking: coloured shapes that move, occlude, leave and enter.

``render_sequence(seed)`` returns frames of the synthetic shapes benchmark's world (same
colours, shapes and backgrounds as ``synthetic.py``) with ground-truth track ids: objects
move at constant velocity (some bounce off the borders, the others leave), new ones enter
from the borders, and later objects pass in front of earlier ones. An object is in a frame's
ground truth while at least ``min_area`` pixels of it are visible; its id never changes.
Deterministic by seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .synthetic import (
    COLOURS,
    SEEN_CATEGORIES,
    _parse_category,
    _render_background,
    _shape_mask,
)


@dataclass
class _Mover:
    track_id: int
    name: str
    shape: str
    rgb: np.ndarray
    r: float
    pos: np.ndarray  # (x, y) centre
    vel: np.ndarray  # (vx, vy) pixels per frame
    rot: float
    spin: float
    bounce: bool
    entered: bool = False  # has been inside the frame at least once


@dataclass
class SequenceFrame:
    """One frame: the RGB image and its visible instances (``track_id``, ``name``, ``mask``
    bool [H,W], ``box`` xyxy), in drawing order (later ones in front)."""

    image: np.ndarray
    instances: list[dict[str, Any]] = field(default_factory=list)


def render_sequence(
    seed: int,
    num_frames: int = 60,
    size: tuple[int, int] = (320, 320),
    categories: Sequence[str] = SEEN_CATEGORIES,
    start_objects: tuple[int, int] = (3, 5),
    enter_prob: float = 0.05,
    speed: tuple[float, float] = (1.5, 5.0),
    min_area: int = 80,
) -> list[SequenceFrame]:
    """``num_frames`` frames of one sequence (see the module docstring).

    start_objects: inclusive range of objects in the first frame; enter_prob: chance per
    frame that a new object enters from a border; speed: pixels per frame range.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not categories:
        raise ValueError("categories must not be empty")
    rng = np.random.default_rng([seed, 7])
    h, w = int(size[0]), int(size[1])
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    background = _render_background(rng, h, w, xs, ys)
    scale = min(h, w) / 320.0
    movers: list[_Mover] = []
    next_id = 1

    def spawn(inside: bool) -> None:
        nonlocal next_id
        name = categories[int(rng.integers(len(categories)))]
        _, base, shape = _parse_category(name)
        r = float(rng.uniform(18.0, 48.0) * scale)
        v = float(rng.uniform(*speed) * scale)
        if inside:
            pos = np.array([rng.uniform(r, w - r), rng.uniform(r, h - r)])
            ang = rng.uniform(0, 2 * np.pi)
        else:  # just outside a border, heading inwards (+- 45 degrees)
            side = int(rng.integers(4))
            along = rng.uniform(0.2, 0.8)
            pos, ang = {
                0: (np.array([-r, along * h]), 0.0),
                1: (np.array([w + r, along * h]), np.pi),
                2: (np.array([along * w, -r]), np.pi / 2),
                3: (np.array([along * w, h + r]), -np.pi / 2),
            }[side]
            ang += rng.uniform(-np.pi / 4, np.pi / 4)
        rgb = np.clip(np.asarray(COLOURS[base], np.float32) + rng.uniform(-12, 12, 3), 0, 255)
        vel = v * np.array([np.cos(ang), np.sin(ang)])
        rot, spin = float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(-0.05, 0.05))
        bounce = bool(rng.random() < 0.5)
        movers.append(_Mover(next_id, name, shape, rgb, r, pos, vel, rot, spin, bounce, inside))
        next_id += 1

    for _ in range(int(rng.integers(start_objects[0], start_objects[1] + 1))):
        spawn(inside=True)
    frames = []
    for _t in range(num_frames):
        if rng.random() < enter_prob:
            spawn(inside=False)
        image = background.copy()
        full = []
        for m in movers:
            mask = _shape_mask(m.shape, h, w, float(m.pos[0]), float(m.pos[1]), m.r, m.rot)
            image[mask] = m.rgb
            full.append(mask)
        image = image + rng.normal(0.0, 3.0, size=image.shape).astype(np.float32)
        frame = SequenceFrame(np.clip(np.rint(image), 0, 255).astype(np.uint8))
        cover = np.zeros((h, w), bool)
        visible = [None] * len(movers)
        for i in range(len(movers) - 1, -1, -1):  # front to back
            visible[i] = full[i] & ~cover
            cover |= full[i]
        for m, vis in zip(movers, visible):
            if int(vis.sum()) < min_area:
                continue
            rows = np.flatnonzero(vis.any(axis=1))
            cols = np.flatnonzero(vis.any(axis=0))
            box = (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
            frame.instances.append(dict(track_id=m.track_id, name=m.name, mask=vis, box=box))
        frames.append(frame)
        # move; bouncers reflect off the borders once inside, the others may leave for good
        alive = []
        for m, mask in zip(movers, full):
            m.entered |= (
                bool(mask.any()) and (m.r <= m.pos[0] <= w - m.r) and (m.r <= m.pos[1] <= h - m.r)
            )
            m.pos = m.pos + m.vel
            m.rot += m.spin
            if m.bounce and m.entered:
                for k, hi in ((0, w), (1, h)):
                    if (m.pos[k] < m.r and m.vel[k] < 0) or (m.pos[k] > hi - m.r and m.vel[k] > 0):
                        m.vel[k] = -m.vel[k]
            gone = (m.pos[0] < -2 * m.r or m.pos[0] > w + 2 * m.r or m.pos[1] < -2 * m.r
                    or m.pos[1] > h + 2 * m.r)  # fmt: skip
            if not gone:
                alive.append(m)
        movers = alive
    return frames
