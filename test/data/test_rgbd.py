"""Tests for the synthetic RGB-D world (``mobius_core.data.rgbd``)."""

from __future__ import annotations

import numpy as np
import pytest

from mobius_core.data import rgbd
from mobius_core.data.synthetic import COLOURS
from mobius_core.geometry3d import erode

SIZE = (240, 320)


@pytest.fixture(scope="module")
def scenes():
    return list(rgbd.rgbd_scenes(6, seed=7, size=SIZE))


@pytest.fixture(scope="module")
def clean_scenes():
    return list(rgbd.rgbd_scenes(4, seed=11, size=SIZE, noise=False))


def _backproject(scene, mask):
    cam = scene.camera
    v, u = np.nonzero(mask)
    z = scene.depth_clean[v, u].astype(np.float64)
    return np.stack([(u - cam.cx) * z / cam.fx, (v - cam.cy) * z / cam.fy, z], axis=1)


def test_deterministic_per_seed():
    a = list(rgbd.rgbd_scenes(2, seed=4, size=(120, 160)))
    b = list(rgbd.rgbd_scenes(2, seed=4, size=(120, 160)))
    c = list(rgbd.rgbd_scenes(2, seed=5, size=(120, 160)))
    for x, y in zip(a, b):
        for f in ("image", "depth_mm", "depth_clean", "ids"):
            np.testing.assert_array_equal(getattr(x, f), getattr(y, f))
        assert x.names == y.names
        for ox, oy in zip(x.objects, y.objects):
            np.testing.assert_array_equal(ox.box3d, oy.box3d)
            np.testing.assert_array_equal(ox.mask, oy.mask)
    assert not np.array_equal(a[0].depth_mm, c[0].depth_mm)
    # scene i does not depend on how many are asked for
    (first,) = rgbd.rgbd_scenes(1, seed=4, size=(120, 160))
    np.testing.assert_array_equal(first.image, a[0].image)


def test_types_and_camera(scenes):
    s = scenes[0]
    h, w = SIZE
    assert s.image.shape == (h, w, 3) and s.image.dtype == np.uint8
    assert s.depth_mm.shape == (h, w) and s.depth_mm.dtype == np.uint16
    assert s.depth_clean.shape == (h, w) and s.depth_clean.dtype == np.float32
    assert (s.camera.width, s.camera.height) == (w, h)
    assert s.camera.cx == (w - 1) / 2 and s.camera.cy == (h - 1) / 2
    assert s.camera.fx == pytest.approx(525.0 * w / 640.0)
    d = s.depth_m
    assert d.dtype == np.float32
    assert np.array_equal(np.isnan(d), s.depth_mm == 0)
    ok = s.depth_mm > 0
    np.testing.assert_allclose(d[ok], s.depth_mm[ok] / 1000.0, rtol=1e-6)


def test_face_on_cube_depth():
    cam = rgbd.default_camera(SIZE)
    s = rgbd.render_single("cube", "red", (0.1, -0.05, 2.0), 0.3, cam)
    (obj,) = s.objects
    u = round(cam.fx * 0.1 / 2.0 + cam.cx)
    v = round(cam.fy * -0.05 / 2.0 + cam.cy)
    assert s.ids[v, u] == obj.instance_id
    assert s.depth_clean[v, u] == pytest.approx(1.85, abs=1e-5)
    assert s.depth_mm[v, u] == 1850
    # the whole front face is the plane z = 1.85
    face = erode(obj.mask, 2)
    assert face.sum() > 500
    np.testing.assert_allclose(s.depth_clean[face], 1.85, atol=1e-5)
    np.testing.assert_allclose(obj.center, (0.1, -0.05, 2.0))
    np.testing.assert_allclose(obj.box3d, [[-0.05, -0.2, 1.85], [0.25, 0.1, 2.15]], atol=1e-9)
    assert obj.visible_fraction == 1.0
    # with the sensor model the face is still at 1850 mm on average
    noisy = rgbd.render_single("cube", "red", (0.1, -0.05, 2.0), 0.3, cam, noise=True)
    vals = noisy.depth_mm[face & (noisy.depth_mm > 0)].astype(np.float64)
    assert abs(np.median(vals) - 1850) <= 1.0


