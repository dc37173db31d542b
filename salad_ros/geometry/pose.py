"""Keyframe poses and their maths: :class:`Pose`, distances, angles and the table-row form.

A pose is stored in the keyframe database as a float64 row ``x y z qx qy qz qw``; an all-NaN
row means "no pose". Only numpy is imported here (no faiss, no torch), so message and
trajectory code can use poses cheaply.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np


class Pose(NamedTuple):
    """Position [m] and orientation (unit quaternion, x y z w) of a keyframe."""

    x: float
    y: float
    z: float
    qx: float = 0.0
    qy: float = 0.0
    qz: float = 0.0
    qw: float = 1.0

    def distance_to(self, other: Pose) -> float:
        """Translation distance [m]."""
        return translation_distance(self, other)

    def angle_to(self, other: Pose) -> float:
        """Rotation angle [rad] between the two orientations."""
        return rotation_angle(self, other)


def translation_distance(a: Pose, b: Pose) -> float:
    """Euclidean distance between the positions of two poses [m]."""
    return math.sqrt((a.x - b.x) ** 2 + (a.y - b.y) ** 2 + (a.z - b.z) ** 2)


def rotation_angle(a: Pose, b: Pose) -> float:
    """Angle [rad, 0..pi] of the relative rotation between two poses' orientations."""
    qa = np.array([a.qx, a.qy, a.qz, a.qw], dtype=np.float64)
    qb = np.array([b.qx, b.qy, b.qz, b.qw], dtype=np.float64)
    na, nb = np.linalg.norm(qa), np.linalg.norm(qb)
    if na == 0 or nb == 0:
        raise ValueError("a pose has a zero quaternion")
    qa, qb = qa / na, qb / nb
    # relative rotation conj(qa) * qb: w = qa.qb, vector part as below; atan2 stays accurate
    # for small angles where acos(w) would not. abs(w) because q and -q are the same rotation.
    w = float(qa @ qb)
    v = qa[3] * qb[:3] - qb[3] * qa[:3] - np.cross(qa[:3], qb[:3])
    return 2.0 * math.atan2(float(np.linalg.norm(v)), abs(w))


def pose_to_row(pose: Any) -> np.ndarray:
    """A pose (or any 7 numbers x y z qx qy qz qw) as a float64 row; None gives the all-NaN
    "no pose" row. Raises ValueError for another length, non-finite values or a zero quaternion."""
    if pose is None:
        return np.full(7, np.nan)
    row = np.asarray(tuple(pose), dtype=np.float64).reshape(-1)
    if row.shape != (7,):
        raise ValueError(f"a pose needs 7 values (x y z qx qy qz qw), got {row.shape[0]}")
    if np.isnan(row).all():
        return row  # an all-NaN row is how "no pose" is stored
    if not np.isfinite(row).all():
        raise ValueError(f"pose has non-finite values: {row.tolist()}")
    if np.linalg.norm(row[3:]) == 0:
        raise ValueError("pose has a zero quaternion")
    return row


def row_to_pose(row: np.ndarray) -> Pose | None:
    """The :class:`Pose` of a stored row (None for the "no pose" row)."""
    if np.isnan(row[0]):
        return None
    return Pose(*(float(v) for v in row))
