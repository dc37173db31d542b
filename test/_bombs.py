"""Compressed images that claim (or really have) huge sizes, for the decoding-limit tests.

* :func:`png_claiming` / :func:`jpeg_claiming`: a real small image whose header is rewritten to
  another size (a valid PNG chunk CRC), as a broken or hostile driver could send;
* :func:`png_bomb`: a real PNG of ``width x height`` black grey pixels, built chunk by chunk
  with a streaming zlib compressor so the raw image is never held in memory (20000x20000 is
  ~400 kB compressed and 1.2 GB once decoded to RGB).
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def small_png(height: int = 8, width: int = 8) -> bytes:
    ok, buf = cv2.imencode(".png", np.full((height, width, 3), 127, np.uint8))
    assert ok
    return buf.tobytes()


def small_jpeg(height: int = 8, width: int = 8) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.full((height, width, 3), 127, np.uint8))
    assert ok
    return buf.tobytes()


def png_claiming(width: int, height: int) -> bytes:
    """A small real PNG whose IHDR says ``width x height`` (CRC recomputed)."""
    png = small_png()
    assert png[12:16] == b"IHDR"
    ihdr = struct.pack(">II", width, height) + png[24:29]
    return png[:8] + _chunk(b"IHDR", ihdr) + png[33:]


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real baseline JPEG whose SOF0 segment says ``width x height``."""
    jpg = bytearray(small_jpeg())
    sof = jpg.find(b"\xff\xc0")
    assert sof > 0
    jpg[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(jpg)


def png_bomb(width: int, height: int) -> bytes:
    """A valid 8-bit greyscale PNG of zeros, compressed row by row (memory: one row)."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    z = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0 + pixels
    parts = [z.compress(row) for _ in range(height)]
    parts.append(z.flush())
    return PNG_SIGNATURE + header + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
