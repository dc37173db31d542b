"""One shared keyframe on the fleet topic: a sensor_msgs/PointCloud2 with one row, ROS-free.

Robots exchange keyframes as PointCloud2 messages (no custom message package): ``height = 1``,
``width = 1``, packed little-endian, ``header.stamp`` = the keyframe's image stamp,
``header.frame_id`` = the keyframe's image frame. The one "point" is the keyframe; its arrays
are PointFields with ``count > 1``: ``salad_ros.io.table.cloud_to_table`` returns them as numpy
sub-arrays, C++ reads them with ``PointCloud2ConstIterator<T>(msg, name)[i]``, and
``sensor_msgs_py.point_cloud2.read_points`` expands them into columns ``name_0 .. name_{count-1}``
(correct, but ~26 000 columns: use :func:`decode`). Layout, with D = descriptor dimension and
N = local features::

    offset      field             datatype x count   meaning
    0           pose              FLOAT64 x 7        x y z qx qy qz qw in the robot's map frame; all NaN = unknown
    56          camera_to_base    FLOAT64 x 7        the camera's mount, x y z qx qy qz qw (base <- camera optical);
                                                     all NaN = not given (the receiver assumes its own)
    112         robot_id          UINT32             sender's fleet robot id
    116         session           UINT32             sender's map lineage (random, kept with its saved map)
    120         keyframe_id       UINT32             sender's own keyframe sequence number 0, 1, 2, ...
    124         stamp_sec         INT32              image stamp (equals header.stamp)
    128         stamp_nanosec     UINT32
    132         version           UINT32             wire format version (2)
    136         model_hash        UINT32 x 2         first 8 bytes of sha256(model name), little-endian words
    144         descriptor_scale  FLOAT32            descriptor = descriptor_q * descriptor_scale (then L2-normalised)
    148         focal_px          FLOAT32            focal length at the feature detection scale [px] (0: no features)
    152         kp                FLOAT32 x 2N       keypoints, undistorted normalised coordinates x/z, y/z
    152+8N      kp_depth          FLOAT32 x N        depth at each keypoint [m], NaN = unknown (field absent: no depth)
    ...         descriptor_q      INT8 x D           SALAD descriptor, int8 with the scale above
    ...         kp_orb            UINT8 x 32N        ORB descriptors (field absent with kp when N = 0)

With data 8-byte aligned every field is naturally aligned (FLOAT64 first, then 4-byte, then
1-byte fields). A keyframe's 3-D points are ``kp_depth * (kp_x, kp_y, 1)`` in its camera frame.
:func:`decode` validates everything and raises :class:`FleetMessageError` with a ``kind``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from salad_ros.geometry import Pose, pose_to_row, row_to_pose
from salad_ros.io.table import FLOAT32, FLOAT64, INT8, INT32, UINT8, UINT32, Field, fields_dtype, unpack

from .cdr import cdr_size
from .quant import dequantize, quantize

#: 2: the camera mount (``camera_to_base``) travels with each keyframe.
WIRE_VERSION = 2
#: Default budget of one serialized message (CDR bytes on the topic).
MAX_MESSAGE_BYTES = 32_000
#: Bytes of one ORB descriptor.
ORB_BYTES = 32
#: Longest header.frame_id accepted.
MAX_FRAME_ID = 256
#: Messages larger than this are refused before anything is parsed.
MAX_ACCEPTED_BYTES = 1 << 20
#: Kinds of :class:`FleetMessageError` (the registry counts rejections per kind).
KINDS = ("malformed", "other_model", "own_robot_id", "duplicate", "out_of_order")

#: (name, datatype) of the fields every message has, in order; counts are 1 except below.
_FIXED = (("pose", FLOAT64), ("camera_to_base", FLOAT64), ("robot_id", UINT32), ("session", UINT32), ("keyframe_id", UINT32),
          ("stamp_sec", INT32), ("stamp_nanosec", UINT32), ("version", UINT32), ("model_hash", UINT32),
          ("descriptor_scale", FLOAT32), ("focal_px", FLOAT32))
_FIXED_COUNTS = {"pose": 7, "camera_to_base": 7, "model_hash": 2}
_SIZES = {INT8: 1, UINT8: 1, INT32: 4, UINT32: 4, FLOAT32: 4, FLOAT64: 8}


class FleetMessageError(ValueError):
    """A fleet message that was refused; ``kind`` is one of :data:`KINDS`, ``robot_id`` the
    sender's robot id when it could be read."""

    def __init__(self, kind: str, message: str, robot_id: int | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown rejection kind {kind!r}")
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.robot_id = robot_id


@dataclass(frozen=True)
class ModelIdentity:
    """The descriptor model every robot of a fleet must share: name and dimension."""

    name: str
    dim: int

    @property
    def hash_words(self) -> tuple[int, int]:
        """First 8 bytes of sha256(name) as two little-endian UINT32 words."""
        h = hashlib.sha256(self.name.encode("utf-8")).digest()
        return int.from_bytes(h[0:4], "little"), int.from_bytes(h[4:8], "little")


@dataclass(frozen=True)
class SharedFeatures:
    """Local features of a keyframe for verification and relative pose (the fields of the
    relative-pose ``PoseFeatures`` record): ``points`` N x 2 float32 normalised coordinates,
    ``descriptors`` N x 32 uint8 (ORB), ``depth`` N float32 metres (NaN unknown) or None,
    ``focal_px`` at the detection scale."""

    points: np.ndarray
    descriptors: np.ndarray
    depth: np.ndarray | None
    focal_px: float
    kind: str = "orb"

    def __len__(self) -> int:
        return len(self.points)

    def limited(self, n: int) -> SharedFeatures:
        """At most ``n`` features, taken at an even stride so every pyramid level and image
        region that ORB's ordering groups together keeps its share."""
        if len(self) <= n:
            return self
        keep = np.linspace(0, len(self) - 1, num=max(n, 0)).round().astype(np.int64)
        depth = None if self.depth is None else self.depth[keep]
        return SharedFeatures(self.points[keep], self.descriptors[keep], depth, self.focal_px, self.kind)


@dataclass(frozen=True)
class SharedKeyframe:
    """A keyframe as robots exchange it; ``descriptor`` is float32 unit-norm [D]."""

    robot_id: int
    session: int
    keyframe_id: int
    stamp_ns: int
    descriptor: np.ndarray
    frame_id: str = ""
    pose: Pose | None = None
    features: SharedFeatures | None = None
    #: The camera's mount on its robot, ``x y z qx qy qz qw`` (base <- camera optical); None: not given.
    camera_to_base: tuple[float, ...] | None = None


@dataclass(frozen=True)
class WireMessage:
    """The PointCloud2 content of one keyframe (``height`` = ``width`` = 1)."""

    frame_id: str
    stamp_sec: int
    stamp_nanosec: int
    fields: list[Field]
    point_step: int
    data: bytes = field(repr=False)

    @property
    def encoded_size(self) -> int:
        """Bytes of the serialized sensor_msgs/PointCloud2 (CDR, encapsulation header included)."""
        return cdr_size(self.frame_id, [f.name for f in self.fields], len(self.data))


# ----- encoding


def layout(dim: int, n_features: int, with_depth: bool) -> tuple[list[Field], int]:
    """Fields of a message with a ``dim``-D descriptor and ``n_features`` features, and the row size."""
    columns: list[tuple[str, int, int]] = [(n, t, _FIXED_COUNTS.get(n, 1)) for n, t in _FIXED]
    if n_features > 0:
        columns.append(("kp", FLOAT32, 2 * n_features))
        if with_depth:
            columns.append(("kp_depth", FLOAT32, n_features))
    columns.append(("descriptor_q", INT8, dim))
    if n_features > 0:
        columns.append(("kp_orb", UINT8, ORB_BYTES * n_features))
    fields, offset = [], 0
    for name, datatype, count in columns:
        fields.append(Field(name, offset, datatype, count))
        offset += _SIZES[datatype] * count
    return fields, offset


def encode(kf: SharedKeyframe, model: ModelIdentity, max_features: int | None = None) -> WireMessage:
    """The wire form of ``kf``; features beyond ``max_features`` are dropped (see
    :meth:`SharedFeatures.limited`). Raises ValueError for input the decoder would refuse."""
    if len(kf.frame_id) > MAX_FRAME_ID:
        raise ValueError(f"frame_id is longer than {MAX_FRAME_ID} characters")
    feats = kf.features
    if feats is not None and max_features is not None:
        feats = feats.limited(max_features)
    if feats is not None and len(feats) == 0:  # none left (or none found): a message without features
        feats = None
    if feats is not None:
        _check_features(feats)
    n = 0 if feats is None else len(feats)
    with_depth = feats is not None and feats.depth is not None
    q, scale = quantize(kf.descriptor)
    if len(q) != model.dim:
        raise ValueError(f"descriptor has {len(q)} values, the model {model.name!r} has {model.dim}")
    fields, step = layout(model.dim, n, with_depth)
    row = np.zeros(1, dtype=fields_dtype(fields, step))[0]
    sec, nanosec = divmod(int(kf.stamp_ns), 1_000_000_000)
    row["pose"] = pose_to_row(kf.pose)
    row["camera_to_base"] = _mount_row(kf.camera_to_base)
    for name, value in (("robot_id", kf.robot_id), ("session", kf.session), ("keyframe_id", kf.keyframe_id),
                        ("stamp_sec", sec), ("stamp_nanosec", nanosec), ("version", WIRE_VERSION)):
        row[name] = _checked_int(name, value, INT32 if name == "stamp_sec" else UINT32)
    row["model_hash"] = model.hash_words
    row["descriptor_scale"] = scale
    row["descriptor_q"] = q
    if feats is not None and n > 0:
        row["focal_px"] = feats.focal_px
        row["kp"] = np.asarray(feats.points, dtype=np.float32).reshape(-1)
        row["kp_orb"] = np.asarray(feats.descriptors, dtype=np.uint8).reshape(-1)
        if with_depth:
            row["kp_depth"] = np.asarray(feats.depth, dtype=np.float32)
    return WireMessage(kf.frame_id, sec, nanosec, fields, step, row.tobytes())


def _mount_row(mount: tuple[float, ...] | None) -> np.ndarray:
    """``camera_to_base`` as its 7 wire values (NaN when not given); ValueError when invalid."""
    if mount is None:
        return np.full(7, np.nan)
    problem = _mount_problem(np.asarray(mount, np.float64))
    if problem:
        raise ValueError(problem)
    return np.asarray(mount, np.float64)


def _mount_problem(v: np.ndarray) -> str:
    """'' for 7 finite values with a unit quaternion, else what is wrong."""
    if v.shape != (7,) or not np.isfinite(v).all():
        return "camera_to_base must be 7 finite numbers x y z qx qy qz qw"
    if abs(float(np.linalg.norm(v[3:])) - 1.0) > 1e-3:
        return "camera_to_base's quaternion is not of unit length"
    return ""


def _checked_int(name: str, value: int, datatype: int) -> int:
    lo, hi = (-(1 << 31), (1 << 31) - 1) if datatype == INT32 else (0, (1 << 32) - 1)
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name} {value} does not fit the wire field")
    return int(value)


