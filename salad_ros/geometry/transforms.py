"""Rotations and rigid transforms: quaternions, angles, 4x4 matrices and small fitting helpers.

Quaternions are (x, y, z, w), the order of geometry_msgs/Quaternion, normalised with w >= 0.
A 4x4 transform ``T_a_b`` maps points of frame b into frame a: ``X_a = R X_b + t``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def skew(v: np.ndarray) -> np.ndarray:
    """The cross-product matrix ``[v]x`` of a 3-vector (``[v]x @ w == v x w``)."""
    x, y, z = (float(c) for c in np.asarray(v, np.float64).ravel()[:3])
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def exp_so3(w: np.ndarray) -> np.ndarray:
    """Rotation matrix of an axis-angle vector (radians): Rodrigues' formula.

    Written out because cv2.Rodrigues costs ~20 us per call in the solvers' inner loops."""
    x, y, z = (float(c) for c in np.asarray(w, np.float64).ravel()[:3])
    theta2 = x * x + y * y + z * z
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    if theta2 < 1e-16:
        return np.eye(3) + k + 0.5 * (k @ k)
    theta = np.sqrt(theta2)
    return np.eye(3) + (np.sin(theta) / theta) * k + ((1.0 - np.cos(theta)) / theta2) * (k @ k)


def log_so3(r: np.ndarray) -> np.ndarray:
    """Axis-angle vector (radians) of a rotation matrix; the inverse of :func:`exp_so3`."""
    angle = rotation_angle(r)
    r = np.asarray(r, np.float64)
    if angle < 1e-8:
        return 0.5 * np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    if angle > np.pi - 1e-6:
        # near pi the skew part vanishes: the axis is the column of R + I with the largest norm
        m = r + np.eye(3)
        axis = m[:, int(np.argmax(np.linalg.norm(m, axis=0)))]
        return axis / np.linalg.norm(axis) * angle
    w = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    return w / (2.0 * np.sin(angle)) * angle


def rotation_angle(r: np.ndarray) -> float:
    """Angle (radians, in [0, pi]) of a rotation matrix.

    atan2 of sine and cosine parts instead of arccos of the trace, which loses all precision
    for the sub-degree angles the tests compare.
    """
    r = np.asarray(r, np.float64)
    sin = 0.5 * np.linalg.norm([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    cos = 0.5 * (np.trace(r) - 1.0)
    return float(np.arctan2(sin, cos))


def angle_between(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (radians) between two 3-vectors; NaN when either is zero."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 or nb == 0.0:
        return float("nan")
    return float(np.arctan2(np.linalg.norm(np.cross(a, b)), float(a @ b)))


def matrix_to_quaternion(r: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w), w >= 0, of a 3x3 rotation matrix.

    Branches on the largest diagonal term (Shepperd's method) so the square root is never of a
    number near zero; the input is first projected onto SO(3) so a slightly non-orthogonal
    matrix still gives a unit quaternion.
    """
    r = nearest_rotation(np.asarray(r, np.float64))
    trace = np.trace(r)
    if trace > max(r[0, 0], r[1, 1], r[2, 2]):
        s = 2.0 * np.sqrt(1.0 + trace)
        q = [(r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, 0.25 * s]
    elif r[0, 0] >= r[1, 1] and r[0, 0] >= r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        q = [0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s, (r[2, 1] - r[1, 2]) / s]
    elif r[1, 1] >= r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        q = [(r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s, (r[0, 2] - r[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        q = [(r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s, (r[1, 0] - r[0, 1]) / s]
    quat = np.array(q, np.float64)
    quat /= np.linalg.norm(quat)
    return -quat if quat[3] < 0 else quat


def quaternion_to_matrix(q: Sequence[float] | np.ndarray) -> np.ndarray:
    """3x3 rotation matrix of a quaternion (x, y, z, w); normalised first, zero norm raises."""
    x, y, z, w = (float(c) for c in q)
    n = np.sqrt(x * x + y * y + z * z + w * w)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"quaternion {tuple(q)} has zero or non-finite norm")
    x, y, z, w = x / n, y / n, z / n, w / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def nearest_rotation(m: np.ndarray) -> np.ndarray:
    """The rotation matrix closest (Frobenius) to a 3x3 matrix."""
    u, _, vt = np.linalg.svd(np.asarray(m, np.float64))
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    return u @ np.diag([1.0, 1.0, d]) @ vt


def make_transform(r: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4x4 homogeneous transform of a rotation and a translation."""
    out = np.eye(4)
    out[:3, :3] = r
    out[:3, 3] = np.asarray(t, np.float64).ravel()
    return out


def invert_transform(m: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (R^T, -R^T t) without a general matrix inverse."""
    r = m[:3, :3]
    return make_transform(r.T, -r.T @ m[:3, 3])


def transform_from_xyz_quat(values: Sequence[float]) -> np.ndarray:
    """4x4 transform from ``x y z qx qy qz qw`` (the ``camera_to_base`` parameter layout)."""
    v = [float(c) for c in values]
    if len(v) != 7 or not all(np.isfinite(v)):
        raise ValueError(f"expected 7 finite numbers 'x y z qx qy qz qw', got {list(values)}")
    return make_transform(quaternion_to_matrix(v[3:]), v[:3])


def fit_rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation R minimising sum |b_i - R a_i|^2 over paired 3-vectors (N x 3, N >= 2).

    The SVD solution of the orthogonal Procrustes problem (no translation, no scale).
    """
    h = np.asarray(a, np.float64).T @ np.asarray(b, np.float64)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    return vt.T @ np.diag([1.0, 1.0, d]) @ u.T
