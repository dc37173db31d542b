"""rosbag2 reading and writing with the ``rosbags`` library (no ROS install needed).

Reading accepts a rosbag2 directory (with ``metadata.yaml``) or a single ``.mcap`` / ``.db3``
file, sqlite3 or mcap storage. Errors are :class:`BagError` subclasses whose messages say what
to do: a missing topic lists the topics the bag has, a truncated or damaged bag names the last
message that was read intact.

mcap chunks are checked against their CRC-32 when the bag is opened: damaged chunks are skipped
and :attr:`BagReader.damaged` says which and how many messages they held (:mod:`.mcap_scan`).

Writing (:class:`BagWriter` and the ``*_msg`` builders) is used by the demo generator and the
tests; messages are ``rosbags`` message objects, the same ones the reader returns. mcap bags
get chunk checksums (rosbags' writer leaves them out).
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from .images import rgb_to_jpeg, rgb_to_raw
from .mcap_scan import McapScan, add_chunk_crcs, check_chunks
from .messages import ns_to_sec_nanosec, stamp_to_ns

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
ODOMETRY = "nav_msgs/msg/Odometry"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
POSE_COV_STAMPED = "geometry_msgs/msg/PoseWithCovarianceStamped"

IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
POSE_TYPES = (ODOMETRY, POSE_STAMPED, POSE_COV_STAMPED)

STORAGES = ("mcap", "sqlite3")


class BagError(Exception):
    """A bag cannot be used; the message is meant for the user."""


class TopicNotFoundError(BagError):
    """A requested topic is absent (or has an unusable type); ``available`` lists what exists."""

    def __init__(self, message: str, available: dict[str, TopicInfo]) -> None:
        super().__init__(message)
        self.available = available


class BagReadError(BagError):
    """Reading stopped part-way (truncated or damaged storage).

    ``last_good_index`` is the 0-based index, among the messages requested, of the last message
    read intact (-1: none); ``messages_read`` = ``last_good_index + 1``.
    """

    def __init__(self, message: str, last_good_index: int, last_good_time_ns: int | None) -> None:
        super().__init__(message)
        self.last_good_index = last_good_index
        self.last_good_time_ns = last_good_time_ns

    @property
    def messages_read(self) -> int:
        return self.last_good_index + 1


@dataclass(frozen=True)
class TopicInfo:
    """One topic of a bag."""

    name: str
    msgtype: str
    count: int


@dataclass
class BagMessage:
    """A deserialised message with its position in the read."""

    #: 0-based index among the messages of the requested topics, in log-time order.
    index: int
    topic: str
    msgtype: str
    #: Time the recorder logged it (ns).
    log_time_ns: int
    #: ``header.stamp`` when the message has a non-zero one, else ``log_time_ns``.
    stamp_ns: int
    msg: Any


class _Pose(Protocol):
    x: float
    y: float
    z: float
    qx: float
    qy: float
    qz: float
    qw: float


@functools.cache
def default_typestore() -> Any:
    """The ROS 2 message definitions used to write bags and to read bags that embed none."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def format_topics(topics: dict[str, TopicInfo]) -> str:
    """Human-readable topic list, one per line (for error messages)."""
    if not topics:
        return "  (the bag has no topics)"
    width = max(len(t) for t in topics)
    return "\n".join(f"  {t.name:<{width}}  {t.msgtype}  ({t.count} messages)" for t in topics.values())


def message_stamp_ns(msg: Any, log_time_ns: int) -> int:
    """``header.stamp`` in ns when present and non-zero, else the log time."""
    header = getattr(msg, "header", None)
    if header is not None:
        ns = stamp_to_ns(header.stamp)
        if ns > 0:
            return ns
    return int(log_time_ns)


