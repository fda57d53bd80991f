"""Instance masks + depth + intrinsics -> 3D (mobius_core.geometry3d) on analytic scenes."""

import numpy as np
import pytest

from mobius_core.geometry3d import (
    TOO_FEW,
    Intrinsics,
    depth_factor,
    depth_to_metres,
    erode,
    instance_3d,
    instances_3d,
)

CAM = Intrinsics(525.0, 525.0, 319.5, 239.5, 640, 480)


def rays(cam: Intrinsics) -> np.ndarray:
    v, u = np.mgrid[0 : cam.height, 0 : cam.width].astype(np.float64)
    d = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones_like(u)], -1)
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def sphere(centre, r, cam=CAM, background=4.0):
    """Depth (z) and mask of a sphere in front of a flat wall at ``background`` metres."""
    d, c = rays(cam), np.asarray(centre, float)
    b = d @ c
    disc = b**2 - (c @ c - r * r)
    hit = disc > 0
    t = np.where(hit, b - np.sqrt(np.maximum(disc, 0)), np.nan)
    depth = np.where(hit, t * d[..., 2], background).astype(np.float32)
    return depth, hit


def cube_face_on(centre, s, cam=CAM, background=4.0):
    """A cube facing the camera squarely: its front face at z = centre z - s/2."""
    cx, cy, cz = centre
    v, u = np.mgrid[0 : cam.height, 0 : cam.width].astype(np.float64)
    z = cz - s / 2
    x, y = (u - cam.cx) * z / cam.fx, (v - cam.cy) * z / cam.fy
    hit = (np.abs(x - cx) <= s / 2) & (np.abs(y - cy) <= s / 2)
    return np.where(hit, z, background).astype(np.float32), hit


def box_of(mask):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max(), ys.max()]


@pytest.mark.parametrize("shape", ["sphere", "cube"])
def test_centre_and_size_of_a_fully_visible_solid(shape):
    centre, size = np.array([0.3, -0.1, 2.5]), 0.3
    depth, mask = sphere(centre, size / 2) if shape == "sphere" else cube_face_on(centre, size)
    got = instance_3d(mask, depth, CAM, box_of(mask))
    assert got.has_3d and got.points > 1000
    assert np.linalg.norm(got.center - centre) <= 0.02 * np.linalg.norm(centre)
    np.testing.assert_allclose(got.size, [size] * 3, rtol=0.1)
    # the visible surface alone: the same footprint, the front only
    vis = instance_3d(mask, depth, CAM, box_of(mask), extent="visible")
    np.testing.assert_allclose(vis.size[:2], got.size[:2])
    assert vis.size[2] < 0.6 * size and vis.center[2] < centre[2] - 0.05


def test_background_at_the_mask_edge_does_not_pull_the_centre():
    centre = np.array([0.0, 0.0, 2.0])
    depth, mask = cube_face_on(centre, 0.3)
    grown = erode(~mask, 3) ^ True  # the mask 3 px wider: its rim sees the wall at 4 m
    assert np.count_nonzero(grown) > np.count_nonzero(mask)
    got = instance_3d(grown, depth, CAM, box_of(grown))
    assert abs(got.center[2] - 2.0) < 0.04
    np.testing.assert_allclose(got.size, [0.3] * 3, rtol=0.1)


def test_holes_nan_and_out_of_range_are_ignored_and_too_few_is_a_reason():
    depth, mask = cube_face_on([0.0, 0.0, 2.0], 0.3)
    rng = np.random.default_rng(0)
    holes = depth.copy()
    holes[rng.random(depth.shape) < 0.5] = np.nan
    holes[rng.random(depth.shape) < 0.1] = 50.0  # beyond the range
    got = instance_3d(mask, holes, CAM, box_of(mask))
    assert got.has_3d and abs(got.center[2] - 2.0) < 0.04
    empty = np.full_like(depth, np.nan)
    none = instance_3d(mask, empty, CAM, box_of(mask))
    assert not none.has_3d and none.reason == TOO_FEW and none.points == 0
    tiny = np.zeros_like(mask)
    tiny[240:243, 320:323] = True
    assert instance_3d(tiny, depth, CAM).reason == TOO_FEW


def test_depth_at_half_and_double_resolution_gives_the_same_answer():
    centre = np.array([-0.2, 0.1, 1.8])
    depth, mask = sphere(centre, 0.15)
    full = instance_3d(mask, depth, CAM, box_of(mask))
    half = instance_3d(mask, depth[::2, ::2], CAM, box_of(mask))
    double = instance_3d(mask, np.repeat(np.repeat(depth, 2, 0), 2, 1), CAM, box_of(mask))
    np.testing.assert_allclose(half.center, full.center, atol=0.01)
    np.testing.assert_allclose(double.center, full.center, atol=1e-6)
    assert depth_factor((240, 320), (480, 640)) == (2, 1)
    assert depth_factor((960, 1280), (480, 640)) == (1, 2)
    with pytest.raises(ValueError, match="whole multiple"):
        depth_factor((400, 600), (480, 640))


def test_depth_encodings():
    mm = np.array([[0, 1500], [65535, 250]], np.uint16)
    m = depth_to_metres(mm, "16UC1")
    assert np.isnan(m[0, 0]) and m[0, 1] == pytest.approx(1.5) and m[1, 1] == pytest.approx(0.25)
    f = depth_to_metres(np.array([[np.inf, -1.0], [0.0, 2.0]], np.float32), "32FC1")
    assert np.isnan(f[:2, :2].ravel()[:3]).all() and f[1, 1] == 2.0
    with pytest.raises(ValueError, match=r"16UC1.*32FC1"):
        depth_to_metres(mm, "8UC1")


def test_intrinsics_are_checked_and_scale_with_the_image():
    with pytest.raises(ValueError, match="focal lengths must be finite and positive"):
        Intrinsics.from_k([0, 0, 320, 0, 0, 240, 0, 0, 1], 640, 480)
    half = CAM.scaled(320, 240)
    assert (half.fx, half.cx, half.cy) == (262.5, 159.5, 119.5)
    # the same ray through the same scene point at both sizes
    p = np.array([0.3, -0.2, 2.0])
    u_full = CAM.fx * p[0] / p[2] + CAM.cx
    u_half = half.fx * p[0] / p[2] + half.cx
    assert (u_half + 0.5) == pytest.approx((u_full + 0.5) / 2)


def test_several_instances_and_partly_hidden_objects():
    a_depth, a = cube_face_on([-0.4, 0.0, 2.0], 0.3)
    b_depth, b = sphere([0.35, 0.0, 3.0], 0.2)
    depth = np.minimum(a_depth, b_depth)
    got = instances_3d(np.stack([a, b]), [box_of(a), box_of(b)], depth, CAM)
    assert [g.has_3d for g in got] == [True, True]
    assert got[0].center[0] < 0 < got[1].center[0]
    assert abs(got[1].center[2] - 3.0) < 0.06
    with pytest.raises(ValueError, match="extent must be one of"):
        instance_3d(a, depth, CAM, extent="oriented")