def _check_features(f: SharedFeatures) -> None:
    """Feature arrays the decoder would accept (else ValueError naming the problem)."""
    n = len(f.points)
    if f.kind != "orb":
        raise ValueError(f"only ORB features are shared (got {f.kind!r})")
    if np.shape(f.points) != (n, 2) or np.shape(f.descriptors) != (n, ORB_BYTES):
        raise ValueError(f"features need points N x 2 and descriptors N x {ORB_BYTES}")
    if f.depth is not None and np.shape(f.depth) != (n,):
        raise ValueError("feature depth must have one value per point")
    problem = _feature_value_problem(np.asarray(f.points, np.float32), None if f.depth is None else
                                     np.asarray(f.depth, np.float32), float(f.focal_px), n)
    if problem:
        raise ValueError(problem)


def _feature_value_problem(points: np.ndarray, depth: np.ndarray | None, focal: float, n: int) -> str:
    """'' when feature values are valid, else what is wrong."""
    if n > 0 and not (math.isfinite(focal) and focal > 0):
        return f"focal_px must be finite and > 0 with features, got {focal}"
    if n == 0 and focal != 0.0:
        return f"focal_px must be 0 without features, got {focal}"
    if not np.isfinite(points).all():
        return "keypoints contain NaN or infinite values"
    if depth is not None and not np.all(np.isnan(depth) | (np.isfinite(depth) & (depth > 0))):
        return "keypoint depth must be > 0 and finite, or NaN"
    return ""


