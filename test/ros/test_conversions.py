"""Image fields -> RGB, results -> message fields: pure functions, no ROS needed."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mobius_core.postprocess import Instances
from mobius_core.rle import decode_rle
from mobius_ros.conversions import (
    ImageError,
    compressed_to_rgb,
    image_to_rgb,
    instance_fields,
    label_image,
    rgb_to_image_fields,
)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("encoding", "pixels"),
    [
        ("rgb8", RGB),
        ("bgr8", RGB[:, :, ::-1]),
        ("rgba8", np.dstack([RGB, np.full((5, 7), 9, np.uint8)])),
        ("bgra8", np.dstack([RGB[:, :, ::-1], np.full((5, 7), 9, np.uint8)])),
    ],
)
def test_colour_encodings_give_rgb(encoding, pixels):
    h, w, c = pixels.shape
    out = image_to_rgb(encoding, h, w, w * c, pixels.tobytes())
    np.testing.assert_array_equal(out, RGB)


def test_mono8_is_replicated_and_row_padding_is_skipped():
    gray = RGB[:, :, 0]
    padded = np.zeros((5, 10), np.uint8)
    padded[:, :7] = gray
    out = image_to_rgb("mono8", 5, 7, 10, padded.tobytes())
    assert out.shape == (5, 7, 3)
    for ch in range(3):
        np.testing.assert_array_equal(out[:, :, ch], gray)


def test_last_row_without_padding_is_accepted():
    padded = np.zeros((5, 24), np.uint8)
    padded[:, :21] = RGB.reshape(5, 21)
    data = padded.tobytes()[: 24 * 4 + 21]
    np.testing.assert_array_equal(image_to_rgb("rgb8", 5, 7, 24, data), RGB)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("16UC1", 5, 7, 14, bytes(70)), "depth"),
        (("yuv422", 5, 7, 14, bytes(70)), "rgb8"),
        (("rgb8", 0, 7, 21, b""), "zero size"),
        (("rgb8", 5, 7, 20, bytes(100)), "step 20"),
        (("rgb8", 5, 7, 21, bytes(50)), "truncated"),
    ],
)
def test_bad_images_are_rejected_with_the_reason(args, words):
    with pytest.raises(ImageError, match=words):
        image_to_rgb(*args)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_compressed_images_decode(fmt):
    buf = io.BytesIO()
    Image.fromarray(RGB).save(buf, format=fmt.upper(), quality=100)
    out = compressed_to_rgb(fmt, buf.getvalue())
    assert out.shape == RGB.shape
    if fmt == "png":
        np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize(("fmt", "data", "words"), [
    ("jpeg", b"", "no data"),
    ("jpeg", b"not an image at all", "not a JPEG or PNG image"),
    ("16UC1; compressedDepth", b"x", "depth"),
])  # fmt: skip
def test_bad_compressed_images_are_rejected(fmt, data, words):
    with pytest.raises(ImageError, match=words) as err:
        compressed_to_rgb(fmt, data)
    assert "BytesIO" not in str(err.value) and " at 0x" not in str(err.value)


def _png(width: int, height: int) -> bytes:
    """A valid PNG of ``width`` x ``height`` black pixels, written without holding the image
    (zlib-compressed zero rows: a 12000x12000 one is a few hundred KB)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    comp = zlib.compressobj(9)
    row = b"\x00" + bytes(3 * width)  # filter byte + RGB
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    head = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_an_oversized_compressed_image_is_refused_from_its_header_before_decoding(monkeypatch):
    from PIL import ImageFile

    data = _png(12000, 12000)
    assert len(data) < 1_000_000  # small on the wire, 432 MB decoded
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load",
                        lambda self: decoded.append(self.size) or real_load(self))  # fmt: skip
    with pytest.raises(ImageError, match=r"12000x12000 .* larger than max_image_pixels"):
        compressed_to_rgb("png", data)
    assert decoded == []  # refused before any pixel was decoded
    with pytest.raises(ImageError, match="max_image_pixels = 1000"):
        compressed_to_rgb("png", _png(40, 30), max_pixels=1000)
    assert compressed_to_rgb("png", _png(40, 30), max_pixels=1200).shape == (30, 40, 3)
    assert set(decoded) == {(40, 30)}  # the image within the limit was decoded


def test_raw_images_honour_the_same_pixel_limit():
    with pytest.raises(ImageError, match="max_image_pixels = 100"):
        image_to_rgb("rgb8", 10, 11, 33, bytes(330), max_pixels=100)
    assert image_to_rgb("rgb8", 10, 10, 30, bytes(300), max_pixels=100).shape == (10, 10, 3)


def test_rgb_round_trip_through_image_fields():
    h, w, step, data = rgb_to_image_fields(RGB)
    assert isinstance(data, bytes) and step == 21
    np.testing.assert_array_equal(image_to_rgb("rgb8", h, w, step, data), RGB)


def _instances():
    masks = np.zeros((3, 6, 8), bool)
    masks[0, 1:4, 1:4] = True
    masks[1, 2:6, 3:8] = True  # overlaps instance 0 at rows 2-3, column 3
    masks[2, 0, 7] = True
    return Instances(
        scores=np.array([0.9, 0.5, 0.7], np.float32),
        labels=np.array([0, 1, 1]),
        boxes=np.array([[1, 1, 4, 4], [3, 2, 8, 6], [7, 0, 8, 1]], np.float32),
        masks=masks,
        label_texts=["mug", "cup", "cup"],
    )


