"""The keyframe records beside the index: stamps, poses, frame ids, metadata and origin per id.

:class:`KeyframeTable` is append-only and not locked itself (the database's lock guards it).
Rows are checked by :func:`check_rows` before anything is appended, so a bad batch adds nothing.

Every keyframe has an *origin*: the robot that made it (``robot_id``), that robot's map lineage
(``session``) and its number in that robot's own sequence (``robot_keyframe_id``; 0, 1, 2, ...).
The database's own keyframes have the owner's robot id and session; peers' keyframes (multi-robot
operation, :mod:`salad_ros.fleet`) keep theirs, so loops can name the keyframe a peer knows.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np

from salad_ros.geometry import Pose, pose_to_row, row_to_pose

#: Largest JSON size of one keyframe's metadata dict: the table is for small annotations.
MAX_METADATA_BYTES = 16 * 1024
#: Longest frame id (ROS frame ids are short names); bounds what a saved map may hold.
MAX_FRAME_ID_CHARS = 1024


@dataclasses.dataclass(frozen=True)
class Keyframe:
    """One stored keyframe (its descriptor lives in the index)."""

    id: int
    stamp_ns: int
    frame_id: str
    pose: Pose | None
    metadata: dict[str, Any] | None
    robot_id: int = 0  #: robot that made it
    session: int = 0  #: that robot's map lineage
    robot_keyframe_id: int = -1  #: its number in that robot's own sequence


def new_session() -> int:
    """A random map lineage id (UINT32): a new map's keyframe ids never clash with an old one's."""
    return secrets.randbits(32)


@dataclasses.dataclass(frozen=True)
class Origin:
    """Who made a batch of keyframes: ``robot_id``, ``session`` and their ``keyframe_ids`` in
    that robot's own sequence (int64[n])."""

    robot_id: int
    session: int
    keyframe_ids: np.ndarray

    def __post_init__(self) -> None:
        for name, value in (("robot_id", self.robot_id), ("session", self.session)):
            if not 0 <= int(value) < (1 << 32):
                raise ValueError(f"{name} {value} is not a UINT32")
        ids = np.asarray(self.keyframe_ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= (1 << 32)):
            raise ValueError("robot keyframe ids must be UINT32")
        object.__setattr__(self, "keyframe_ids", ids)


@dataclasses.dataclass
class Rows:
    """A checked batch of ``n`` keyframe records, ready to append."""

    stamps: np.ndarray  #: int64[n]
    poses: np.ndarray  #: float64[n, 7], NaN rows = no pose
    frame_ids: list[str]
    metadata: list[dict[str, Any] | None]
    meta_bytes: int
    origin: np.ndarray | None = None  #: int64[n, 3] (robot_id, session, robot_keyframe_id); set on append


class _Column:
    """Append-only numpy column with amortised growth."""

    def __init__(self, dtype: Any, width: int | None = None) -> None:
        self._shape = () if width is None else (width,)
        self._buf = np.empty((16, *self._shape), dtype=dtype)
        self._n = 0

    def extend(self, values: np.ndarray) -> None:
        m = len(values)
        if self._n + m > len(self._buf):
            cap = max(2 * len(self._buf), self._n + m)
            buf = np.empty((cap, *self._shape), dtype=self._buf.dtype)
            buf[: self._n] = self._buf[: self._n]
            self._buf = buf
        self._buf[self._n : self._n + m] = values
        self._n += m

    @property
    def view(self) -> np.ndarray:
        return self._buf[: self._n]

    @property
    def nbytes(self) -> int:
        return self._buf.nbytes


def check_rows(n: int, stamps_ns: Any, frame_ids: str | Sequence[str] | None,
               poses: Sequence[Pose | None] | np.ndarray | None,
               metadata: Sequence[dict[str, Any] | None] | None) -> Rows:
    """Check and convert the records of ``n`` new keyframes (see ``KeyframeDatabase.add``)."""
    stamps = np.asarray(stamps_ns)
    if stamps.ndim == 0:
        stamps = stamps[None]
    if not (np.issubdtype(stamps.dtype, np.integer) or (stamps.size == 0)):
        raise TypeError(f"stamps_ns must be integer nanoseconds, got dtype {stamps.dtype}")
    stamps = stamps.astype(np.int64).reshape(-1)
    if len(stamps) != n:
        raise ValueError(f"got {n} descriptors but {len(stamps)} stamps")
    if frame_ids is None or isinstance(frame_ids, str):
        fids = [frame_ids or ""] * n
    else:
        fids = [str(f) for f in frame_ids]
        if len(fids) != n:
            raise ValueError(f"got {n} descriptors but {len(fids)} frame_ids")
    if fids and max(len(f) for f in fids) > MAX_FRAME_ID_CHARS:
        raise ValueError(f"a frame_id is longer than {MAX_FRAME_ID_CHARS} characters")
    if poses is None:
        pose_rows = np.full((n, 7), np.nan)
    else:
        pose_rows = np.stack([pose_to_row(p) for p in poses]) if len(poses) else np.empty((0, 7))
        if len(pose_rows) != n:
            raise ValueError(f"got {n} descriptors but {len(pose_rows)} poses")
    metas: list[dict[str, Any] | None] = [None] * n if metadata is None else list(metadata)
    if len(metas) != n:
        raise ValueError(f"got {n} descriptors but {len(metas)} metadata entries")
    meta_bytes = sum(_metadata_size(m) for m in metas)
    return Rows(stamps, pose_rows, fids, metas, meta_bytes)


