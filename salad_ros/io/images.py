"""sensor_msgs/Image and CompressedImage to RGB arrays, without cv_bridge.

Works on any object with the message's fields (rclpy messages, ``rosbags`` messages, plain
namespaces), so the live node and offline replay decode images identically. Every failure is
an :class:`ImageDecodeError` whose ``kind`` is a short counter name for diagnostics.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

#: encoding -> (channels, numpy dtype, OpenCV conversion to RGB or None)
_RAW_ENCODINGS: dict[str, tuple[int, type, int | None]] = {
    "rgb8": (3, np.uint8, None),
    "bgr8": (3, np.uint8, cv2.COLOR_BGR2RGB),
    "rgba8": (4, np.uint8, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, np.uint8, cv2.COLOR_BGRA2RGB),
    "mono8": (1, np.uint8, cv2.COLOR_GRAY2RGB),
    "8UC1": (1, np.uint8, cv2.COLOR_GRAY2RGB),
    "mono16": (1, np.uint16, cv2.COLOR_GRAY2RGB),
    "16UC1": (1, np.uint16, cv2.COLOR_GRAY2RGB),
}
SUPPORTED_ENCODINGS = tuple(_RAW_ENCODINGS)

#: Counter names, in the order diagnostics list them.
ERROR_KINDS = ("unsupported_encoding", "wrong_size", "empty", "undecodable")


class ImageDecodeError(ValueError):
    """An image message that cannot be decoded; ``kind`` is one of :data:`ERROR_KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def raw_to_rgb(encoding: str, height: int, width: int, step: int, data: Any, is_bigendian: int = 0) -> np.ndarray:
    """Decode the fields of a sensor_msgs/Image into a contiguous uint8 ``HxWx3`` RGB array.

    Row padding (``step`` larger than a row) is dropped; 16-bit mono is scaled to 8 bits by
    255/65535 with rounding (what cv_bridge does for a mono16 -> rgb8 conversion).
    """
    if encoding not in _RAW_ENCODINGS:
        raise ImageDecodeError(
            "unsupported_encoding", f"unsupported image encoding '{encoding}' (supported: {', '.join(SUPPORTED_ENCODINGS)})"
        )
    if height <= 0 or width <= 0:
        raise ImageDecodeError("empty", f"image has zero size ({width}x{height})")
    channels, dtype, conversion = _RAW_ENCODINGS[encoding]
    itemsize = np.dtype(dtype).itemsize
    row_bytes = width * channels * itemsize
    buf = np.frombuffer(memoryview(data).cast("B") if not isinstance(data, np.ndarray) else data.tobytes(), np.uint8)
    if step < row_bytes:
        raise ImageDecodeError("wrong_size", f"{encoding} image step {step} is smaller than a row ({row_bytes} bytes)")
    if buf.size != step * height:
        raise ImageDecodeError(
            "wrong_size", f"{encoding} {width}x{height} image with step {step} needs {step * height} bytes, got {buf.size}"
        )
    rows = buf.reshape(height, step)[:, :row_bytes]
    pixels = rows.view(np.dtype(dtype).newbyteorder(">" if is_bigendian else "<") if itemsize > 1 else dtype)
    img = pixels.reshape(height, width, channels) if channels > 1 else pixels.reshape(height, width)
    if itemsize > 1:
        img = cv2.convertScaleAbs(img.astype(np.uint16), alpha=255.0 / 65535.0)
    if conversion is None:
        # rgb8 needs no conversion: copy anyway, so the result is writable and does not alias
        # (or keep alive) the message's buffer
        return np.array(img, dtype=np.uint8, order="C", copy=True)
    return cv2.cvtColor(np.ascontiguousarray(img), conversion)


def compressed_to_rgb(fmt: str, data: Any) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (jpeg or png) into uint8 ``HxWx3`` RGB."""
    buf = np.frombuffer(bytes(data) if not isinstance(data, np.ndarray) else data.tobytes(), np.uint8)
    if buf.size == 0:
        raise ImageDecodeError("empty", f"compressed image ({fmt or 'no format'}) has no data")
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)  # BGR; grayscale input is expanded to 3 channels
    if img is None:
        raise ImageDecodeError("undecodable", f"compressed image ({fmt or 'no format'}, {buf.size} bytes) cannot be decoded")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def msg_to_rgb(msg: Any) -> np.ndarray:
    """Decode an Image or CompressedImage message (any implementation with the ROS fields)."""
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        return compressed_to_rgb(msg.format, msg.data)
    return raw_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian)


def rgb_to_raw(rgb: np.ndarray, encoding: str = "rgb8") -> tuple[int, int, int, bytes]:
    """Encode RGB pixels as (height, width, step, data) of a sensor_msgs/Image in ``encoding``
    (rgb8, bgr8 or mono8): the inverse of :func:`raw_to_rgb`, for publishers and test data."""
    if encoding == "rgb8":
        out = rgb
    elif encoding == "bgr8":
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    elif encoding == "mono8":
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    else:
        raise ValueError(f"rgb_to_raw does not write '{encoding}'")
    out = np.ascontiguousarray(out)
    h, w = out.shape[:2]
    return h, w, out.strides[0], out.tobytes()


def rgb_to_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB image (for CompressedImage publishers and bags)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()
