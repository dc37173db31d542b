"""Image message decoding (salad_ros.io.images): every encoding, row padding, every error kind,
and, where cv_bridge is importable, equality with cv_bridge."""

from __future__ import annotations

import array
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from _bombs import jpeg_claiming, png_bomb, png_claiming, small_jpeg, small_png
from sensor_msgs.msg import CompressedImage, Image

from salad_ros.io.images import (
    ERROR_KINDS,
    ImageDecodeError,
    compressed_to_rgb,
    encoded_image_size,
    msg_to_rgb,
    raw_to_rgb,
    rgb_to_jpeg,
    rgb_to_raw,
)

H, W = 5, 7  # odd width: rows of 3-byte pixels are not 4-byte aligned
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (H, W, 1), dtype=np.uint8)
GRAY = cv2.cvtColor(RGB, cv2.COLOR_RGB2GRAY)
RAW_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")


def _pixels(encoding: str) -> np.ndarray:
    """The pixel array a camera would send in ``encoding`` for the scene RGB (and ALPHA)."""
    return {
        "rgb8": RGB,
        "bgr8": RGB[..., ::-1],
        "rgba8": np.concatenate([RGB, ALPHA], axis=2),
        "bgra8": np.concatenate([RGB[..., ::-1], ALPHA], axis=2),
        "mono8": GRAY,
    }[encoding]


def _expected(encoding: str) -> np.ndarray:
    return np.repeat(GRAY[..., None], 3, axis=2) if encoding == "mono8" else RGB


def _with_padding(pixels: np.ndarray, pad: int, big_endian: bool = False) -> tuple[int, bytes]:
    """(step, data) with ``pad`` garbage bytes after every row, as some drivers send."""
    if pixels.dtype.itemsize > 1:
        pixels = pixels.astype(pixels.dtype.newbyteorder(">" if big_endian else "<"))
    rows = np.ascontiguousarray(pixels).reshape(pixels.shape[0], -1).view(np.uint8)
    garbage = np.full((rows.shape[0], pad), 0xAB, np.uint8)
    padded = np.concatenate([rows, garbage], axis=1)
    return padded.shape[1], padded.tobytes()


def _image_msg(encoding: str, pixels: np.ndarray, pad: int = 0, big_endian: bool = False) -> Image:
    step, data = _with_padding(pixels, pad, big_endian)
    msg = Image(encoding=encoding, height=pixels.shape[0], width=pixels.shape[1], step=step,
                is_bigendian=int(big_endian))
    msg.data = array.array("B", data)
    return msg


@pytest.mark.parametrize("pad", [0, 3, 64])
@pytest.mark.parametrize("encoding", RAW_ENCODINGS)
def test_raw_encodings_with_and_without_row_padding(encoding, pad):
    msg = _image_msg(encoding, _pixels(encoding), pad)
    out = msg_to_rgb(msg)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, _expected(encoding))


@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("pad", [0, 2, 5])
def test_mono16_scaled_to_8_bits_in_either_byte_order(encoding, big_endian, pad):
    values = np.array([[0, 1, 128, 129, 257, 32767, 32768, 65535]] * 3, np.uint16)
    values[1] = RNG.integers(0, 65536, values.shape[1])
    msg = _image_msg(encoding, values, pad, big_endian)
    out = msg_to_rgb(msg)
    expected = np.round(values.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)
    np.testing.assert_array_equal(out, np.repeat(expected[..., None], 3, axis=2))
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255


def test_rgb8_result_is_writable_and_does_not_alias_the_message():
    msg = _image_msg("rgb8", RGB)
    out = msg_to_rgb(msg)
    out[0, 0, 0] ^= 0xFF  # must not raise (read-only) nor change the message
    assert msg.data[0] == RGB[0, 0, 0]
    ro = raw_to_rgb("rgb8", H, W, W * 3, RGB.tobytes())  # immutable bytes input
    assert ro.flags.writeable


def test_plain_objects_with_message_fields_decode_too():
    """rosbags messages carry numpy arrays; anything with the fields works."""
    step, data = _with_padding(RGB[..., ::-1], 1)
    msg = SimpleNamespace(encoding="bgr8", height=H, width=W, step=step, is_bigendian=0,
                          data=np.frombuffer(data, np.uint8))
    np.testing.assert_array_equal(msg_to_rgb(msg), RGB)