def _metadata_size(meta: Any) -> int:
    if meta is None:
        return 0
    if not isinstance(meta, dict):
        raise TypeError(f"keyframe metadata must be a dict or None, got {type(meta).__name__}")
    try:
        size = len(json.dumps(meta, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"keyframe metadata is not JSON-serialisable: {exc}") from exc
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"keyframe metadata is {size} bytes of JSON; the limit is {MAX_METADATA_BYTES}")
    return size


class KeyframeTable:
    """Records of keyframes ``0..len-1`` (the id is the row)."""

    def __init__(self) -> None:
        self._stamps = _Column(np.int64)
        self._poses = _Column(np.float64, 7)
        self.frame_ids: list[str] = []
        self._frame_id_pool: dict[str, str] = {}  # one string object per distinct frame id
        self.metadata: list[dict[str, Any] | None] = []
        self._meta_bytes = 0
        self.stamps_sorted = True  #: stamps never decrease with the id (binary search allowed)
        self._origin = _Column(np.int64, 3)

    def __len__(self) -> int:
        return len(self.frame_ids)

    @property
    def stamps(self) -> np.ndarray:
        """int64[N] view (not a copy)."""
        return self._stamps.view

    @property
    def poses(self) -> np.ndarray:
        """float64[N, 7] view (not a copy); NaN rows where there is no pose."""
        return self._poses.view

    @property
    def origins(self) -> np.ndarray:
        """int64[N, 3] view (not a copy): robot_id, session, robot_keyframe_id per id."""
        return self._origin.view

    def find(self, robot_id: int, session: int, robot_keyframe_id: int) -> int | None:
        """The id of a robot's keyframe, None when the table has none (a scan: ~1 ms per 100k
        keyframes, for the rare lookups of catch-up answers)."""
        o = self.origins
        hit = np.flatnonzero((o[:, 2] == int(robot_keyframe_id)) & (o[:, 0] == int(robot_id)) & (o[:, 1] == int(session)))
        return int(hit[0]) if len(hit) else None

    def append(self, rows: Rows) -> None:
        """Append checked rows; ``rows.origin`` must be set (the database does)."""
        assert rows.origin is not None and len(rows.origin) == len(rows.stamps)
        self._origin.extend(rows.origin)
        st = rows.stamps
        self.stamps_sorted = self.stamps_sorted and bool(np.all(np.diff(st) >= 0)) and (
            len(self) == 0 or len(st) == 0 or st[0] >= self._stamps.view[-1])
        self._stamps.extend(st)
        self._poses.extend(rows.poses)
        self.frame_ids.extend(self._frame_id_pool.setdefault(f, f) for f in rows.frame_ids)
        self.metadata.extend(rows.metadata)
        self._meta_bytes += rows.meta_bytes

    @classmethod
    def from_saved(cls, stamps: np.ndarray, poses: np.ndarray, frame_ids: Sequence[Any],
                   metadata: Sequence[Any], origins: np.ndarray) -> KeyframeTable:
        """A table from a saved generation's arrays (already checked for length and type)."""
        table = cls()
        metas = [m if isinstance(m, dict) else None for m in metadata]
        table.append(Rows(np.asarray(stamps, dtype=np.int64), poses, [str(f) for f in frame_ids], metas,
                          sum(len(json.dumps(m)) for m in metas if m), np.asarray(origins, dtype=np.int64)))
        return table

    def get(self, i: int) -> Keyframe:
        """Record ``i`` (the caller checks the range)."""
        r, s, k = (int(v) for v in self.origins[i])
        return Keyframe(i, int(self.stamps[i]), self.frame_ids[i], row_to_pose(self.poses[i]), self.metadata[i],
                        r, s, k)

    def nearest_stamp(self, stamp_ns: int, tolerance_ns: int) -> int | None:
        """Id of the keyframe whose stamp is nearest ``stamp_ns`` (lower id on a tie) within
        ``tolerance_ns``, else None."""
        st = self.stamps
        if len(st) == 0:
            return None
        s = int(stamp_ns)
        if self.stamps_sorted:
            j = int(np.searchsorted(st, s))
            cands = [c for c in (j - 1, j) if 0 <= c < len(st)]
            best = min(cands, key=lambda c: (abs(int(st[c]) - s), c))
        else:
            best = int(np.argmin(np.abs(st - s)))
        return best if abs(int(st[best]) - s) <= tolerance_ns else None

    def nbytes(self) -> int:
        """Bytes held: stamp and pose columns, id slots, distinct frame-id strings, metadata JSON."""
        strings = sum(len(s) + 49 for s in self._frame_id_pool)  # ~ CPython str overhead
        return (self._stamps.nbytes + self._poses.nbytes + self._origin.nbytes + 16 * len(self) + strings
                + self._meta_bytes)
