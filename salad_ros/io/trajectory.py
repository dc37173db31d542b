"""Ground-truth trajectories: TUM files, pose topics, and pairing images with poses by stamp.

A TUM trajectory file has one pose per line, ``stamp tx ty tz qx qy qz qw`` (stamp in seconds,
whitespace separated); blank lines and lines starting with ``#`` are ignored. Errors name the
file and line.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np

from ..geometry import Pose


class TrajectoryError(ValueError):
    """A trajectory file cannot be used; the message names the file and line."""


def parse_stamp_ns(text: str) -> int:
    """Seconds as text (``1305031102.175304``, ``1.5e3``) -> integer ns, without float rounding."""
    value = Decimal(text)
    if not value.is_finite():
        raise InvalidOperation(text)
    return int((value * 1_000_000_000).to_integral_value())


def pose_array(pose: Pose) -> np.ndarray:
    return np.array([pose.x, pose.y, pose.z, pose.qx, pose.qy, pose.qz, pose.qw], dtype=np.float64)


def yaw_of(qx: float | np.ndarray, qy: float | np.ndarray, qz: float | np.ndarray, qw: float | np.ndarray) -> np.ndarray:
    """Heading (rotation about z, radians) of quaternions, vectorised."""
    return np.arctan2(2.0 * (np.asarray(qw) * qz + np.asarray(qx) * qy), 1.0 - 2.0 * (np.asarray(qy) ** 2 + np.asarray(qz) ** 2))


@dataclass
class Trajectory:
    """Time-sorted poses: ``stamps_ns`` int64[N] and ``poses`` float64[N, 7] (x y z qx qy qz qw)."""

    stamps_ns: np.ndarray
    poses: np.ndarray
    source: str = ""
    #: Problems found while building it that did not stop it (e.g. duplicate stamps).
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stamps_ns = np.asarray(self.stamps_ns, dtype=np.int64)
        self.poses = np.asarray(self.poses, dtype=np.float64).reshape(-1, 7)
        if len(self.stamps_ns) != len(self.poses):
            raise ValueError("stamps and poses differ in length")
        order = np.argsort(self.stamps_ns, kind="stable")
        self.stamps_ns, self.poses = self.stamps_ns[order], self.poses[order]

    @classmethod
    def from_poses(cls, stamps_ns: Iterable[int], poses: Iterable[Pose], source: str = "") -> Trajectory:
        stamps = list(stamps_ns)
        arr = np.array([pose_array(p) for p in poses], dtype=np.float64).reshape(-1, 7)
        return cls(np.array(stamps, dtype=np.int64), arr, source)

    def __len__(self) -> int:
        return len(self.stamps_ns)

    def pose(self, i: int) -> Pose:
        return Pose(*(float(v) for v in self.poses[i]))

    def nearest(self, stamps_ns: Sequence[int] | np.ndarray, tolerance_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Index of the pose nearest in time to each stamp (-1 when none within ``tolerance_ns``)
        and the absolute time difference (ns; -1 where there is no pose at all)."""
        q = np.asarray(stamps_ns, dtype=np.int64)
        if len(self) == 0:
            return np.full(len(q), -1, np.int64), np.full(len(q), -1, np.int64)
        right = np.clip(np.searchsorted(self.stamps_ns, q), 0, len(self) - 1)
        left = np.clip(right - 1, 0, len(self) - 1)
        d_right = np.abs(self.stamps_ns[right] - q)
        d_left = np.abs(self.stamps_ns[left] - q)
        idx = np.where(d_left <= d_right, left, right)
        dt = np.minimum(d_left, d_right)
        return np.where(dt <= tolerance_ns, idx, -1), dt

    def lookup(self, stamps_ns: Sequence[int] | np.ndarray, tolerance_ns: int) -> list[Pose | None]:
        """The nearest pose within ``tolerance_ns`` of each stamp, or None."""
        idx, _ = self.nearest(stamps_ns, tolerance_ns)
        return [self.pose(int(i)) if i >= 0 else None for i in idx]


def read_tum(path: str | Path) -> Trajectory:
    """Read a TUM trajectory file; a malformed line raises :class:`TrajectoryError` naming it."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TrajectoryError(f"cannot read trajectory file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise TrajectoryError(f"trajectory file {path} is not text: {exc}") from exc
    stamps: list[int] = []
    rows: list[list[float]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        content = line.strip()
        if not content or content.startswith("#"):
            continue
        fields = content.replace(",", " ").split()
        where = f"{path}:{lineno}"
        if len(fields) != 8:
            raise TrajectoryError(
                f"{where}: expected 8 values 'stamp tx ty tz qx qy qz qw', got {len(fields)}: {_clip(content)}"
            )
        try:
            stamp = parse_stamp_ns(fields[0])
        except (InvalidOperation, ValueError):
            raise TrajectoryError(f"{where}: stamp {fields[0]!r} is not a number of seconds") from None
        try:
            values = [float(v) for v in fields[1:]]
        except ValueError:
            bad = next(v for v in fields[1:] if not _is_float(v))
            raise TrajectoryError(f"{where}: {bad!r} is not a number") from None
        if not all(math.isfinite(v) for v in values):
            raise TrajectoryError(f"{where}: pose has a NaN or infinite value: {_clip(content)}")
        qnorm = math.sqrt(sum(v * v for v in values[3:]))
        if not 0.5 < qnorm < 1.5:  # tolerate unnormalised files, refuse garbage
            raise TrajectoryError(f"{where}: quaternion (qx qy qz qw) has norm {qnorm:.3g}, expected 1")
        stamps.append(stamp)
        rows.append(values[:3] + [v / qnorm for v in values[3:]])
    if not rows:
        raise TrajectoryError(f"trajectory file {path} has no poses")
    traj = Trajectory(np.array(stamps, dtype=np.int64), np.array(rows), source=str(path))
    if len(np.unique(traj.stamps_ns)) != len(traj):
        traj.notes.append(f"{path}: {len(traj) - len(np.unique(traj.stamps_ns))} duplicate stamps")
    return traj


def write_tum(path: str | Path, stamps_ns: Sequence[int], poses: Sequence[Pose]) -> None:
    """Write a TUM trajectory file (stamps with full ns precision)."""
    lines = ["# stamp tx ty tz qx qy qz qw"]
    for s, p in zip(stamps_ns, poses, strict=False):
        sec, ns = divmod(int(s), 1_000_000_000)
        lines.append(f"{sec}.{ns:09d} " + " ".join(f"{v:.9g}" for v in pose_array(p)))
    Path(path).write_text("\n".join(lines) + "\n")


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[:n] + "..."