def test_sphere_depth_and_box():
    cam = rgbd.default_camera(SIZE)
    s = rgbd.render_single("sphere", "blue", (0.0, 0.0, 3.0), 0.4, cam)
    (obj,) = s.objects
    v, u = round(cam.cy), round(cam.cx)
    # the pixel centre is half a pixel off the axis: z of the sphere there
    x, y = (u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy
    a, b = 1 + x * x + y * y, 3.0
    z = (b - np.sqrt(b * b - a * (9.0 - 0.04))) / a
    assert s.depth_clean[v, u] == pytest.approx(z, abs=1e-5)
    np.testing.assert_allclose(obj.box3d, [[-0.2, -0.2, 2.8], [0.2, 0.2, 3.2]])
    assert obj.distance == pytest.approx(3.0)


def test_visible_points_inside_gt_box(scenes, clean_scenes):
    n = 0
    for s in scenes + clean_scenes:
        for o in s.objects:
            pts = _backproject(s, o.mask)
            lo, hi = o.box3d
            assert np.all(pts >= lo - 2e-3) and np.all(pts <= hi + 2e-3), o.name
            # the box is of the whole solid: the centre lies inside, the visible points
            # reach close to its sides
            assert np.all(o.center > lo) and np.all(o.center < hi)
            assert o.distance == pytest.approx(float(np.linalg.norm(o.center)))
            n += 1
    assert n >= 20


def test_masks_disjoint_and_match_ids(scenes):
    for s in scenes:
        stack = np.stack([o.mask for o in s.objects])
        assert stack.sum(axis=0).max() <= 1
        assert s.ids.max() == len(s.objects)
        for o in s.objects:
            assert o.mask.dtype == bool
            np.testing.assert_array_equal(o.mask, s.ids == o.instance_id)
            assert o.area == o.mask.sum() > 0
            rows, cols = np.nonzero(o.mask)
            assert o.box == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
            assert 0.3 <= o.visible_fraction <= 1.0


def test_names_unique_and_objects_in_view(scenes):
    solids = set()
    for s in scenes:
        assert 3 <= len(s.objects) <= 6
        assert len(set(s.names)) == len(s.names)
        assert 0.6 <= s.camera_height <= 1.0
        assert np.radians(10) <= s.pitch <= np.radians(25)
        cam = s.camera
        for o in s.objects:
            colour, solid = o.name.split()
            assert colour in COLOURS and solid in rgbd.SOLIDS
            assert (colour, solid) == (o.colour, o.solid)
            solids.add(solid)
            assert 1.0 <= o.distance <= 4.0
            assert all(0.15 <= d <= 0.45 for d in o.dimensions)
            # the whole solid projects inside the image
            lo, hi = o.box3d
            corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                                for z in (lo[2], hi[2])])  # fmt: skip
            u = cam.fx * corners[:, 0] / corners[:, 2] + cam.cx
            v = cam.fy * corners[:, 1] / corners[:, 2] + cam.cy
            assert u.min() >= 0 and u.max() <= cam.width - 1
            assert v.min() >= 0 and v.max() <= cam.height - 1
            # it stands on the floor
            level = s.optical_from_level.T @ o.center
            assert level[1] + o.dimensions[1] / 2 == pytest.approx(s.camera_height)
    assert len(solids) >= 3


def test_holes_at_depth_edges():
    cam = rgbd.default_camera(SIZE)
    s = rgbd.render_single("cube", "white", (0.0, 0.0, 1.5), 0.3, cam, noise=True)
    clean = s.depth_clean
    jump_v = np.abs(np.diff(clean, axis=0)) > 0.5
    jump_u = np.abs(np.diff(clean, axis=1)) > 0.5
    edge = np.zeros(clean.shape, dtype=bool)
    edge[1:] |= jump_v
    edge[:-1] |= jump_v
    edge[:, 1:] |= jump_u
    edge[:, :-1] |= jump_u
    assert edge.sum() > 100
    assert (s.depth_mm[edge] == 0).mean() > 0.6
    face = erode(s.objects[0].mask, 3)
    assert (s.depth_mm[face] == 0).mean() < 0.02
    # no sensor model: no holes within range
    quiet = rgbd.render_single("cube", "white", (0.0, 0.0, 1.5), 0.3, cam)
    in_range = (clean >= rgbd.MIN_RANGE) & (clean <= rgbd.MAX_RANGE)
    assert np.all(quiet.depth_mm[in_range] > 0)
    np.testing.assert_array_equal(quiet.depth_mm, np.where(in_range, np.rint(clean * 1000), 0))


