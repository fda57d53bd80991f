"""NumPy resize/pad: equal to torch's bilinear interpolate, the geometry every backend uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mobius_core.imageops import bilinear_weights, preprocess, resize_image, resize_maps


@pytest.mark.parametrize(
    ("src", "dst"), [((37, 53), (64, 96)), ((80, 80), (20, 31)), ((5, 7), (5, 7))]
)
def test_resize_matches_torch_interpolate(src, dst):
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, *src)).astype(np.float32)
    ours = resize_maps(maps, dst)
    ref = F.interpolate(
        torch.from_numpy(maps)[None], size=dst, mode="bilinear", align_corners=False
    )
    np.testing.assert_allclose(ours, ref[0].numpy(), rtol=1e-5, atol=1e-5)


def test_weights_rows_sum_to_one_and_are_cached():
    w = bilinear_weights(10, 23)
    assert w.shape == (23, 10) and np.allclose(w.sum(1), 1.0)
    assert bilinear_weights(10, 23) is w and not w.flags.writeable
    with pytest.raises(ValueError, match=">= 1"):
        bilinear_weights(0, 4)


def test_preprocess_resizes_pads_and_reports_sizes():
    a = np.full((100, 200, 3), 255, dtype=np.uint8)
    b = np.zeros((50, 40, 3), dtype=np.uint8)
    batch, sizes = preprocess([a, b], short_side=64, max_size=100)
    assert sizes == [(50, 100), (80, 64)]  # short side 64, long side at most 100
    assert batch.shape == (2, 3, 96, 128) and batch.dtype == np.float32
    assert batch[0, :, :50, :100].min() == pytest.approx(1.0) and batch[0, :, 50:].max() == 0.0
    np.testing.assert_array_equal(resize_image(a, (50, 100)), batch[0, :, :50, :100])
    with pytest.raises(ValueError, match=r"\[H,W,3\]"):
        preprocess([np.zeros((10, 10), np.uint8)], 32)
    with pytest.raises(ValueError, match="at least one"):
        preprocess([], 32)


@pytest.mark.parametrize(
    ("shape", "size", "fill"),
    [((20, 27), (480, 640), "blob"), ((20, 27), (480, 640), "none"), ((20, 27), (37, 50), "all"),
     ((5, 7), (5, 7), "blob"), ((9, 9), (4, 3), "blob"), ((20, 27), (480, 640), "corner")],
)  # fmt: skip
def test_threshold_resized_equals_resizing_everything(shape, size, fill):
    from mobius_core.imageops import resize_maps, threshold_resized

    rng = np.random.default_rng(3)
    m = rng.normal(-4, 1, shape).astype(np.float32)
    if fill == "blob":
        m[shape[0] // 3 : shape[0] // 2 + 1, 2:5] += 6
    elif fill == "all":
        m += 10
    elif fill == "corner":
        m[-1, -1] = 3
    ref = resize_maps(m[None], size)[0]
    binary, values, win = threshold_resized(m, size, 0.0)
    np.testing.assert_array_equal(binary, ref > 0)
    if values is None:
        assert not binary.any()
    else:
        np.testing.assert_allclose(values, ref[win], rtol=1e-5, atol=1e-5)
        assert not binary[: win[0].start].any() and not binary[:, win[1].stop :].any()


def test_threshold_resized_writes_into_out():
    """``out=`` (a row of a preallocated batch, as PostProcessor passes) gives the same
    binary as a fresh array, written in place; a wrong shape or dtype is refused."""
    from mobius_core.imageops import threshold_resized

    rng = np.random.default_rng(4)
    m = rng.normal(-4, 1, (20, 27)).astype(np.float32)
    m[6:11, 2:5] += 6
    ref, _, _ = threshold_resized(m, (480, 640))
    batch = np.zeros((2, 480, 640), dtype=bool)
    binary, _, _ = threshold_resized(m, (480, 640), out=batch[1])
    assert binary is batch[1] or np.shares_memory(binary, batch)
    np.testing.assert_array_equal(batch[1], ref)
    assert not batch[0].any()
    with pytest.raises(ValueError, match="bool"):
        threshold_resized(m, (480, 640), out=np.zeros((480, 640), np.uint8))
    with pytest.raises(ValueError, match="480,640"):
        threshold_resized(m, (480, 640), out=np.zeros((48, 64), bool))