class BagReader:
    """Reads a rosbag2 directory or ``.mcap``/``.db3`` file; use as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._reader: Any = None
        #: Messages skipped because they could not be deserialised (count, first error).
        self.undecodable = 0
        self.first_undecodable: str | None = None
        #: Set when the bag could only be read by a linear scan (an mcap without footer).
        self.salvaged: str | None = None
        #: Set when mcap chunks fail their CRC check: those chunks are skipped, this says which
        #: and how many messages they held (see :mod:`.mcap_scan`).
        self.damaged: str | None = None
        #: What could be verified (mcap: chunk checksums present or not); "" for sqlite3.
        self.integrity = ""

    def __enter__(self) -> BagReader:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def open(self) -> None:
        from rosbags.highlevel import AnyReader

        if not self.path.exists():
            raise BagError(f"bag {self.path} does not exist")
        if self.path.is_file() and self.path.suffix not in (".mcap", ".db3"):
            raise BagError(f"{self.path} is not a rosbag2: give a bag directory or a .mcap or .db3 file")
        mcap = self._mcap_file()
        check = check_chunks(mcap) if mcap is not None else None
        if check is not None:
            self.integrity = check.integrity()
            self.damaged = check.describe_damage()
        if self.damaged:  # rosbags would stop at the first bad chunk: skip the damaged ones instead
            reader: Any = McapScan(mcap, skip={c.offset for c in check.damaged})
            if not reader.usable:
                raise BagError(f"cannot open bag {self.path}: {self.damaged}; nothing else could be read")
            if reader.problem:
                self.salvaged = f"read by a linear scan, {reader.problem}"
            self._reader = reader
            return
        try:
            reader = AnyReader([self.path], default_typestore=default_typestore())
            reader.open()
        except Exception as exc:  # rosbags raises several unrelated types (ReaderError, sqlite, KeyError...)
            # A recorder that died leaves an mcap without its footer and index, which rosbags
            # refuses; the records before the cut are still readable by a linear scan.
            salvage = McapScan(mcap) if mcap is not None else None
            if salvage is None or not salvage.usable:
                raise BagError(
                    f"cannot open bag {self.path}: {_describe(exc)} (no message could be read: "
                    "the file is truncated, damaged or not a rosbag2)"
                ) from exc
            self.salvaged = f"{_describe(exc)}; read by a linear scan instead, {salvage.problem or 'no damage found'}"
            reader = salvage
        self._reader = reader

    def _mcap_file(self) -> Path | None:
        if self.path.is_file():
            return self.path if self.path.suffix == ".mcap" else None
        files = sorted(self.path.glob("*.mcap"))
        return files[0] if len(files) == 1 else None

    def close(self) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            finally:
                self._reader = None

    @property
    def storage(self) -> str:
        """``mcap`` or ``sqlite3``."""
        files = [self.path] if self.path.is_file() else sorted(self.path.iterdir())
        return "mcap" if any(f.suffix == ".mcap" for f in files) else "sqlite3"

    @property
    def topics(self) -> dict[str, TopicInfo]:
        """Topics sorted by name."""
        self._check_open()
        out = {}
        for name, info in sorted(self._reader.topics.items()):
            out[name] = TopicInfo(name, info.msgtype or "(several types)", int(info.msgcount))
        return out

    def require_topic(self, topic: str, types: Collection[str], role: str = "topic") -> TopicInfo:
        """The topic's info, after checking it exists and has one of ``types``."""
        topics = self.topics
        if topic not in topics:
            hint = ""
            candidates = [t.name for t in topics.values() if t.msgtype in types]
            if candidates:
                hint = f"\n{role} candidates ({' or '.join(_short(t) for t in types)}): {', '.join(candidates)}"
            raise TopicNotFoundError(
                f"{role} '{topic}' is not in bag {self.path}. Topics in the bag:\n{format_topics(topics)}{hint}", topics
            )
        info = topics[topic]
        if info.msgtype not in types:
            raise TopicNotFoundError(
                f"{role} '{topic}' in bag {self.path} has type {info.msgtype}; expected "
                f"{' or '.join(types)}. Topics in the bag:\n{format_topics(topics)}",
                topics,
            )
        return info

    def messages(self, topics: Collection[str]) -> Iterator[BagMessage]:
        """Deserialised messages of ``topics`` in log-time order.

        A message that fails to deserialise is counted in :attr:`undecodable` and skipped. If the
        storage itself fails part-way, :class:`BagReadError` names the last message read intact.
        """
        self._check_open()
        connections = [c for c in self._reader.connections if c.topic in set(topics)]
        index = -1
        last_time: int | None = None
        stream = self._reader.messages(connections=connections)
        while True:
            try:
                item = next(stream)
            except StopIteration:
                return
            except Exception as exc:  # truncated chunk, malformed sqlite page, bad mcap record ...
                where = (
                    f"after message index {index} (log time {last_time} ns)"
                    if index >= 0
                    else "before its first message could be read"
                )
                raise BagReadError(
                    f"bag {self.path} is truncated or damaged: reading stopped {where}: {_describe(exc)}",
                    index,
                    last_time,
                ) from exc
            conn, log_time, raw = item
            index += 1
            last_time = int(log_time)
            try:
                msg = self._reader.deserialize(raw, conn.msgtype)
            except Exception as exc:
                self.undecodable += 1
                if self.first_undecodable is None:
                    self.first_undecodable = f"message index {index} on {conn.topic}: {_describe(exc)}"
                continue
            yield BagMessage(index, conn.topic, conn.msgtype, last_time, message_stamp_ns(msg, last_time), msg)

    def _check_open(self) -> None:
        if self._reader is None:
            raise BagError("bag reader is not open")