def test_compressed_png_is_exact_and_jpeg_close():
    ok, png = cv2.imencode(".png", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    assert ok
    np.testing.assert_array_equal(msg_to_rgb(CompressedImage(format="png", data=png.tobytes())), RGB)
    # JPEG is lossy: a smooth image comes back close
    yy, xx = np.mgrid[0:48, 0:64]
    smooth = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=2).astype(np.uint8)
    out = msg_to_rgb(CompressedImage(format="jpeg", data=rgb_to_jpeg(smooth, quality=95)))
    assert out.shape == smooth.shape
    assert np.abs(out.astype(int) - smooth).mean() < 3.0
    # single-channel PNG is expanded to three equal channels
    ok, gray_png = cv2.imencode(".png", GRAY)
    out = compressed_to_rgb("png", array.array("B", gray_png.tobytes()))
    np.testing.assert_array_equal(out, np.repeat(GRAY[..., None], 3, axis=2))


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8"])
def test_rgb_to_raw_round_trip(encoding):
    h, w, step, data = rgb_to_raw(RGB, encoding)
    out = raw_to_rgb(encoding, h, w, step, data)
    np.testing.assert_array_equal(out, _expected(encoding))


def _kind(fn, *args) -> str:
    with pytest.raises(ImageDecodeError) as info:
        fn(*args)
    assert str(info.value)  # a message for the log
    return info.value.kind


def test_every_error_kind():
    good = RGB.tobytes()
    assert _kind(raw_to_rgb, "yuv422", H, W, W * 2, good) == "unsupported_encoding"
    assert _kind(raw_to_rgb, "32FC1", H, W, W * 4, good) == "unsupported_encoding"
    assert _kind(raw_to_rgb, "", H, W, W * 3, good) == "unsupported_encoding"
    assert _kind(raw_to_rgb, "rgb8", H, W, W * 3, good[:-1]) == "wrong_size"  # one byte short
    assert _kind(raw_to_rgb, "rgb8", H, W, W * 3, good + b"\0") == "wrong_size"  # one byte long
    assert _kind(raw_to_rgb, "rgb8", H, W, W * 3 - 1, good) == "wrong_size"  # step shorter than a row
    assert _kind(raw_to_rgb, "mono16", H, W, W * 2, good[: H * W]) == "wrong_size"
    assert _kind(raw_to_rgb, "rgb8", 0, W, W * 3, b"") == "empty"
    assert _kind(raw_to_rgb, "rgb8", H, 0, 0, b"") == "empty"
    assert _kind(compressed_to_rgb, "jpeg", b"") == "empty"
    assert _kind(compressed_to_rgb, "jpeg", b"\xff\xd8 this is not a jpeg" * 10) == "undecodable"
    assert _kind(compressed_to_rgb, "png", bytes(range(256))) == "undecodable"
    kinds = {"unsupported_encoding", "wrong_size", "empty", "undecodable", "too_large"}
    assert set(ERROR_KINDS) == kinds


def test_error_kinds_through_messages():
    assert _kind(msg_to_rgb, Image(encoding="rgb8", height=2, width=2, step=6)) == "wrong_size"
    assert _kind(msg_to_rgb, Image(encoding="rgb8")) == "empty"
    assert _kind(msg_to_rgb, CompressedImage(format="jpeg")) == "empty"
    assert _kind(msg_to_rgb, CompressedImage(format="jpeg", data=b"garbage")) == "undecodable"