def test_noise_grows_with_distance():
    cam = rgbd.default_camera(SIZE)
    stds = {}
    for z in (1.0, 3.0):
        s = rgbd.render_single("cube", "white", (0.0, 0.0, z), 0.4, cam, noise=True)
        face = erode(s.objects[0].mask, 3) & (s.depth_mm > 0)
        assert face.sum() > 300
        err = s.depth_mm[face] / 1000.0 - s.depth_clean[face]
        stds[z] = float(np.std(err))
        front = z - 0.2
        assert stds[z] == pytest.approx(rgbd.depth_sigma(front), rel=0.25)
    assert stds[3.0] > 3 * stds[1.0]


def test_dark_surfaces_drop_out():
    cam = rgbd.default_camera(SIZE)
    frac = {}
    for colour in ("black", "white"):
        s = rgbd.render_single("sphere", colour, (0.0, 0.0, 1.5), 0.4, cam, noise=True)
        inner = erode(s.objects[0].mask, 3)
        frac[colour] = float((s.depth_mm[inner] == 0).mean())
    assert frac["black"] > frac["white"] + 0.2


def test_out_of_range_has_no_depth():
    cam = rgbd.default_camera(SIZE)
    s = rgbd.render_single("cylinder", "green", (0.0, 0.0, 7.0), (0.4, 0.5), cam,
                           floor=False, wall=None)  # fmt: skip
    assert s.objects[0].area > 0
    assert np.all(s.depth_mm == 0)
    assert np.all(s.depth_clean[s.ids == 0] == 0)


def test_solids_render_alone():
    cam = rgbd.default_camera(SIZE)
    for solid in rgbd.SOLIDS:
        s = rgbd.render_single(solid, "orange", (0.0, 0.1, 2.0), 0.3, cam, pitch_deg=20.0)
        (o,) = s.objects
        assert o.name == f"orange {solid}"
        assert o.visible_fraction == 1.0 and o.area > 300
        pts = _backproject(s, o.mask)
        lo, hi = o.box3d
        assert np.all(pts >= lo - 1e-4) and np.all(pts <= hi + 1e-4)
        # the visible surface spans the box sideways
        assert pts[:, 0].min() - lo[0] < 0.02 and hi[0] - pts[:, 0].max() < 0.02
    with pytest.raises(ValueError):
        rgbd.render_single("pyramid", "red", (0, 0, 2), 0.3)
    with pytest.raises(ValueError):
        rgbd.render_single("cube", "teal", (0, 0, 2), 0.3)


def test_written_split_loads_as_coco_and_matches_scenes(tmp_path):
    import json

    from PIL import Image

    from mobius_core.data.coco import CocoDataset

    size = (120, 160)
    ds = rgbd.cached_rgbd_split("val", 3, seed=2, size=size, progress=False, root=tmp_path)
    assert list(ds.prompts) == list(rgbd.RGBD_CATEGORIES) and len(ds.prompts) == 32
    folder = ds.ann_file.parent
    assert (folder.parent / "complete").is_file()
    again = CocoDataset(folder / "annotations.json", folder / "images")  # what --data loads
    gt3d = json.loads((folder / "gt3d.json").read_text())["images"]
    for k, scene in enumerate(rgbd.rgbd_scenes(3, seed=2, size=size)):  # val = rgbd_scenes
        sample = again[k]
        np.testing.assert_array_equal(sample.image, scene.image)
        depth = np.asarray(Image.open(folder / "depth" / sample.file_name))
        np.testing.assert_array_equal(depth, scene.depth_mm)
        assert [ds.prompts[i] for i in sample.labels] == scene.names
        np.testing.assert_array_equal(sample.masks, np.stack([o.mask for o in scene.objects]))
        np.testing.assert_allclose(sample.boxes, [o.box for o in scene.objects])
        rec = gt3d[k]
        assert rec["camera"]["fx"] == pytest.approx(scene.camera.fx)
        for ann_id, o in zip(sample.ann_ids, scene.objects):
            g = rec["annotations"][str(int(ann_id))]
            assert g["name"] == o.name
            np.testing.assert_allclose(g["center"], o.center, atol=1e-5)
            np.testing.assert_allclose(g["box3d"], o.box3d, atol=1e-5)
            assert g["visible_fraction"] == pytest.approx(o.visible_fraction, abs=1e-5)
    # train never renders a val scene
    train = rgbd.write_rgbd_split(tmp_path / "t", "train", 3, seed=2, size=size)
    for k in range(3):
        train_image = np.asarray(Image.open(train / "images" / f"train_{k + 1:06d}.png"))
        assert not np.array_equal(train_image, again[k].image)
    with pytest.raises(ValueError, match="train, val"):
        rgbd.write_rgbd_split(tmp_path, "val_unseen", 1)
