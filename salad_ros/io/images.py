"""sensor_msgs/Image and CompressedImage to RGB arrays, without cv_bridge.

Works on any object with the message's fields (rclpy messages, ``rosbags`` messages, plain
namespaces), so the live node and offline replay decode images identically. Every failure is
an :class:`ImageDecodeError` whose ``kind`` is a short counter name for diagnostics; no other
exception leaves the decoders.

``max_pixels`` bounds what a message may cost: a raw Image is refused from its ``width`` and
``height`` fields, a compressed one from the size in its JPEG, PNG or WebP header, before any
pixel is decoded (a 400 kB PNG can hold 20000x20000 zeros: 1.2 GB decoded). With a limit, a
compressed format whose size can't be read first is not decoded at all.
"""

from __future__ import annotations

import struct
from typing import Any

import cv2
import numpy as np

from ..params import one_line

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
ERROR_KINDS = ("unsupported_encoding", "wrong_size", "empty", "undecodable", "too_large")


class ImageDecodeError(ValueError):
    """An image message that cannot be decoded; ``kind`` is one of :data:`ERROR_KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _check_pixels(width: int, height: int, max_pixels: int | None, what: str) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageDecodeError("too_large", f"{what} is {width}x{height} = {width * height} pixels, more than "
                                            f"max_image_pixels ({max_pixels}); not decoded")


def raw_to_rgb(encoding: str, height: int, width: int, step: int, data: Any, is_bigendian: int = 0,
               max_pixels: int | None = None) -> np.ndarray:
    """Decode the fields of a sensor_msgs/Image into a contiguous uint8 ``HxWx3`` RGB array.

    Row padding (``step`` larger than a row) is dropped; 16-bit mono is scaled to 8 bits by
    255/65535 with rounding (what cv_bridge does for a mono16 -> rgb8 conversion). An image of
    more than ``max_pixels`` pixels is refused before its data is read.
    """
    if encoding not in _RAW_ENCODINGS:
        raise ImageDecodeError(
            "unsupported_encoding", f"unsupported image encoding '{encoding}' (supported: {', '.join(SUPPORTED_ENCODINGS)})"
        )
    if height <= 0 or width <= 0:
        raise ImageDecodeError("empty", f"image has zero size ({width}x{height})")
    _check_pixels(width, height, max_pixels, f"{encoding} image")
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


# JPEG start-of-frame markers (SOF0..SOF15 without DHT C4, JPG C8, DAC CC): they hold the size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# JPEG markers without a length field: TEM, RST0..RST7 (SOI and EOI are handled on their own).
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def encoded_image_size(data: bytes) -> tuple[str, int, int] | None:
    """``(format, width, height)`` read from the header of a JPEG, PNG or WebP file, without
    decoding it; None when ``data`` is none of these or its header is cut short or malformed."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return ("png", width, height) if width and height else None
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
    except (struct.error, IndexError):
        return None
    return None


def _jpeg_size(data: bytes) -> tuple[str, int, int] | None:
    """Walk the marker segments after SOI up to the first start-of-frame segment."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _JPEG_STANDALONE:
            i += 2
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # a second SOI, EOI, or scan data before any frame header
            return None
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            # height 0 means "defined later by a DNL marker", which libjpeg does not support
            return ("jpeg", width, height) if width and height else None
        if length < 2:
            return None
        i += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[str, int, int] | None:
    chunk, body = data[12:16], data[20:30]
    if chunk == b"VP8 " and body[3:6] == b"\x9d\x01\x2a":  # lossy: key frame header
        width, height = (v & 0x3FFF for v in struct.unpack("<HH", body[6:10]))
    elif chunk == b"VP8L" and body[:1] == b"\x2f":  # lossless: 14-bit sizes minus one
        bits = int.from_bytes(body[1:5], "little")
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif chunk == b"VP8X":  # extended: 24-bit canvas sizes minus one
        width, height = int.from_bytes(body[4:7], "little") + 1, int.from_bytes(body[7:10], "little") + 1
    else:
        return None
    return ("webp", width, height) if width and height else None


def compressed_to_rgb(fmt: str, data: Any, max_pixels: int | None = None) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (jpeg, png or webp) into uint8 ``HxWx3`` RGB.

    With ``max_pixels``, the size is read from the header first and a larger image is refused
    (``too_large``) without being decoded; so is a format whose size can't be read. Without it,
    OpenCV decodes any format it knows, within its own limit (``OPENCV_IO_MAX_IMAGE_PIXELS``).
    """
    raw = bytes(data) if not isinstance(data, np.ndarray) else data.tobytes()
    what = f"compressed image ({fmt or 'no format'}, {len(raw)} bytes)"
    if not raw:
        raise ImageDecodeError("empty", f"compressed image ({fmt or 'no format'}) has no data")
    if max_pixels is not None:
        size = encoded_image_size(raw)
        if size is None:
            raise ImageDecodeError("undecodable", f"{what}: its size can't be read from the header (JPEG, PNG or "
                                                  "WebP expected), so it is not decoded")
        _check_pixels(size[1], size[2], max_pixels, f"{what} {size[0]}")
    try:
        img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)  # BGR; grey is expanded to 3 channels
        rgb = None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    except Exception as exc:  # noqa: BLE001 - cv2.error, MemoryError, ...: one more bad frame
        raise ImageDecodeError("undecodable", f"{what} cannot be decoded: {one_line(exc)}") from exc
    if rgb is None:
        raise ImageDecodeError("undecodable", f"{what} cannot be decoded")
    return rgb


def msg_to_rgb(msg: Any, max_pixels: int | None = None) -> np.ndarray:
    """Decode an Image or CompressedImage message (any implementation with the ROS fields);
    images of more than ``max_pixels`` pixels are refused before decoding (``too_large``)."""
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        return compressed_to_rgb(msg.format, msg.data, max_pixels)
    return raw_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian, max_pixels)


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