CV_BRIDGE_REASON = "cv_bridge is not importable here (it comes with a ROS install, not as a pip wheel)"


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("encoding", RAW_ENCODINGS + ("mono16",))
def test_equals_cv_bridge(encoding, pad):
    cv_bridge = pytest.importorskip("cv_bridge", reason=CV_BRIDGE_REASON)
    pixels = _pixels(encoding) if encoding != "mono16" else RNG.integers(0, 65536, (H, W), dtype=np.uint16)
    msg = _image_msg(encoding, pixels, pad)
    theirs = cv_bridge.CvBridge().imgmsg_to_cv2(msg, desired_encoding="rgb8")
    np.testing.assert_array_equal(msg_to_rgb(msg), theirs)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_equals_cv_bridge(fmt):
    cv_bridge = pytest.importorskip("cv_bridge", reason=CV_BRIDGE_REASON)
    ok, buf = cv2.imencode("." + ("jpg" if fmt == "jpeg" else "png"), cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    msg = CompressedImage(format=fmt, data=buf.tobytes())
    theirs = cv_bridge.CvBridge().compressed_imgmsg_to_cv2(msg, desired_encoding="rgb8")
    np.testing.assert_array_equal(msg_to_rgb(msg), theirs)


# ---- image size from the header, and the pixel limit ---------------------------------------------

def _encoded(ext: str, height: int, width: int, *params: int) -> bytes:
    img = RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("ext, params, fmt", [
    (".png", (), "png"),
    (".jpg", (), "jpeg"),
    (".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1), "jpeg"),  # SOF2 after DHT segments
    (".webp", (cv2.IMWRITE_WEBP_QUALITY, 80), "webp"),  # lossy: VP8
    (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101), "webp"),  # lossless: VP8L
])
def test_image_size_read_from_the_header(ext, params, fmt):
    assert encoded_image_size(_encoded(ext, 37, 53, *params)) == (fmt, 53, 37)
    assert encoded_image_size(_encoded(ext, 1, 1, *params)) == (fmt, 1, 1)


def test_image_size_of_forged_headers_and_of_garbage():
    assert encoded_image_size(png_claiming(100000, 100000)) == ("png", 100000, 100000)
    assert encoded_image_size(jpeg_claiming(60000, 50000)) == ("jpeg", 60000, 50000)
    assert encoded_image_size(png_bomb(20000, 20000)) == ("png", 20000, 20000)
    for junk in (b"", b"\x89PNG", small_png()[:20], b"\xff\xd8", b"\xff\xd8\xff\xd9", small_jpeg()[:10],
                 b"RIFF\0\0\0\0WEBP", bytes(range(256)), b"\xff\xd8 this is not a jpeg" * 10):
        assert encoded_image_size(junk) is None, junk[:20]


def test_compressed_images_above_the_limit_refused_before_decoding(monkeypatch):
    decoded = []
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decoded.append(1) or real(*a))
    limit = 25_000_000
    for data in (png_claiming(100000, 100000), png_bomb(20000, 20000), jpeg_claiming(60000, 50000),
                 png_claiming(5001, 5000)):
        with pytest.raises(ImageDecodeError, match=r"\d+x\d+.*max_image_pixels") as info:
            compressed_to_rgb("png", data, max_pixels=limit)
        assert info.value.kind == "too_large"
    assert decoded == [], "refused from the header alone"
    ok = compressed_to_rgb("png", small_png(6, 9), max_pixels=54)  # exactly at the limit: fine
    assert ok.shape == (6, 9, 3) and decoded == [1]
    # with a limit, a format whose size can't be read first is not decoded at all
    bmp = _encoded(".bmp", 4, 4)
    with pytest.raises(ImageDecodeError) as info:
        compressed_to_rgb("bmp", bmp, max_pixels=limit)
    assert info.value.kind == "undecodable" and "size" in str(info.value)
    assert compressed_to_rgb("bmp", bmp).shape == (4, 4, 3)  # without a limit OpenCV decodes it


def test_no_decoder_exception_escapes(monkeypatch):
    # OpenCV's own pixel limit raises cv2.error instead of returning None: one more bad frame
    with pytest.raises(ImageDecodeError) as info:
        compressed_to_rgb("png", png_claiming(100000, 100000))
    assert info.value.kind == "undecodable" and "\n" not in str(info.value)
    for exc in (MemoryError(), cv2.error("boom"), ValueError("odd"), RuntimeError("odd")):
        monkeypatch.setattr(cv2, "imdecode", lambda *a, exc=exc: (_ for _ in ()).throw(exc))
        with pytest.raises(ImageDecodeError) as info:
            compressed_to_rgb("jpeg", small_jpeg())
        assert info.value.kind == "undecodable"


def test_raw_images_above_the_limit_refused_before_touching_data():
    assert _kind(raw_to_rgb, "rgb8", 30000, 30000, 90000, b"", 0, 25_000_000) == "too_large"
    assert _kind(msg_to_rgb, Image(encoding="mono8", height=5001, width=5000, step=5000), 25_000_000) == "too_large"
    assert raw_to_rgb("rgb8", H, W, W * 3, RGB.tobytes(), 0, H * W).shape == (H, W, 3)
    assert _kind(raw_to_rgb, "rgb8", H, W, W * 3, RGB.tobytes(), 0, H * W - 1) == "too_large"