def list_topics(path: str | Path) -> dict[str, TopicInfo]:
    """The topics of a bag (opens and closes it)."""
    with BagReader(path) as reader:
        return reader.topics


def _short(msgtype: str) -> str:
    return msgtype.rsplit("/", 1)[-1]


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."


# --------------------------------------------------------------------------------------------
# Writing


class BagWriter:
    """Writes a rosbag2 (mcap or sqlite3) directory; use as a context manager.

    ``write`` takes ``rosbags`` message objects (see the ``*_msg`` builders) and serialises them
    with the ROS 2 kilted definitions, which the bag then embeds.
    """

    def __init__(self, path: str | Path, storage: str = "mcap") -> None:
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, not {storage!r}")
        self.path = Path(path)
        self.storage = storage
        self._writer: Any = None
        self._connections: dict[str, Any] = {}

    def __enter__(self) -> BagWriter:
        from rosbags.rosbag2 import StoragePlugin, Writer

        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        self._writer.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            if self.storage == "mcap" and exc_type is None:
                for mcap in self.path.glob("*.mcap"):  # rosbags writes no chunk checksums: add them
                    add_chunk_crcs(mcap)

    def add_topic(self, topic: str, msgtype: str) -> None:
        self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=default_typestore())

    def write(self, topic: str, log_time_ns: int, msg: Any) -> None:
        if topic not in self._connections:
            self.add_topic(topic, msg.__msgtype__)
        data = default_typestore().serialize_cdr(msg, msg.__msgtype__)
        self._writer.write(self._connections[topic], int(log_time_ns), data)


def _types() -> dict[str, Any]:
    return default_typestore().types


def header(stamp_ns: int, frame_id: str) -> Any:
    t = _types()
    sec, nanosec = ns_to_sec_nanosec(stamp_ns)
    return t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame_id)


def image_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str = "camera", encoding: str = "rgb8") -> Any:
    """sensor_msgs/Image of an RGB array (encoded as rgb8, bgr8 or mono8)."""
    h, w, step, data = rgb_to_raw(rgb, encoding)
    return _types()[IMAGE](
        header=header(stamp_ns, frame_id), height=h, width=w, encoding=encoding, is_bigendian=0, step=step,
        data=np.frombuffer(data, np.uint8),
    )


def compressed_image_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str = "camera", quality: int = 90) -> Any:
    """sensor_msgs/CompressedImage (JPEG) of an RGB array."""
    return _types()[COMPRESSED_IMAGE](
        header=header(stamp_ns, frame_id), format="jpeg", data=np.frombuffer(rgb_to_jpeg(rgb, quality), np.uint8)
    )


def _pose(p: _Pose) -> Any:
    t = _types()
    return t["geometry_msgs/msg/Pose"](
        position=t["geometry_msgs/msg/Point"](x=float(p.x), y=float(p.y), z=float(p.z)),
        orientation=t["geometry_msgs/msg/Quaternion"](x=float(p.qx), y=float(p.qy), z=float(p.qz), w=float(p.qw)),
    )


def odometry_msg(pose: _Pose, stamp_ns: int, frame_id: str = "odom", child_frame_id: str = "base_link") -> Any:
    """nav_msgs/Odometry with ``pose`` and zero twist/covariance."""
    t = _types()
    zero3 = t["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0)
    return t[ODOMETRY](
        header=header(stamp_ns, frame_id),
        child_frame_id=child_frame_id,
        pose=t["geometry_msgs/msg/PoseWithCovariance"](pose=_pose(pose), covariance=np.zeros(36)),
        twist=t["geometry_msgs/msg/TwistWithCovariance"](
            twist=t["geometry_msgs/msg/Twist"](linear=zero3, angular=zero3), covariance=np.zeros(36)
        ),
    )


def pose_stamped_msg(pose: _Pose, stamp_ns: int, frame_id: str = "map") -> Any:
    """geometry_msgs/PoseStamped."""
    return _types()[POSE_STAMPED](header=header(stamp_ns, frame_id), pose=_pose(pose))


def pose_cov_stamped_msg(pose: _Pose, stamp_ns: int, frame_id: str = "map") -> Any:
    """geometry_msgs/PoseWithCovarianceStamped (zero covariance)."""
    t = _types()
    return t[POSE_COV_STAMPED](
        header=header(stamp_ns, frame_id),
        pose=t["geometry_msgs/msg/PoseWithCovariance"](pose=_pose(pose), covariance=np.zeros(36)),
    )
