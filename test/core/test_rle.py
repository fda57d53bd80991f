"""COCO RLE: byte-exact against pycocotools (test-only reference), roundtrips, errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from mobius_core import rle
from mobius_core.rle import (
    counts_from_string,
    counts_to_string,
    decode_rle,
    encode_rle,
    encode_rle_uncompressed,
    rle_area,
)

mask_api = pytest.importorskip("pycocotools.mask")

# pycocotools' own decode trips numpy 2's __array__(copy=...) deprecation; not our code.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")


def _coco(m: np.ndarray) -> dict:
    return mask_api.encode(np.asfortranarray(m.astype(np.uint8)))


def _cases() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    cases = [
        np.zeros((7, 5), dtype=bool),
        np.ones((7, 5), dtype=bool),
        np.zeros((1, 1), dtype=bool),
        np.ones((1, 1), dtype=bool),
        np.zeros((0, 0), dtype=bool),
        np.zeros((0, 4), dtype=bool),
        np.zeros((3, 0), dtype=bool),
    ]
    single = np.zeros((9, 11), dtype=bool)
    single[4, 6] = True
    cases.append(single)
    first = np.zeros((9, 11), dtype=bool)
    first[0, 0] = True
    cases.append(first)
    last = np.zeros((9, 11), dtype=bool)
    last[-1, -1] = True
    cases.append(last)
    for h, w in [(1, 17), (17, 1), (13, 7), (31, 29), (64, 48), (101, 57)]:
        for p in (0.02, 0.5, 0.97):
            cases.append(rng.random((h, w)) < p)
        blob = np.zeros((h, w), dtype=bool)
        blob[h // 4 : 3 * h // 4 + 1, w // 3 : w - 1] = True
        cases.append(blob)
    # long runs: deltas need several 5-bit groups, positive and negative
    big = np.zeros((480, 640), dtype=bool)
    big[10:470, 5:600] = True
    big[:, 620:] = True
    big[100:105, 100:103] = False
    cases.append(big)
    return cases


@pytest.mark.parametrize("idx", range(len(_cases())))
def test_encode_matches_pycocotools_exactly(idx):
    m = _cases()[idx]
    ref = _coco(m)
    ours = encode_rle(m)
    assert isinstance(ours["counts"], str)
    assert ours["counts"] == ref["counts"].decode("ascii")
    assert ours["size"] == list(ref["size"]) == [m.shape[0], m.shape[1]]
    assert rle_area(ours) == int(m.sum()) == int(mask_api.area(ref))


@pytest.mark.parametrize("idx", range(len(_cases())))
def test_decode_roundtrips_and_reads_pycocotools(idx):
    m = _cases()[idx]
    back = decode_rle(encode_rle(m))
    assert back.dtype == np.bool_ and back.shape == m.shape
    assert np.array_equal(back, m)
    assert np.array_equal(decode_rle(_coco(m)), m)  # bytes counts from pycocotools
    unc = encode_rle_uncompressed(m)
    assert all(isinstance(c, int) for c in unc["counts"])
    assert np.array_equal(decode_rle(unc), m)
    assert rle_area(unc) == int(m.sum())


def test_pycocotools_decodes_ours():
    for m in _cases():
        if m.size == 0:
            continue
        ours = encode_rle(m)
        rle = {"size": ours["size"], "counts": ours["counts"].encode("ascii")}
        assert np.array_equal(mask_api.decode(rle).astype(bool), m)


def test_uncompressed_counts_known_values():
    m = np.array([[0, 1], [1, 1], [0, 0]], dtype=bool)  # column-major: 0 1 0 | 1 1 0
    assert encode_rle_uncompressed(m) == {"size": [3, 2], "counts": [1, 1, 1, 2, 1]}
    starts_with_one = np.ones((2, 2), dtype=bool)
    assert encode_rle_uncompressed(starts_with_one)["counts"] == [0, 4]
    assert encode_rle_uncompressed(np.zeros((2, 3), dtype=bool))["counts"] == [6]


def test_uncompressed_matches_pycocotools_frpyobjects():
    rng = np.random.default_rng(1)
    m = rng.random((23, 19)) < 0.3
    unc = encode_rle_uncompressed(m)
    compressed = mask_api.frPyObjects(unc, *unc["size"])
    assert compressed["counts"].decode("ascii") == encode_rle(m)["counts"]


def test_counts_string_roundtrip_extreme_values():
    counts = np.array([0, 5, 3, 1, 2**31, 7, 0, 2**31 - 1, 1, 0, 40000, 3], dtype=np.int64)
    s = counts_to_string(counts)
    assert np.array_equal(counts_from_string(s), counts)
    assert np.array_equal(counts_from_string(s.encode("ascii")), counts)


def test_integer_masks_accepted():
    rng = np.random.default_rng(2)
    m = rng.random((12, 9)) < 0.4
    assert encode_rle(m.astype(np.uint8)) == encode_rle(m)
    assert encode_rle(m.astype(np.int64)) == encode_rle(m)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((3, 4, 1), dtype=bool),
        np.zeros(5, dtype=bool),
        np.zeros((3, 4), dtype=np.float32),
        np.full((3, 4), 2, dtype=np.uint8),
        np.full((3, 4), -1, dtype=np.int32),
    ],
)
def test_encode_rejects_malformed_masks(bad):
    with pytest.raises(ValueError):
        encode_rle(bad)
    with pytest.raises(ValueError):
        encode_rle_uncompressed(bad)


@pytest.mark.parametrize(
    "rle",
    [
        {"size": [2, 2], "counts": [1, 2]},  # sums to 3, not 4
        {"size": [2, 2], "counts": [5]},
        {"size": [2, 2], "counts": [2, -1, 3]},
        {"size": [2, 2], "counts": [[1, 3]]},
        {"size": [2, 2], "counts": [1.5, 2.5]},
        {"size": [2, 2], "counts": "3"},  # compressed, sums to 3
        {"size": [2, 2], "counts": "4 "},  # character outside the alphabet
        {"size": [2, 2], "counts": "0P"},  # last group has the "more" bit
        {"size": [2, 2], "counts": "é"},
        {"size": [2, 2], "counts": 4},
        {"size": [2], "counts": [4]},
        {"size": [-2, -2], "counts": [4]},
        {"counts": [4]},
        [4],
    ],
)
def test_decode_rejects_malformed_rle(rle):
    with pytest.raises(ValueError):
        decode_rle(rle)
    with pytest.raises(ValueError):
        rle_area(rle)


def test_1080p_encode_runs_no_python_loop_over_runs_or_pixels(monkeypatch):
    # what makes it fast, without a clock: the Python lines it runs do not grow with the
    # number of runs, and only the columns holding foreground are scanned
    yy, xx = np.mgrid[:1080, :1920]
    disc = ((yy - 500) ** 2 + (xx - 900) ** 2) < 300**2
    m = disc | ((yy // 37 + xx // 53) % 7 == 0)  # many runs in every column
    assert len(encode_rle_uncompressed(m)["counts"]) > 10_000
    lines = _python_lines(lambda: encode_rle(m))
    assert lines <= _python_lines(lambda: encode_rle(disc)) + 30 and lines < 1000
    assert encode_rle(m)["counts"] == _coco(m)["counts"].decode("ascii")
    scanned = []
    real_scan = rle._scan
    monkeypatch.setattr(rle, "_scan", lambda part: scanned.append(part.shape) or real_scan(part))
    local = np.zeros((1080, 1920), dtype=bool)
    local[100:140, 700:760] = True  # an object's columns, not the image's, are scanned
    assert encode_rle(local)["counts"] == _coco(local)["counts"].decode("ascii")
    assert scanned == [(1080, 60)]


def _python_lines(fn) -> int:
    """How many Python lines ``fn()`` runs, numpy's included (a loop over runs or pixels
    would add thousands)."""
    lines = 0

    def tracer(frame, event, arg):
        nonlocal lines
        if event == "line":
            lines += 1
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(previous)
    return lines


def test_column_window_gives_the_same_runs_as_a_full_scan():
    from mobius_core.rle import _run_lengths, _scan

    rng = np.random.default_rng(7)
    for _ in range(200):
        h, w = rng.integers(1, 12, 2)
        m = np.zeros((h, w), bool)
        if rng.random() < 0.9:
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            m[y0 : y0 + rng.integers(1, h + 1), x0 : x0 + rng.integers(1, w + 1)] = True
            m &= rng.random((h, w)) < 0.8
        np.testing.assert_array_equal(_run_lengths(m), _scan(m))
