"""Deterministic synthetic RGB-D world with 3D ground truth ("coloured solids on a floor").

A plain numpy ray-caster (analytic intersections, vectorised over the pixels) renders a colour
image, a registered depth image and, per object, the 3D ground truth the 3D stage
(``mobius_core.geometry3d``) estimates from masks and depth.

World
-----
- A pinhole camera (default 640x480, ``fx = fy = 525 * W / 640``, ``cx = (W - 1) / 2``,
  ``cy = (H - 1) / 2``) 0.6-1.0 m above a floor plane, pitched down 10-25 degrees (random per
  scene), and a back wall 5-7 m away (horizontally) facing the camera.
- 3-6 objects standing on the floor, 1-4 m from the camera (norm of the centre), whose whole
  solid projects inside the image, with footprints that do not intersect. Objects may occlude
  each other, but each keeps at least 30% of the pixels it would cover alone.
- Solids (``SOLIDS``): ``sphere`` (diameter 0.15-0.45 m), ``cube`` (side 0.15-0.45 m, rotated
  about the vertical by a random yaw), ``cylinder`` and ``cone`` (vertical axis, apex up;
  diameter and height 0.15-0.45 m each). The centre of a solid is the centre of its bounding
  cylinder / box (a cone's centre is on its axis at half height).
- Names ``"<colour> <solid>"`` with colours from ``synthetic.COLOURS``; names are unique per
  scene.

Colour: Lambertian shading (a directional light from above + ambient) of the object's palette
colour (jittered by up to +-10 per channel), a floor and a wall of a neutral random colour with a
mild texture in world coordinates, plus pixel noise; uint8 RGB ``[H, W, 3]``.

Depth: the optical-frame z (not the ray length) of the nearest hit (``depth_clean``, float32
metres), then a sensor model (``noise=True``): Gaussian noise of ``sigma = 0.001 + 0.0019 z^2``
metres (structured light / stereo), quantisation to millimetres, holes (0) at depth edges (a
pixel whose 4-neighbour differs by more than ``0.02 + 0.03 z`` m is dropped with probability
0.85), dropouts on dark surfaces (probability ``0.9 * (1 - albedo / 0.2)`` below a luminance
albedo of 0.2) and a few random ones, and 0 outside ``[0.3, 6.0]`` m. ``depth_mm`` is uint16
millimetres (``16UC1``); ``RGBDScene.depth_m`` gives float32 metres with NaN for holes
(``32FC1``). Without noise the depth is the clean depth rounded to millimetres (still 0 outside
the range) and the image has no pixel noise.

Ground truth per object (``RGBDObject``): the visible mask (from the ray-cast id map, so masks
are disjoint), the centre in the optical frame, the amodal axis-aligned box of the whole solid in
the optical frame (exact: from the corners, the rims of the discs or the sphere), the distance
(norm of the centre), the visible fraction (visible pixels / pixels of the object rendered
alone) and the 2D box of the visible mask (xyxy, exclusive right/bottom edge, as in
``synthetic``).

Frames: the optical frame (x right, y down, z forward, metres). The "level" frame shares the
camera's origin and x axis, with y straight down (gravity) and z horizontal forward; a camera
pitched down by ``pitch`` maps a level-frame point ``p`` to ``R p`` in the optical frame
(``RGBDScene.optical_from_level``). The floor is ``y = camera_height`` in the level frame.

Determinism: scene ``i`` of ``rgbd_scenes(num, seed)`` is rendered from
``numpy.random.default_rng([seed, 3, i])``; it does not depend on ``num``.

Splits (``write_rgbd_split``, ``cached_rgbd_split``): image ``i`` of ``val`` is scene ``i`` of
``rgbd_scenes(num, seed)``; image ``i`` of ``train`` is rendered from
``default_rng([seed, 3, i, 1])``, a stream no ``val`` scene uses (numpy pads a seed list with
zeros, so ``[seed, 3, i]`` is ``[seed, 3, i, 0]``). Categories are ``RGBD_CATEGORIES``, every
``"<colour> <solid>"`` name in colour-major order, ids 1..32 in both splits.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_bytes
from ..geometry3d import Intrinsics, depth_to_metres
from ..rle import encode_rle
from .synthetic import COLOURS, _coco_header, _png_bytes, progress_bar

__all__ = [
    "MAX_RANGE",
    "MIN_RANGE",
    "RGBD_CATEGORIES",
    "RGBD_SPLITS",
    "SOLIDS",
    "RGBDObject",
    "RGBDScene",
    "cached_rgbd_split",
    "default_camera",
    "depth_sigma",
    "render_rgbd_scene",
    "render_single",
    "rgbd_scenes",
    "write_rgbd_split",
]

SOLIDS: tuple[str, ...] = ("sphere", "cube", "cylinder", "cone")

MIN_RANGE = 0.3  # metres; nearer -> no depth
MAX_RANGE = 6.0  # metres; farther -> no depth

_SIZE_RANGE = (0.15, 0.45)
_DIST_RANGE = (1.0, 4.0)
_MIN_VISIBLE_FRACTION = 0.3
_MIN_VISIBLE_PIXELS = 20
_FOOTPRINT_GAP = 0.03  # metres between footprint circles
_VIEW_MARGIN = 2  # pixels between an object's projected 3D box and the image border
_EDGE_DROP = 0.85
_DARK_ALBEDO = 0.2
_DARK_DROP = 0.9
_RANDOM_DROP = 0.002
_AMBIENT = 0.35
_SEED_STREAM = 3  # keeps these scenes' rng streams apart from synthetic's splits (0, 1, 2)
_SPLIT_WORD = {"val": 0, "train": 1}  # the 4th seed word (0: the rgbd_scenes stream)

RGBD_SPLITS: tuple[str, ...] = ("train", "val")
RGBD_CATEGORIES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SOLIDS)


def depth_sigma(z: np.ndarray | float) -> np.ndarray | float:
    """Standard deviation (metres) of the simulated depth noise at depth ``z`` (metres)."""
    return 0.001 + 0.0019 * np.square(z)


def default_camera(size: tuple[int, int] = (480, 640)) -> Intrinsics:
    """The default pinhole camera for an ``(H, W)`` image: 525 px focal length at 640 px wide,
    principal point at the image centre."""
    h, w = int(size[0]), int(size[1])
    f = 525.0 * w / 640.0
    return Intrinsics(f, f, (w - 1) / 2.0, (h - 1) / 2.0, w, h)


@dataclass
class RGBDObject:
    """Ground truth of one object (metres, optical frame)."""

    name: str  # "<colour> <solid>"
    colour: str
    solid: str
    instance_id: int  # its value in ``RGBDScene.ids``
    mask: np.ndarray  # bool [H, W], visible pixels
    center: np.ndarray  # (3,) centre of the solid
    box3d: np.ndarray  # (2, 3) amodal axis-aligned box: [min xyz, max xyz]
    distance: float  # norm of ``center``
    visible_fraction: float  # visible pixels / pixels it covers rendered alone
    box: tuple[float, float, float, float]  # xyxy of ``mask``, exclusive right/bottom edge
    area: int  # visible pixels
    dimensions: tuple[float, float, float]  # width, height, depth of the solid (own frame)
    yaw: float  # radians about the vertical (cubes; 0 for the others)

    @property
    def size3d(self) -> np.ndarray:
        """(3,) extent of ``box3d`` (what ``Instance3D.size`` estimates)."""
        return self.box3d[1] - self.box3d[0]


@dataclass
class RGBDScene:
    """One rendered RGB-D frame and its ground truth."""

    image: np.ndarray  # uint8 [H, W, 3] RGB
    depth_mm: np.ndarray  # uint16 [H, W] millimetres, 0 = no depth (16UC1)
    depth_clean: np.ndarray  # float32 [H, W] metres, true optical z of the nearest hit
    ids: np.ndarray  # int32 [H, W]: 0 floor/wall, k = objects[k - 1]
    camera: Intrinsics
    objects: list[RGBDObject]
    camera_height: float  # metres above the floor
    pitch: float  # radians, downwards
    optical_from_level: np.ndarray = field(repr=False)  # (3, 3) rotation

    @property
    def depth_m(self) -> np.ndarray:
        """float32 metres, NaN where there is no depth (32FC1)."""
        return depth_to_metres(self.depth_mm, "16UC1")

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objects]


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


@dataclass
class _Solid:
    solid: str
    colour: str
    albedo: np.ndarray  # (3,) in [0, 1]
    center: np.ndarray  # (3,) level frame
    dims: tuple[float, float, float]  # width, height, depth
    yaw: float = 0.0

    @property
    def footprint_radius(self) -> float:
        w, _, d = self.dims
        return 0.5 * float(np.hypot(w, d)) if self.solid == "cube" else 0.5 * w


def _rotation(pitch: float) -> np.ndarray:
    """optical_from_level for a camera pitched down by ``pitch`` radians."""
    c, s = np.cos(pitch), np.sin(pitch)
    # rows: the optical axes in level coordinates (z forward and down, y down and back)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _yaw_matrix(yaw: float) -> np.ndarray:
    """level_from_object: rotation about the vertical (y) axis."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _solve_quadratic(a, b, c):
    """Roots of ``a t^2 + 2 b t + c`` (t0 <= t1), NaN without real roots."""
    disc = b * b - a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        sq = np.sqrt(disc)
        t0 = (-b - sq) / a
        t1 = (-b + sq) / a
    return t0, t1