def test_label_image_ids_match_instances_and_scores_decide_overlaps():
    inst = _instances()
    labels = label_image(inst, (6, 8))
    assert labels.dtype == np.uint16
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    for i in range(3):
        assert np.all(inst.masks[i][labels == i + 1])  # every pixel of id i+1 is in mask i
    assert labels[2, 3] == 1  # overlap of 0 (0.9) and 1 (0.5): the higher score wins
    assert np.all(labels[~inst.masks.any(0)] == 0)


def test_tracker_ids_in_fields_and_label_image():
    inst = _instances()
    ids = [7, 70000, 3]  # a tracker's ids; 70000 wraps in the mono16 image
    assert [f.id for f in instance_fields(inst, ids)] == ids
    labels = label_image(inst, (6, 8), ids)
    assert set(np.unique(labels)) == {0, 7, 70000 - 65535, 3}
    assert np.all(inst.masks[0][labels == 7]) and labels[2, 3] == 7
    with pytest.raises(ValueError, match="2 ids for 3 instances"):
        instance_fields(inst, [1, 2])


def test_instance_fields_encode_masks_as_coco_rle():
    inst = _instances()
    fields = instance_fields(inst)
    assert [f.id for f in fields] == [1, 2, 3]
    assert [f.label for f in fields] == ["mug", "cup", "cup"]
    assert [f.prompt_index for f in fields] == [0, 1, 1]
    assert fields[0].box == (1.0, 1.0, 4.0, 4.0)
    for f, mask in zip(fields, inst.masks):
        rle = {"size": [f.mask_height, f.mask_width], "counts": f.mask_rle_counts}
        np.testing.assert_array_equal(decode_rle(rle), mask)
    assert (
        label_image(Instances(*(np.zeros((0,) + s) for s in ((), (), (4,), (6, 8)))), (6, 8)).sum()
        == 0
    )


class _FakeCvBridgeModule:
    """A stand-in for the ``cv_bridge`` package with its real API: ``CvBridge().
    imgmsg_to_cv2(img_msg, desired_encoding='passthrough')`` returns an array and raises
    ``CvBridgeError`` for encodings it cannot convert. It converts yuv422 (UYVY) to rgb8
    as cv_bridge does through OpenCV's COLOR_YUV2RGB_UYVY."""

    class CvBridgeError(TypeError):
        pass

    def __init__(self):
        self.calls = []
        module = self

        class CvBridge:
            def imgmsg_to_cv2(self, img_msg, desired_encoding="passthrough"):
                module.calls.append((img_msg.encoding, desired_encoding))
                if img_msg.encoding != "yuv422":
                    raise module.CvBridgeError(f"[{img_msg.encoding}] is not a color format")
                uyvy = np.frombuffer(bytes(img_msg.data), np.uint8).reshape(
                    img_msg.height, img_msg.width // 2, 4).astype(np.float32)  # fmt: skip
                u, y0, v, y1 = (uyvy[..., i] for i in range(4))
                y = np.stack([y0, y1], -1).reshape(img_msg.height, img_msg.width)
                u = np.repeat(u, 2, 1) - 128
                v = np.repeat(v, 2, 1) - 128
                rgb = np.stack([y + 1.402 * v, y - 0.344 * u - 0.714 * v, y + 1.772 * u], -1)
                return np.clip(rgb, 0, 255).astype(np.uint8)

        self.CvBridge = CvBridge


class _Msg:
    def __init__(self, encoding, height, width, data, step=None):
        self.encoding, self.height, self.width, self.data = encoding, height, width, data
        self.step = step if step is not None else len(data) // max(height, 1)


def test_other_encodings_go_through_cv_bridge_or_name_it(monkeypatch):
    import sys

    from mobius_ros.conversions import ImageError, image_msg_to_rgb

    grey = np.full((4, 6, 2), 128, np.uint8)
    grey[..., 1] = 90  # UYVY: U=V=128 (no colour), Y=90
    msg = _Msg("yuv422", 4, 6, grey.tobytes())
    monkeypatch.setitem(sys.modules, "cv_bridge", None)  # not installed
    with pytest.raises(ImageError, match="needs cv_bridge"):
        image_msg_to_rgb(msg)
    fake = _FakeCvBridgeModule()
    monkeypatch.setitem(sys.modules, "cv_bridge", fake)
    rgb = image_msg_to_rgb(msg)
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8 and np.all(rgb == 90)
    assert fake.calls == [("yuv422", "rgb8")]
    with pytest.raises(ImageError, match=r"cv_bridge cannot convert .*'bayer_rggb16'"):
        image_msg_to_rgb(_Msg("bayer_rggb16", 4, 6, bytes(48)))
    # the fast path and the depth refusal never reach cv_bridge
    assert image_msg_to_rgb(_Msg("rgb8", 2, 2, bytes(12))).shape == (2, 2, 3)
    with pytest.raises(ImageError, match="depth"):
        image_msg_to_rgb(_Msg("16UC1", 2, 2, bytes(8)))
    with pytest.raises(ImageError, match="larger than"):
        image_msg_to_rgb(_Msg("yuv422", 10_000, 10_000, b""))
    assert len(fake.calls) == 2
