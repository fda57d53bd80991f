"""The onnxruntime preprocessing graph against the NumPy reference used in training."""

from __future__ import annotations

import numpy as np
import pytest

from mobius_core.imageops import preprocess
from mobius_core.inference.preprocess import OrtPreprocessor


@pytest.fixture(scope="module")
def ort_pre():
    return OrtPreprocessor(threads=1)


@pytest.mark.parametrize(("shape", "short"), [
    ((480, 640, 3), 320), ((37, 53, 3), 100), ((300, 200, 3), 256), ((5, 9, 3), 32),
    ((720, 1280, 3), 384),
])  # fmt: skip
def test_matches_the_numpy_reference(ort_pre, shape, short):
    img = (np.random.default_rng(sum(shape)).random(shape) * 255).astype(np.uint8)
    got, got_sizes = ort_pre([img], short)
    ref, ref_sizes = preprocess([img], short)
    assert got.shape == ref.shape and got.dtype == np.float32 and got_sizes == ref_sizes
    np.testing.assert_allclose(got, ref, atol=2e-4)  # < 0.05 grey levels of 255
    h, w = got_sizes[0]
    assert not got[:, :, h:].any() and not got[:, :, :, w:].any()  # zero padding


def test_batches_pad_to_the_largest_and_bad_input_is_named(ort_pre):
    a = np.zeros((40, 60, 3), np.uint8)
    b = np.full((60, 40, 3), 255, np.uint8)
    got, sizes = ort_pre([a, b], 32, 64)
    ref, ref_sizes = preprocess([a, b], 32, 64)
    assert sizes == ref_sizes and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=2e-4)
    with pytest.raises(ValueError, match="uint8"):
        ort_pre([a.astype(np.float32)], 32)
    with pytest.raises(ValueError, match=r"\[H,W,3\]"):
        ort_pre([a[:, :, 0]], 32)
