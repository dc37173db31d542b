"""sensor_msgs/PointCloud2 as a typed table, without ROS imports.

The node publishes loop candidates and keyframes as PointCloud2 messages with ``height = 1``
and one "point" per row, so any ROS 2 consumer can read them with stock tools
(``sensor_msgs_py.point_cloud2.read_points``, ``PointCloud2ConstIterator`` in C++) and no custom
message package. This module converts between such a message's fields and a numpy structured
array; it works on rclpy messages, ``rosbags`` messages or anything with the same attributes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# sensor_msgs/PointField datatype constants.
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)
_NUMPY_TYPES = {INT8: "i1", UINT8: "u1", INT16: "i2", UINT16: "u2", INT32: "i4", UINT32: "u4", FLOAT32: "f4", FLOAT64: "f8"}

#: ``~/loop_candidates``: one row per candidate of one query image (header = the query's header).
CANDIDATE_COLUMNS: tuple[tuple[str, int], ...] = (
    ("query_id", UINT32),  # keyframe id of the query image (only keyframes are matched)
    ("match_id", UINT32),  # matched keyframe id (see ~/keyframes of robot match_robot_id)
    ("match_stamp_sec", INT32),  # matched keyframe's image stamp
    ("match_stamp_nanosec", UINT32),
    ("score", FLOAT32),  # cosine similarity of the SALAD descriptors, higher is better
    ("rank", UINT32),  # 0 = best candidate of this query
    ("inliers", UINT32),  # geometric verification inliers (0 when not checked)
    ("verified", UINT8),  # 1 = passed geometric verification, 0 = not checked (verification off)
    # Relative pose (salad_ros.relative_pose): the query keyframe's pose in the match keyframe's
    # frame, X_match = R X_query + t, camera optical frames (base frames with camera_to_base).
    ("pose_status", UINT8),  # 0 = none (identity, zeros, stds inf), 1 = rotation + direction (|t| = 1), 2 = metric
    ("tx", FLOAT64),
    ("ty", FLOAT64),
    ("tz", FLOAT64),
    ("qx", FLOAT64),
    ("qy", FLOAT64),
    ("qz", FLOAT64),
    ("qw", FLOAT64),
    ("rotation_std_rad", FLOAT32),  # worst-axis std of the rotation [rad]
    ("translation_std_m", FLOAT32),  # worst-axis std of t [m]; status 1: of the unit direction [rad]
    # Robot that made the matched keyframe (multi-robot, salad_ros.fleet): the node's own robot_id for
    # its own loops; match_id is then that robot's keyframe number (see its ~/keyframes).
    ("match_robot_id", UINT32),
)
#: ``~/keyframes``: one row per new keyframe.
KEYFRAME_COLUMNS: tuple[tuple[str, int], ...] = (
    ("keyframe_id", UINT32),
    ("stamp_sec", INT32),
    ("stamp_nanosec", UINT32),
)


@dataclass(frozen=True)
class Field:
    """One sensor_msgs/PointField: name, byte offset in the row, datatype constant, count."""

    name: str
    offset: int
    datatype: int
    count: int = 1


def layout(columns: Sequence[tuple[str, int]]) -> tuple[list[Field], int]:
    """Fields packed back to back (no padding) and the row size in bytes (``point_step``)."""
    fields, offset = [], 0
    for name, datatype in columns:
        fields.append(Field(name, offset, datatype))
        offset += np.dtype(_NUMPY_TYPES[datatype]).itemsize
    return fields, offset


def fields_dtype(fields: Iterable[Any], point_step: int, big_endian: bool = False) -> np.dtype:
    """numpy structured dtype of a row described by PointField-like objects."""
    order = ">" if big_endian else "<"
    names, formats, offsets = [], [], []
    for f in fields:
        if f.datatype not in _NUMPY_TYPES:
            raise ValueError(f"field '{f.name}' has unknown PointField datatype {f.datatype}")
        base = np.dtype(order + _NUMPY_TYPES[f.datatype])
        names.append(f.name)
        formats.append(base if int(f.count) == 1 else (base, (int(f.count),)))
        offsets.append(int(f.offset))
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": int(point_step)})


def make_rows(columns: Sequence[tuple[str, int]], records: Iterable[Mapping[str, Any]]) -> np.ndarray:
    """Structured array (little-endian, packed) of ``records`` with exactly ``columns``."""
    fields, step = layout(columns)
    dtype = fields_dtype(fields, step)
    return np.array([tuple(r[name] for name, _ in columns) for r in records], dtype=dtype)


def pack(columns: Sequence[tuple[str, int]], rows: np.ndarray) -> tuple[list[Field], int, bytes]:
    """``(fields, point_step, data)`` for a PointCloud2 holding ``rows`` (a structured array)."""
    fields, step = layout(columns)
    dtype = fields_dtype(fields, step)
    arr = np.ascontiguousarray(rows.astype(dtype, copy=False))
    return fields, step, arr.tobytes()


def unpack(fields: Iterable[Any], point_step: int, data: Any, width: int, height: int = 1,
           is_bigendian: bool = False) -> np.ndarray:
    """Rows of a PointCloud2's data as a structured array (one element per point)."""
    dtype = fields_dtype(fields, point_step, bool(is_bigendian))
    n = int(width) * int(height)
    buf = memoryview(data).cast("B") if not isinstance(data, np.ndarray) else data.tobytes()
    if len(buf) < n * point_step:
        raise ValueError(f"PointCloud2 data has {len(buf)} bytes, {n} rows of {point_step} need {n * point_step}")
    return np.frombuffer(buf, dtype=dtype, count=n).copy()


def cloud_to_table(msg: Any) -> np.ndarray:
    """Rows of a sensor_msgs/PointCloud2 message (rclpy or rosbags) as a structured array."""
    return unpack(msg.fields, msg.point_step, msg.data, msg.width, msg.height, msg.is_bigendian)