def fill_cloud(msg: Any, wire: WireMessage, point_field: Any) -> Any:
    """Set a sensor_msgs/PointCloud2 ``msg`` (rclpy or alike) to ``wire``; ``point_field`` is
    the PointField class. Returns ``msg``."""
    msg.header.frame_id = wire.frame_id
    msg.header.stamp.sec = wire.stamp_sec
    msg.header.stamp.nanosec = wire.stamp_nanosec
    msg.height, msg.width = 1, 1
    msg.fields = [point_field(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in wire.fields]
    msg.is_bigendian = False
    msg.point_step = wire.point_step
    msg.row_step = wire.point_step
    msg.data = wire.data
    msg.is_dense = True
    return msg


def max_features_within(budget: int, dim: int, with_depth: bool, frame_id: str = "x" * 64) -> int:
    """Largest feature count whose message (``dim``-D descriptor) is at most ``budget`` bytes."""
    def size(n: int) -> int:
        fields, step = layout(dim, n, with_depth)
        return cdr_size(frame_id, [f.name for f in fields], step)
    if size(0) > budget:
        return -1
    per = size(2) - size(1)
    n = max(0, (budget - size(1)) // per + 1)
    while n > 0 and size(n) > budget:
        n -= 1
    return int(n)


# ----- decoding


def decode(msg: Any, model: ModelIdentity) -> SharedKeyframe:
    """The keyframe of a fleet message (a PointCloud2-like object), fully validated.

    Raises :class:`FleetMessageError`: ``other_model`` when the model hash or descriptor
    dimension differ from ``model``, ``malformed`` for anything else that is wrong (layout,
    sizes, version, non-finite or out-of-range values). Extra fields are ignored.
    """
    try:
        fields = {str(f.name): f for f in msg.fields}
        if len(fields) != len(msg.fields):
            raise FleetMessageError("malformed", "duplicate field names")
        dim, n, with_depth = _check_layout(msg, fields)
        row = unpack(msg.fields, int(msg.point_step), msg.data, 1, 1, bool(msg.is_bigendian))[0]
    except FleetMessageError:
        raise
    except (AttributeError, TypeError, ValueError) as exc:
        raise FleetMessageError("malformed", f"not a fleet keyframe message ({exc})") from exc
    if int(row["version"]) != WIRE_VERSION:
        raise FleetMessageError("malformed", f"wire version {int(row['version'])}, this node reads {WIRE_VERSION}",
                                int(row["robot_id"]))
    if tuple(int(w) for w in row["model_hash"]) != model.hash_words or dim != model.dim:
        raise FleetMessageError("other_model", f"keyframe of another model ({dim}-D, hash "
                                f"{int(row['model_hash'][0]):08x}), this node uses {model.name!r} ({model.dim}-D)",
                                int(row["robot_id"]))
    try:
        return _keyframe_of(msg, row, n, with_depth)
    except FleetMessageError as exc:
        exc.robot_id = int(row["robot_id"])  # a readable row: count the rejection for its sender
        raise


def _check_layout(msg: Any, fields: dict[str, Any]) -> tuple[int, int, bool]:
    """Check sizes and field definitions; returns (descriptor dim, feature count, depth present)."""
    size, step = len(msg.data), int(msg.point_step)
    if size > MAX_ACCEPTED_BYTES:
        raise FleetMessageError("malformed", f"{size} bytes of data, at most {MAX_ACCEPTED_BYTES} accepted")
    if int(msg.width) * int(msg.height) != 1 or step != size or int(msg.row_step) != step:
        raise FleetMessageError("malformed", f"expected one row of point_step = row_step = data size, got "
                                f"{msg.width}x{msg.height} rows, point_step {step}, row_step {msg.row_step}, {size} bytes")
    for f in fields.values():
        if f.datatype not in _SIZES or int(f.count) < 1 or int(f.offset) < 0 \
                or int(f.offset) + _SIZES[f.datatype] * int(f.count) > step:
            raise FleetMessageError("malformed", f"field '{f.name}' (datatype {f.datatype}, count {f.count}, "
                                    f"offset {f.offset}) does not fit a {step}-byte row")
    spans = sorted((int(f.offset), int(f.offset) + _SIZES[f.datatype] * int(f.count)) for f in fields.values())
    if any(end > start for (_, end), (start, _) in zip(spans, spans[1:])):
        raise FleetMessageError("malformed", "fields overlap")
    for name, datatype in _FIXED:
        _expect(fields, name, datatype, _FIXED_COUNTS.get(name, 1))
    dim = _expect(fields, "descriptor_q", INT8, None)
    n = _expect(fields, "kp", FLOAT32, None) // 2 if "kp" in fields else 0
    if n == 0 and ("kp" in fields or "kp_orb" in fields or "kp_depth" in fields):
        raise FleetMessageError("malformed", "feature fields kp, kp_orb (and kp_depth) come together, with N >= 1")
    if n:
        _expect(fields, "kp", FLOAT32, 2 * n)
        _expect(fields, "kp_orb", UINT8, ORB_BYTES * n)
        if "kp_depth" in fields:
            _expect(fields, "kp_depth", FLOAT32, n)
    return dim, n, "kp_depth" in fields


def _expect(fields: dict[str, Any], name: str, datatype: int, count: int | None) -> int:
    """The count of field ``name`` after checking its datatype (and count, when given)."""
    f = fields.get(name)
    if f is None:
        raise FleetMessageError("malformed", f"field '{name}' is missing")
    if f.datatype != datatype or (count is not None and int(f.count) != count):
        raise FleetMessageError("malformed", f"field '{name}' has datatype {f.datatype} x {f.count}, "
                                f"expected {datatype} x {count if count is not None else 'N'}")
    return int(f.count)


def _keyframe_of(msg: Any, row: np.void, n: int, with_depth: bool) -> SharedKeyframe:
    """The keyframe of a checked row, after checking its values."""
    sec, nanosec = int(row["stamp_sec"]), int(row["stamp_nanosec"])
    if nanosec >= 1_000_000_000:
        raise FleetMessageError("malformed", f"stamp_nanosec {nanosec} >= 1e9")
    header = getattr(msg, "header", None)
    if header is not None and (int(header.stamp.sec), int(header.stamp.nanosec)) != (sec, nanosec):
        raise FleetMessageError("malformed", "header.stamp differs from the row's stamp")
    frame_id = "" if header is None else str(header.frame_id)
    if len(frame_id) > MAX_FRAME_ID:
        raise FleetMessageError("malformed", f"frame_id longer than {MAX_FRAME_ID} characters")
    scale = float(row["descriptor_scale"])
    q = np.asarray(row["descriptor_q"], dtype=np.int8)
    if not (math.isfinite(scale) and scale > 0) or not q.any():
        raise FleetMessageError("malformed", f"descriptor is zero or its scale {scale} is not finite and > 0")
    try:
        pose = row_to_pose(pose_to_row(np.asarray(row["pose"], dtype=np.float64)))
    except ValueError as exc:
        raise FleetMessageError("malformed", f"pose: {exc}") from exc
    mount_row = np.asarray(row["camera_to_base"], dtype=np.float64)
    mount = None
    if not np.isnan(mount_row).all():
        problem = _mount_problem(mount_row)
        if problem:
            raise FleetMessageError("malformed", problem)
        mount = tuple(float(v) for v in mount_row)
    feats = None
    focal = float(row["focal_px"])
    points = np.asarray(row["kp"], np.float32).reshape(n, 2) if n else np.empty((0, 2), np.float32)
    depth = np.asarray(row["kp_depth"], np.float32) if with_depth else None
    problem = _feature_value_problem(points, depth, focal, n)
    if problem:
        raise FleetMessageError("malformed", problem)
    if n:
        orb = np.asarray(row["kp_orb"], np.uint8).reshape(n, ORB_BYTES)
        feats = SharedFeatures(points, orb, depth, focal)
    return SharedKeyframe(int(row["robot_id"]), int(row["session"]), int(row["keyframe_id"]),
                          sec * 1_000_000_000 + nanosec, dequantize(q, scale), frame_id, pose, feats, mount)
