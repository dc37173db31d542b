"""Depth images (sensor_msgs/Image ``16UC1`` millimetres or ``32FC1`` metres) to float32 metres.

Invalid depth (0, NaN, +-inf, negative) becomes NaN, so later code tests one thing
(``np.isfinite``). Works on message fields without ROS, like :mod:`salad_ros.io.images`;
failures raise :class:`~salad_ros.geometry.camera.PoseInputError` with ``kind`` ``depth_encoding``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..geometry.camera import PoseInputError

#: encoding -> (numpy dtype, metres per unit)
DEPTH_ENCODINGS: dict[str, tuple[type, float]] = {"16UC1": (np.uint16, 1e-3), "32FC1": (np.float32, 1.0)}


def depth_to_metres(depth: np.ndarray, encoding: str) -> np.ndarray:
    """A float32 copy of a depth array in metres, NaN where the depth is invalid."""
    if encoding not in DEPTH_ENCODINGS:
        raise PoseInputError("depth_encoding", f"unsupported depth encoding '{encoding}' (supported: 16UC1, 32FC1)")
    dtype, scale = DEPTH_ENCODINGS[encoding]
    arr = np.asarray(depth)
    if arr.dtype != dtype or arr.ndim != 2:
        raise PoseInputError("depth_encoding", f"{encoding} depth must be a 2-D {np.dtype(dtype).name} array, "
                             f"got {arr.dtype} with shape {arr.shape}")
    out = arr.astype(np.float32) * np.float32(scale)
    out[~(np.isfinite(out) & (out > 0))] = np.nan
    return out


def decode_depth(encoding: str, height: int, width: int, step: int, data: Any, is_bigendian: int = 0) -> np.ndarray:
    """Decode the fields of a depth sensor_msgs/Image into float32 metres (NaN = invalid)."""
    if encoding not in DEPTH_ENCODINGS:
        raise PoseInputError("depth_encoding", f"unsupported depth encoding '{encoding}' (supported: 16UC1, 32FC1)")
    dtype = np.dtype(DEPTH_ENCODINGS[encoding][0]).newbyteorder(">" if is_bigendian else "<")
    buf = np.frombuffer(data if isinstance(data, (bytes, bytearray, memoryview)) else bytes(data), np.uint8)
    row_bytes = width * dtype.itemsize
    if height <= 0 or width <= 0 or step < row_bytes or buf.size != step * height:
        raise PoseInputError("depth_encoding", f"{encoding} depth {width}x{height} with step {step} "
                             f"does not fit {buf.size} bytes of data")
    rows = buf.reshape(height, step)[:, :row_bytes]
    pixels = np.ascontiguousarray(rows).view(dtype).reshape(height, width)
    return depth_to_metres(pixels.astype(dtype.newbyteorder("=")), encoding)


def depth_msg_to_metres(msg: Any) -> np.ndarray:
    """Decode a depth sensor_msgs/Image (any object with its fields) into float32 metres."""
    return decode_depth(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian)