def _intersect(obj: _Solid, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rays from the origin with directions ``d`` [N, 3] (level frame, scaled so the optical z
    of ``t * d`` is ``t``) -> (t [N], inf where missed; normal [N, 3], level frame)."""
    n_rays = d.shape[0]
    c = obj.center
    w, h, _ = obj.dims
    t = np.full(n_rays, np.inf)
    nrm = np.zeros((n_rays, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        if obj.solid == "sphere":
            r = 0.5 * w
            a = np.einsum("ij,ij->i", d, d)
            b = -(d @ c)
            t0, _ = _solve_quadratic(a, b, float(c @ c) - r * r)
            hit = t0 > 0
            t[hit] = t0[hit]
            nrm[hit] = (t0[hit, None] * d[hit] - c) / r
        elif obj.solid == "cube":
            rot = _yaw_matrix(obj.yaw)
            dl = d @ rot  # object-frame directions (rot.T @ d for each row)
            ol = -(rot.T @ c)  # ray origin in the object frame
            half = 0.5 * np.array(obj.dims)
            inv = 1.0 / dl
            ta = (-half - ol) * inv
            tb = (half - ol) * inv
            tmin = np.minimum(ta, tb)
            tmax = np.maximum(ta, tb)
            tmin = np.where(np.isnan(tmin), -np.inf, tmin)
            tmax = np.where(np.isnan(tmax), np.inf, tmax)
            axis = np.argmax(tmin, axis=1)
            t_near = tmin.max(axis=1)
            t_far = tmax.min(axis=1)
            hit = (t_near <= t_far) & (t_near > 0)
            t[hit] = t_near[hit]
            idx = np.nonzero(hit)[0]
            local = np.zeros((idx.size, 3))
            local[np.arange(idx.size), axis[idx]] = -np.sign(dl[idx, axis[idx]])
            nrm[idx] = local @ rot.T
        elif obj.solid in ("cylinder", "cone"):
            r, hh = 0.5 * w, 0.5 * h
            dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
            ox, oy, oz = -c  # origin relative to the centre
            top, bottom = -hh, hh  # y relative to the centre (y down)
            if obj.solid == "cylinder":
                a = dx * dx + dz * dz
                b = ox * dx + oz * dz
                t0, t1 = _solve_quadratic(a, b, ox * ox + oz * oz - r * r)
                k = 0.0
            else:
                # x^2 + z^2 = (k (y - top))^2 between the apex (top) and the base
                k = r / h
                yk = oy - top
                a = dx * dx + dz * dz - k * k * dy * dy
                b = ox * dx + oz * dz - k * k * yk * dy
                t0, t1 = _solve_quadratic(a, b, ox * ox + oz * oz - k * k * yk * yk)
            best = np.full(n_rays, np.inf)
            kind = np.zeros(n_rays, dtype=np.int8)  # 1 side, 2 top cap, 3 bottom cap
            for ts in (t0, t1):
                y = oy + ts * dy
                ok = (ts > 0) & (y >= top) & (y <= bottom) & (ts < best)
                best[ok] = ts[ok]
                kind[ok] = 1
            caps = ((bottom, 3),) if obj.solid == "cone" else ((top, 2), (bottom, 3))
            for yc, code in caps:
                tc = (yc - oy) / dy
                px, pz = ox + tc * dx, oz + tc * dz
                ok = (tc > 0) & (px * px + pz * pz <= r * r) & (tc < best)
                best[ok] = tc[ok]
                kind[ok] = code
            hit = np.isfinite(best)
            t[hit] = best[hit]
            p = best[:, None] * d - c
            side = kind == 1
            # gradient of x^2 + z^2 - (k (y - top))^2 (k = 0: the cylinder's side)
            radial = np.stack([p[side, 0], -k * k * (p[side, 1] - top), p[side, 2]], axis=1)
            radial /= np.linalg.norm(radial, axis=1, keepdims=True)
            nrm[side] = radial
            nrm[kind == 2] = (0.0, -1.0, 0.0)
            nrm[kind == 3] = (0.0, 1.0, 0.0)
        else:
            raise ValueError(f"unknown solid {obj.solid!r}; expected one of {', '.join(SOLIDS)}")
    return t, nrm


def _amodal_box(obj: _Solid, rot: np.ndarray) -> np.ndarray:
    """(2, 3) exact axis-aligned box of the whole solid in the optical frame."""
    c = rot @ obj.center
    w, h, _ = obj.dims
    if obj.solid == "sphere":
        r = 0.5 * w
        return np.stack([c - r, c + r])
    if obj.solid == "cube":
        half = 0.5 * np.array(obj.dims)
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
        corners = (signs * half) @ _yaw_matrix(obj.yaw).T @ rot.T + c
        return np.stack([corners.min(axis=0), corners.max(axis=0)])
    axis = rot[:, 1]  # the level frame's down direction in the optical frame
    r, hh = 0.5 * w, 0.5 * h
    rim = r * np.sqrt(np.clip(1.0 - axis * axis, 0.0, None))  # a disc's half extent
    top, base = c - hh * axis, c + hh * axis
    if obj.solid == "cylinder":
        lo = np.minimum(top - rim, base - rim)
        hi = np.maximum(top + rim, base + rim)
    else:
        lo = np.minimum(top, base - rim)
        hi = np.maximum(top, base + rim)
    return np.stack([lo, hi])


def _project(points: np.ndarray, cam: Intrinsics) -> np.ndarray:
    """[N, 3] optical-frame points (z > 0) -> [N, 2] pixel coordinates (u, v)."""
    return np.stack(
        [
            cam.fx * points[:, 0] / points[:, 2] + cam.cx,
            cam.fy * points[:, 1] / points[:, 2] + cam.cy,
        ],
        axis=1,
    )


def _box_corners(box3d: np.ndarray) -> np.ndarray:
    lo, hi = box3d
    return np.array(
        [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )


def _window(obj: _Solid, rot: np.ndarray, cam: Intrinsics) -> tuple[int, int, int, int]:
    """Pixel rectangle (v0, v1, u0, u1), exclusive ends, holding the object's silhouette."""
    corners = _box_corners(_amodal_box(obj, rot))
    if corners[:, 2].min() <= 1e-3:
        return 0, cam.height, 0, cam.width
    uv = _project(corners, cam)
    u0 = int(np.clip(np.floor(uv[:, 0].min()) - 1, 0, cam.width))
    u1 = int(np.clip(np.ceil(uv[:, 0].max()) + 2, 0, cam.width))
    v0 = int(np.clip(np.floor(uv[:, 1].min()) - 1, 0, cam.height))
    v1 = int(np.clip(np.ceil(uv[:, 1].max()) + 2, 0, cam.height))
    return v0, v1, u0, u1


def _in_view(obj: _Solid, rot: np.ndarray, cam: Intrinsics) -> bool:
    corners = _box_corners(_amodal_box(obj, rot))
    if corners[:, 2].min() <= MIN_RANGE:
        return False
    uv = _project(corners, cam)
    m = _VIEW_MARGIN
    return bool(
        uv[:, 0].min() >= m
        and uv[:, 0].max() <= cam.width - 1 - m
        and uv[:, 1].min() >= m
        and uv[:, 1].max() <= cam.height - 1 - m
    )


class _Rays:
    """Per-pixel ray directions (level frame) of a camera, scaled so that t = optical z."""

    def __init__(self, cam: Intrinsics, rot: np.ndarray):
        u = (np.arange(cam.width) - cam.cx) / cam.fx
        v = (np.arange(cam.height) - cam.cy) / cam.fy
        d = np.empty((cam.height, cam.width, 3))
        d[..., 0] = u[None, :]
        d[..., 1] = v[:, None]
        d[..., 2] = 1.0
        self.d = d @ rot  # level = rot.T @ optical, per row
        self.cam = cam
        self.rot = rot

    def cast(self, obj: _Solid):
        """-> (window, t [h, w], normal [h, w, 3]) of ``obj`` alone."""
        v0, v1, u0, u1 = _window(obj, self.rot, self.cam)
        sub = self.d[v0:v1, u0:u1].reshape(-1, 3)
        t, n = _intersect(obj, sub)
        shape = (v1 - v0, u1 - u0)
        return (v0, v1, u0, u1), t.reshape(shape), n.reshape(*shape, 3)


def _composite(casts, shape):
    """Nearest object per pixel -> (t [H, W] inf where none, ids [H, W])."""
    t_all = np.full(shape, np.inf)
    ids = np.zeros(shape, dtype=np.int32)
    for k, ((v0, v1, u0, u1), t, _) in enumerate(casts, start=1):
        view = t_all[v0:v1, u0:u1]
        closer = t < view
        view[closer] = t[closer]
        ids[v0:v1, u0:u1][closer] = k
    return t_all, ids


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


@dataclass
class _World:
    cam: Intrinsics
    pitch: float
    height: float | None  # camera height above the floor; None: no floor
    wall: float | None  # horizontal distance of the back wall; None: no wall
    objects: list[_Solid]
    floor_albedo: np.ndarray
    wall_albedo: np.ndarray
    light: np.ndarray  # unit vector towards the light, level frame
    texture: np.ndarray  # [2, 3, 3] per surface: (frequency x, frequency y, phase) x 3 waves


def _neutral_albedo(rng: np.random.Generator) -> np.ndarray:
    grey = rng.uniform(0.35, 0.7)
    return np.clip(grey + rng.uniform(-0.06, 0.06, size=3), 0.0, 1.0)


def _palette_albedo(colour: str, rng: np.random.Generator) -> np.ndarray:
    base = np.array(COLOURS[colour], dtype=np.float64)
    return np.clip(base + rng.uniform(-10.0, 10.0, size=3), 0.0, 255.0) / 255.0


def _texture(coords_a, coords_b, waves):
    """Mild texture factor around 1 from a few sinusoids of surface coordinates (metres)."""
    out = np.ones_like(coords_a)
    for fa, fb, ph in waves:
        out += 0.035 * np.sin(fa * coords_a + fb * coords_b + ph)
    return out


def _render(world: _World, rng: np.random.Generator, noise: bool) -> RGBDScene:
    cam = world.cam
    shape = (cam.height, cam.width)
    rot = _rotation(world.pitch)
    rays = _Rays(cam, rot)
    d = rays.d
    casts = [rays.cast(o) for o in world.objects]
    t_obj, ids = _composite(casts, shape)

    # background: floor (y = height) and wall (z = wall), level frame
    with np.errstate(divide="ignore", invalid="ignore"):
        t_floor = np.full(shape, np.inf)
        if world.height is not None:
            tf = world.height / d[..., 1]
            t_floor = np.where(tf > 0, tf, np.inf)
        t_wall = np.full(shape, np.inf)
        if world.wall is not None:
            tw = world.wall / d[..., 2]
            t_wall = np.where(tw > 0, tw, np.inf)
    on_floor = t_floor <= t_wall
    t_bg = np.where(on_floor, t_floor, t_wall)
    ids[t_bg < t_obj] = 0
    depth = np.where(ids > 0, t_obj, t_bg)

    # shading
    albedo = np.zeros((*shape, 3))
    normal = np.zeros((*shape, 3))
    finite_bg = np.isfinite(t_bg) & (ids == 0)
    with np.errstate(invalid="ignore"):
        p = depth[..., None] * d
        floor_px = finite_bg & on_floor
        wall_px = finite_bg & ~on_floor
        tex_f = _texture(p[..., 0], p[..., 2], world.texture[0])
        tex_w = _texture(p[..., 0], p[..., 1], world.texture[1])
    albedo[floor_px] = world.floor_albedo * tex_f[floor_px, None]
    normal[floor_px] = (0.0, -1.0, 0.0)
    albedo[wall_px] = world.wall_albedo * tex_w[wall_px, None]
    normal[wall_px] = (0.0, 0.0, -1.0)
    for k, ((v0, v1, u0, u1), _, n) in enumerate(casts, start=1):
        sel = ids[v0:v1, u0:u1] == k
        albedo[v0:v1, u0:u1][sel] = world.objects[k - 1].albedo
        normal[v0:v1, u0:u1][sel] = n[sel]
    lambert = np.clip(normal @ world.light, 0.0, None)
    colour = albedo * (_AMBIENT + (1.0 - _AMBIENT) * lambert)[..., None] * 255.0
    if noise:
        colour += rng.normal(0.0, 2.0, size=colour.shape)
    image = np.clip(np.rint(colour), 0, 255).astype(np.uint8)

    # depth sensor
    clean = np.where(np.isfinite(depth), depth, 0.0)
    z = clean
    if noise:
        z = clean + rng.normal(size=shape) * depth_sigma(clean)
    depth_mm = np.rint(z * 1000.0)
    valid = np.isfinite(depth) & (clean >= MIN_RANGE) & (clean <= MAX_RANGE)
    valid &= (depth_mm > 0) & (depth_mm < 65536)
    if noise:
        thr = 0.02 + 0.03 * clean
        edge = np.zeros(shape, dtype=bool)
        big = np.where(np.isfinite(depth), clean, 1e6)
        dv = np.abs(np.diff(big, axis=0)) > np.minimum(thr[1:], thr[:-1])
        du = np.abs(np.diff(big, axis=1)) > np.minimum(thr[:, 1:], thr[:, :-1])
        edge[1:] |= dv
        edge[:-1] |= dv
        edge[:, 1:] |= du
        edge[:, :-1] |= du
        lum = albedo @ np.array([0.299, 0.587, 0.114])
        p_drop = np.where(edge, _EDGE_DROP, 0.0)
        p_dark = _DARK_DROP * np.clip(1.0 - lum / _DARK_ALBEDO, 0.0, 1.0)
        p_drop = 1.0 - (1.0 - p_drop) * (1.0 - p_dark) * (1.0 - _RANDOM_DROP)
        valid &= rng.random(shape) >= p_drop
    depth_mm = np.where(valid, depth_mm, 0).astype(np.uint16)

    objects = []
    for k, (_, t, _) in enumerate(casts, start=1):
        o = world.objects[k - 1]
        mask = ids == k
        area = int(mask.sum())
        alone = int(np.isfinite(t).sum())
        rows = np.nonzero(mask.any(axis=1))[0]
        cols = np.nonzero(mask.any(axis=0))[0]
        box = (
            (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
            if area
            else (0.0, 0.0, 0.0, 0.0)
        )
        center = rot @ o.center
        objects.append(
            RGBDObject(
                name=f"{o.colour} {o.solid}",
                colour=o.colour,
                solid=o.solid,
                instance_id=k,
                mask=mask,
                center=center,
                box3d=_amodal_box(o, rot),
                distance=float(np.linalg.norm(center)),
                visible_fraction=area / alone if alone else 0.0,
                box=box,
                area=area,
                dimensions=tuple(float(x) for x in o.dims),
                yaw=float(o.yaw),
            )
        )
    return RGBDScene(
        image=image,
        depth_mm=depth_mm,
        depth_clean=clean.astype(np.float32),
        ids=ids,
        camera=cam,
        objects=objects,
        camera_height=float(world.height) if world.height is not None else float("nan"),
        pitch=float(world.pitch),
        optical_from_level=rot,
    )


def _random_light(rng: np.random.Generator) -> np.ndarray:
    light = np.array([rng.uniform(-0.6, 0.6), -1.0, rng.uniform(-0.8, 0.2)])
    return light / np.linalg.norm(light)


def _random_texture(rng: np.random.Generator) -> np.ndarray:
    freq = rng.uniform(-12.0, 12.0, size=(2, 3, 2))
    phase = rng.uniform(0.0, 2 * np.pi, size=(2, 3, 1))
    return np.concatenate([freq, phase], axis=2)


def _random_dims(solid: str, rng: np.random.Generator) -> tuple[float, float, float]:
    if solid in ("sphere", "cube"):
        s = float(rng.uniform(*_SIZE_RANGE))
        return s, s, s
    w, h = (float(x) for x in rng.uniform(*_SIZE_RANGE, size=2))
    return w, h, w


def render_rgbd_scene(
    rng: np.random.Generator,
    size: tuple[int, int] = (480, 640),
    min_objects: int = 3,
    max_objects: int = 6,
    noise: bool = True,
    camera: Intrinsics | None = None,
) -> RGBDScene:
    """Render one random scene (see the module docstring).

    Args:
        rng: source of all randomness (the result is a function of its state).
        size: ``(H, W)``; ignored when ``camera`` is given.
        min_objects, max_objects: the number of objects is drawn from this range (inclusive);
            a scene that cannot hold the drawn number keeps what could be placed.
        noise: the depth sensor model and pixel noise (off: clean depth in millimetres).
        camera: intrinsics (default ``default_camera(size)``).
    """
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    cam = camera if camera is not None else default_camera(size)
    pitch = float(np.radians(rng.uniform(10.0, 25.0)))
    height = float(rng.uniform(0.6, 1.0))
    wall = float(rng.uniform(5.0, 7.0))
    rot = _rotation(pitch)
    rays = _Rays(cam, rot)
    shape = (cam.height, cam.width)
    n_target = int(rng.integers(min_objects, max_objects + 1))
    all_names = [(c, s) for c in COLOURS for s in SOLIDS]

    placed: list[_Solid] = []
    casts: list = []
    attempts = 0
    while len(placed) < n_target and attempts < 60 * n_target:
        attempts += 1
        used = {(o.colour, o.solid) for o in placed}
        free = [cs for cs in all_names if cs not in used]
        colour, solid = free[int(rng.integers(len(free)))]
        dims = _random_dims(solid, rng)
        zf = float(rng.uniform(0.7, 4.2))
        xf = float(rng.uniform(-0.75, 0.75)) * zf
        center = np.array([xf, height - 0.5 * dims[1], zf])
        yaw = float(rng.uniform(0.0, np.pi / 2)) if solid == "cube" else 0.0
        obj = _Solid(solid, colour, _palette_albedo(colour, rng), center, dims, yaw)
        dist = float(np.linalg.norm(center))
        if not _DIST_RANGE[0] <= dist <= _DIST_RANGE[1]:
            continue
        if zf + obj.footprint_radius > wall - 0.2 or not _in_view(obj, rot, cam):
            continue
        if any(
            np.hypot(*(obj.center[[0, 2]] - o.center[[0, 2]]))
            < obj.footprint_radius + o.footprint_radius + _FOOTPRINT_GAP
            for o in placed
        ):
            continue
        cast = rays.cast(obj)
        trial = [*casts, cast]
        _, ids = _composite(trial, shape)
        counts = np.bincount(ids.ravel(), minlength=len(trial) + 1)[1:]
        alone = np.array([np.isfinite(c[1]).sum() for c in trial])
        if np.any(counts < _MIN_VISIBLE_PIXELS) or np.any(counts < _MIN_VISIBLE_FRACTION * alone):
            continue
        placed.append(obj)
        casts.append(cast)

    world = _World(
        cam=cam,
        pitch=pitch,
        height=height,
        wall=wall,
        objects=placed,
        floor_albedo=_neutral_albedo(rng),
        wall_albedo=_neutral_albedo(rng),
        light=_random_light(rng),
        texture=_random_texture(rng),
    )
    return _render(world, rng, noise)


def rgbd_scenes(
    num: int, seed: int = 0, size: tuple[int, int] = (480, 640), noise: bool = True
) -> Iterator[RGBDScene]:
    """Yield ``num`` deterministic scenes; scene ``i`` depends on ``seed`` and ``i`` only."""
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    for i in range(num):
        rng = np.random.default_rng([int(seed), _SEED_STREAM, i])
        yield render_rgbd_scene(rng, size=size, noise=noise)


def render_single(
    solid: str,
    colour: str,
    center: Sequence[float],
    size: float | Sequence[float],
    camera: Intrinsics | None = None,
    *,
    image_size: tuple[int, int] = (480, 640),
    pitch_deg: float = 0.0,
    yaw_deg: float = 0.0,
    floor: bool = True,
    wall: float | None = 6.0,
    noise: bool = False,
    rng: np.random.Generator | None = None,
) -> RGBDScene:
    """A scene with exactly one object whose centre is ``center`` (optical frame, metres).

    With the default level camera (``pitch_deg=0``) and ``yaw_deg=0`` a cube is seen face-on:
    its front face is the plane ``z = center[2] - size / 2``.

    Args:
        solid: one of ``SOLIDS``.
        colour: a ``synthetic.COLOURS`` name (rendered with its exact palette colour).
        size: a sphere's diameter or a cube's side; ``(width, height)`` for cylinders and cones
            (a single number: both).
        camera: intrinsics (default ``default_camera(image_size)``).
        pitch_deg: the camera's downward pitch.
        floor: a floor under the object (it stands on it); otherwise none.
        wall: horizontal distance of the back wall, or None for no wall (no depth there).
        noise: the depth sensor model and pixel noise.
        rng: randomness of the noise (default ``default_rng(0)``).
    """
    if solid not in SOLIDS:
        raise ValueError(f"unknown solid {solid!r}; expected one of {', '.join(SOLIDS)}")
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {', '.join(COLOURS)}")
    cam = camera if camera is not None else default_camera(image_size)
    rng = rng if rng is not None else np.random.default_rng(0)
    sizes = np.atleast_1d(np.asarray(size, dtype=np.float64))
    w = float(sizes[0])
    h = float(sizes[1]) if sizes.size > 1 and solid in ("cylinder", "cone") else w
    pitch = float(np.radians(pitch_deg))
    rot = _rotation(pitch)
    center_level = rot.T @ np.asarray(center, dtype=np.float64)
    obj = _Solid(
        solid,
        colour,
        np.array(COLOURS[colour], dtype=np.float64) / 255.0,
        center_level,
        (w, h, w),
        float(np.radians(yaw_deg)) if solid == "cube" else 0.0,
    )
    world = _World(
        cam=cam,
        pitch=pitch,
        height=float(center_level[1] + 0.5 * h) if floor else None,
        wall=wall,
        objects=[obj],
        floor_albedo=np.full(3, 0.5),
        wall_albedo=np.full(3, 0.6),
        light=np.array([0.3, -1.0, -0.5]) / np.linalg.norm([0.3, -1.0, -0.5]),
        texture=np.zeros((2, 3, 3)),
    )
    return _render(world, rng, noise)


# --------------------------------------------------------------------------------------------
# Splits (COCO instances + depth + 3D ground truth)
# --------------------------------------------------------------------------------------------


def _check_rgbd_split(split: str) -> None:
    if split not in _SPLIT_WORD:
        raise ValueError(f"unknown rgbd split {split!r}; expected one of {', '.join(RGBD_SPLITS)}")


def _split_scenes(split: str, num: int, seed: int, size: tuple[int, int]) -> Iterator[RGBDScene]:
    """Scene ``i`` of ``split`` (see the module docstring); ``val`` is ``rgbd_scenes``."""
    _check_rgbd_split(split)
    if split == "val":
        yield from rgbd_scenes(num, seed, size)
        return
    if num < 0 or seed < 0:
        raise ValueError(f"num and seed must be >= 0, got {num}, {seed}")
    for i in range(num):
        rng = np.random.default_rng([int(seed), _SEED_STREAM, i, _SPLIT_WORD[split]])
        yield render_rgbd_scene(rng, size=size)


def _floats(a) -> list[float]:
    return [round(float(v), 6) for v in np.ravel(a)]


def scene_annotations(
    scene: RGBDScene, image_id: int, first_id: int, cat_id: dict[str, int]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """COCO annotations (RLE masks of the visible pixels; ids from ``first_id``) of the
    scene's visible objects, and their 3D ground truth by annotation id (``name``,
    ``center``, ``box3d`` [min xyz, max xyz], ``distance``, ``visible_fraction``)."""
    anns, per_ann = [], {}
    for o in scene.objects:
        if o.area == 0:
            continue
        ann_id = first_id + len(anns)
        x0, y0, x1, y1 = (float(v) for v in o.box)
        anns.append({"id": ann_id, "image_id": image_id, "category_id": cat_id[o.name],
                     "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(o.area), "iscrowd": 0,
                     "segmentation": encode_rle(o.mask)})  # fmt: skip
        per_ann[str(ann_id)] = {
            "name": o.name, "center": _floats(o.center),
            "box3d": [_floats(o.box3d[0]), _floats(o.box3d[1])],
            "distance": round(float(o.distance), 6),
            "visible_fraction": round(float(o.visible_fraction), 6),
        }  # fmt: skip
    return anns, per_ann


def write_rgbd_split(
    out_dir: str | os.PathLike,
    split: str,
    num_images: int,
    seed: int = 0,
    size: tuple[int, int] = (480, 640),
    progress: bool = False,
) -> Path:
    """Write ``split`` to ``out_dir/split/``: ``images/*.png`` (RGB), ``depth/*.png`` (uint16
    millimetres, 0 = no depth, same file names), ``annotations.json`` (COCO instances, RLE
    masks of the visible pixels) and ``gt3d.json``.

    ``gt3d.json`` is ``{"images": [{"image_id", "file_name", "camera": {fx, fy, cx, cy, width,
    height}, "camera_height", "pitch", "annotations": {"<ann id>": {"name", "center",
    "box3d", "distance", "visible_fraction"}}}]}`` in metres, optical frame (``box3d``:
    ``[min xyz, max xyz]``). Files are written atomically, images streamed (as
    ``synthetic.write_split``). Returns the split folder.
    """
    _check_rgbd_split(split)
    root = Path(out_dir) / split
    cat_id = {n: k + 1 for k, n in enumerate(RGBD_CATEGORIES)}
    coco = _coco_header(split, seed, RGBD_CATEGORIES, "synthetic RGB-D solids")
    gt3d: list[dict[str, Any]] = []
    it: Any = _split_scenes(split, num_images, seed, (int(size[0]), int(size[1])))
    it, bar = progress_bar(it, num_images, f"rgbd {split}") if progress else (it, None)
    ann_id = 0
    for index, scene in enumerate(it):
        image_id = index + 1
        name = f"{split}_{image_id:06d}.png"
        atomic_write_bytes(root / "images" / name, _png_bytes(scene.image))
        atomic_write_bytes(root / "depth" / name, _png_bytes(scene.depth_mm))
        cam = scene.camera
        coco["images"].append(
            {"id": image_id, "file_name": name, "height": cam.height, "width": cam.width}
        )
        anns, per_ann = scene_annotations(scene, image_id, ann_id + 1, cat_id)
        ann_id += len(anns)
        coco["annotations"] += anns
        gt3d.append(
            {
                "image_id": image_id,
                "file_name": name,
                "camera": {k: getattr(cam, k) for k in ("fx", "fy", "cx", "cy", "width", "height")},
                "camera_height": scene.camera_height,
                "pitch": scene.pitch,
                "annotations": per_ann,
            }
        )
    if bar is not None:
        bar.close()
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(root / "gt3d.json", json.dumps({"images": gt3d}).encode())
    atomic_write_bytes(root / "annotations.json", json.dumps(coco).encode())
    return root


def _rgbd_split_files(data: Path) -> list[Path]:
    """annotations.json, gt3d.json, then the images and depth PNGs annotations.json lists."""
    ann, gt3d = data / "annotations.json", data / "gt3d.json"
    json.loads(gt3d.read_bytes())
    names = [r["file_name"] for r in json.loads(ann.read_bytes())["images"]]
    return [ann, gt3d, *(data / d / n for d in ("images", "depth") for n in names)]


def cached_rgbd_split(
    split: str,
    num_images: int,
    seed: int = 0,
    size: tuple[int, int] = (480, 640),
    progress: bool = True,
    root: str | os.PathLike | None = None,
):
    """The split as a ``CocoDataset`` (RGB + masks; depth and ``gt3d.json`` beside them),
    generated once under ``$MOBIUS_CACHE/rgbd`` (or ``root``) and reused after.

    As ``synthetic.cached_split``: the ``complete`` record, written last, lists every file's
    size and SHA-256, so an interrupted generation is never taken as complete (it is made
    again) and a damaged file is regenerated with one warning.
    """
    from ..cache import cache_root as mobius_cache
    from .synthetic import cached_dataset

    _check_rgbd_split(split)
    folder = Path(root) if root is not None else mobius_cache() / "rgbd"
    folder = folder / f"{split}-n{num_images}-s{seed}-{size[0]}x{size[1]}"
    return cached_dataset(
        folder / split,
        lambda: write_rgbd_split(folder, split, num_images, seed, size, progress=progress),
        _rgbd_split_files, "cached rgbd split", root is not None,
    )  # fmt: skip
