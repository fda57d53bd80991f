"""Pure conversions between ROS message fields and arrays (no rclpy here).

Images come in as the fields of ``sensor_msgs/Image`` (encoding, height, width, step, data)
or of ``sensor_msgs/CompressedImage`` (format, data) and leave as [H,W,3] uint8 RGB arrays;
results leave as plain tuples and arrays the node copies into messages. Every rejection is
an :class:`ImageError` whose message names the problem and what to publish instead.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mobius_core.postprocess import Instances
from mobius_core.rle import encode_rle_uncompressed

# encoding -> (channels, index of R, G, B in the pixel)
ENCODINGS: dict[str, tuple[int, tuple[int, int, int]]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
    "8UC3": (3, (2, 1, 0)),  # OpenCV's default channel order is BGR
    "8UC1": (1, (0, 0, 0)),
}
MAX_PIXELS = 8192 * 8192  # the default limit (the node's max_image_pixels)
DEPTH_ENCODINGS = ("16UC1", "32FC1")


class ImageError(ValueError):
    """An image message the node cannot use; the text says why and what to send."""


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if height <= 0 or width <= 0:
        raise ImageError(f"image has zero size ({width}x{height}); check the camera driver")
    if height * width > max_pixels:
        raise ImageError(
            f"image {width}x{height} ({height * width} pixels) is larger than max_image_pixels "
            f"= {max_pixels}; publish a smaller image (image_proc resize) or raise the limit"
        )


def image_to_rgb(
    encoding: str, height: int, width: int, step: int, data: bytes | memoryview,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:  # fmt: skip
    """``sensor_msgs/Image`` fields -> [H,W,3] uint8 RGB (a view where the layout allows)."""
    if encoding not in ENCODINGS:
        hint = (
            "depth images are not segmented; publish the colour stream on `image` (and the "
            "registered depth on `depth`, with use_depth:=true, for 3D)"
            if encoding in DEPTH_ENCODINGS
            else "publish rgb8, bgr8, rgba8, bgra8 or mono8 (image_proc can convert)"
        )
        raise ImageError(f"unsupported image encoding {encoding!r}: {hint}")
    _check_size(width, height, max_pixels)
    channels, order = ENCODINGS[encoding]
    row = width * channels
    if step < row:
        raise ImageError(
            f"step {step} is smaller than width*channels = {row} for {encoding} {width}x{height}; "
            "the message is malformed"
        )
    if len(data) < step * (height - 1) + row:
        raise ImageError(
            f"image data has {len(data)} bytes, {width}x{height} {encoding} with step {step} "
            f"needs {step * height}; the message is truncated"
        )
    buf = np.frombuffer(data, dtype=np.uint8)
    if len(buf) < step * height:  # the last row may lack its padding
        buf = np.concatenate([buf, np.zeros(step * height - len(buf), np.uint8)])
    rows = buf[: step * height].reshape(height, step)[:, :row].reshape(height, width, channels)
    if order == (0, 1, 2) and channels == 3:
        return rows
    return np.ascontiguousarray(rows[:, :, list(order)])


def image_msg_to_rgb(msg: Any, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A ``sensor_msgs/Image`` -> [H,W,3] uint8 RGB: the NumPy path for 8-bit colour and
    mono, cv_bridge for the other encodings it knows (yuv422, bayer_*, 16-bit colour, mono16).
    Without cv_bridge those are refused with a message that names it."""
    enc = msg.encoding
    if enc in ENCODINGS or enc in DEPTH_ENCODINGS:
        return image_to_rgb(enc, msg.height, msg.width, msg.step, msg.data, max_pixels)
    _check_size(msg.width, msg.height, max_pixels)
    try:
        from cv_bridge import CvBridge
    except ImportError:
        raise ImageError(
            f"image encoding {enc!r} needs cv_bridge to convert (every ROS 2 install has it: "
            "ros-<distro>-cv-bridge), or publish rgb8, bgr8, rgba8, bgra8 or mono8"
        ) from None
    try:
        rgb = CvBridge().imgmsg_to_cv2(msg, desired_encoding="rgb8")
    except Exception as exc:  # CvBridgeError and OpenCV's errors: the text names the cause
        raise ImageError(
            f"cv_bridge cannot convert a {msg.width}x{msg.height} {enc!r} image to rgb8: {exc}; "
            "publish rgb8, bgr8, rgba8, bgra8 or mono8"
        ) from exc
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape != (msg.height, msg.width, 3):
        raise ImageError(
            f"cv_bridge returned {rgb.dtype} {rgb.shape} for a {msg.width}x{msg.height} {enc!r} "
            "image, expected uint8 (H, W, 3)"
        )
    return np.ascontiguousarray(rgb)


