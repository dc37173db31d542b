"""Field access shared by rclpy messages and ``rosbags`` messages (same field names)."""

from __future__ import annotations

from typing import Any

from ..geometry import Pose


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_sec_nanosec(stamp_ns: int) -> tuple[int, int]:
    """Integer nanoseconds -> (sec, nanosec) as in builtin_interfaces/Time."""
    return int(stamp_ns // 1_000_000_000), int(stamp_ns % 1_000_000_000)


def pose_from_msg(msg: Any) -> Pose:
    """A :class:`Pose` from nav_msgs/Odometry, geometry_msgs/PoseStamped,
    PoseWithCovarianceStamped, PoseWithCovariance or Pose."""
    p = msg
    while not hasattr(p, "position"):  # unwrap .pose (Odometry and *Stamped nest it once or twice)
        if not hasattr(p, "pose"):
            raise TypeError(f"{type(msg).__name__} carries no pose")
        p = p.pose
    t, q = p.position, p.orientation
    return Pose(float(t.x), float(t.y), float(t.z), float(q.x), float(q.y), float(q.z), float(q.w))
