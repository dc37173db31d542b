"""Bytes a sensor_msgs/PointCloud2 takes on the wire, without ROS.

DDS (rmw_fastrtps, rmw_cyclonedds) sends ROS 2 messages as XCDR1: a 4-byte encapsulation header,
then the fields in order, each primitive aligned to its own size (relative to the end of that
header), strings and sequences as a UINT32 length followed by the elements (strings with their
terminating NUL). ``test/test_fleet_wire.py`` checks :func:`cdr_size` against
``rclpy.serialization.serialize_message``.
"""

from __future__ import annotations

from collections.abc import Sequence


def cdr_size(frame_id: str, field_names: Sequence[str], data_len: int) -> int:
    """Serialized size of a PointCloud2 with this frame id, these field names and data bytes."""
    pos = 8  # header.stamp: sec, nanosec

    def string(pos: int, s: str) -> int:
        return _align(pos, 4) + 4 + len(s.encode("utf-8")) + 1

    pos = string(pos, frame_id)
    pos = _align(pos, 4) + 4 + 4 + 4  # height, width, fields length
    for name in field_names:
        pos = string(pos, name)
        pos = _align(pos, 4) + 4 + 1  # offset, datatype
        pos = _align(pos, 4) + 4  # count
    pos += 1  # is_bigendian
    pos = _align(pos, 4) + 4 + 4 + 4 + data_len + 1  # point_step, row_step, data length + bytes, is_dense
    return 4 + pos


def _align(pos: int, n: int) -> int:
    return pos + (-pos % n)
