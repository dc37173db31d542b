"""Geometry without ROS: keyframe poses and their maths (:mod:`.pose`, numpy only, imported here),
and two-view geometry for relative poses (:mod:`.camera`, :mod:`.features`, :mod:`.solvers`, ...,
which need OpenCV and are imported only by those who use them)."""

from .pose import Pose, pose_to_row, rotation_angle, row_to_pose, translation_distance

__all__ = ["Pose", "pose_to_row", "rotation_angle", "row_to_pose", "translation_distance"]