def compressed_to_rgb(
    fmt: str, data: bytes | memoryview, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` fields (jpeg/png) -> [H,W,3] uint8 RGB.

    The size comes from the header first: an image over ``max_pixels`` is refused before
    any pixel is decoded (a small PNG can expand to gigabytes)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    if len(data) == 0:
        raise ImageError("compressed image has no data; check the image_transport publisher")
    if "compressedDepth" in fmt:
        raise ImageError(f"compressed depth ({fmt!r}) is not segmented; subscribe the colour topic")
    what = f"compressed image ({fmt!r}, {len(data)} bytes)"
    try:
        with warnings.catch_warnings():  # PIL's own bomb warning: the limit below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(bytes(data))) as im:  # reads the header only
                _check_size(im.width, im.height, max_pixels)
                im.load()
                rgb = im.convert("RGB")
    except ImageError:  # over max_pixels, from the header
        raise
    except UnidentifiedImageError:
        head = bytes(data[:8]).hex(" ")
        raise ImageError(
            f"{what} is not a JPEG or PNG image (it starts with bytes {head}); publish jpeg or png"
        ) from None
    except Image.DecompressionBombError as exc:  # over PIL's own hard limit, also from the header
        raise ImageError(f"{what} is too large to decode: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{what} cannot be decoded: {exc}; publish jpeg or png") from exc
    return np.asarray(rgb)


def rgb_to_image_fields(rgb: np.ndarray) -> tuple[int, int, int, bytes]:
    """[H,W,3] uint8 RGB -> (height, width, step, data) of an rgb8 ``sensor_msgs/Image``.
    ``data`` is ``bytes``: rclpy copies it in about 1 ms, a NumPy array takes hundreds."""
    h, w = rgb.shape[:2]
    return h, w, 3 * w, np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()


def instance_ids(instances: Instances, ids: Sequence[int] | None = None) -> list[int]:
    """The published id of each instance: the tracker's ``ids``, else 1..N."""
    if ids is None:
        return list(range(1, len(instances) + 1))
    if len(ids) != len(instances):
        raise ValueError(f"{len(ids)} ids for {len(instances)} instances")
    return [int(i) for i in ids]


def label_image(
    instances: Instances, shape: tuple[int, int], ids: Sequence[int] | None = None
) -> np.ndarray:
    """[H,W] uint16: pixel = id of the instance covering it (``ids``, else i + 1 for
    instance i), 0 for background. Where masks overlap the higher-scoring instance wins.
    Ids above 65535 wrap (a tracker's ids keep counting up)."""
    out = np.zeros(shape, dtype=np.uint16)
    if len(instances) >= 65535:
        raise ValueError(f"{len(instances)} instances do not fit a mono16 label image")
    values = [(v - 1) % 65535 + 1 for v in instance_ids(instances, ids)]  # never 0
    for i in np.argsort(instances.scores, kind="stable"):  # low scores first, high on top
        out[np.asarray(instances.masks[i], dtype=bool)] = values[i]
    return out


@dataclass
class InstanceFields:
    """The fields of one ``mobius_ros/Instance``."""

    id: int
    label: str
    prompt_index: int
    score: float
    box: tuple[float, float, float, float]
    mask_height: int
    mask_width: int
    mask_rle_counts: list[int]


def instance_fields(instances: Instances, ids: Sequence[int] | None = None) -> list[InstanceFields]:
    """Instances -> per-instance message fields (``ids`` from the tracker, else 1..N; masks
    as uncompressed COCO RLE)."""
    out = []
    published = instance_ids(instances, ids)
    for i in range(len(instances)):
        mask = np.asarray(instances.masks[i], dtype=bool)
        label = instances.label_texts[i] if i < len(instances.label_texts) else ""
        out.append(
            InstanceFields(
                id=published[i],
                label=label,
                prompt_index=int(instances.labels[i]),
                score=float(instances.scores[i]),
                box=tuple(float(v) for v in instances.boxes[i]),
                mask_height=int(mask.shape[0]),
                mask_width=int(mask.shape[1]),
                mask_rle_counts=encode_rle_uncompressed(mask)["counts"],
            )
        )
    return out
