"""The loop-closure node's fleet side (``fleet.enable``), kept out of :mod:`salad_ros.node`.

:class:`NodeFleet` connects a :class:`~salad_ros.fleet.member.FleetMember` to ROS 2: the robot's
new keyframes go out on ``fleet.topic`` (sensor_msgs/PointCloud2, one row per keyframe,
:mod:`salad_ros.fleet.wire`), the peers' keyframes come in on the same topic and are inserted
into the map at once (searchable by the next query), catch-up requests go out and come in on
``fleet.request_topic`` (std_msgs/UInt32MultiArray, :mod:`salad_ros.fleet.catchup`), and a timer
sends due requests and re-publishes what peers asked for within ``fleet.max_bytes_per_s``.
All four entities are reliable, volatile, keep-last ``fleet.queue_depth`` and take the standard
``qos_overrides.<topic>.<publisher|subscription>.*`` parameters. The fleet's counters go to
``/diagnostics`` as ``fleet.*`` values.

Threads: the subscriptions and the timer run on the executor (in a callback group of their
own, so a multi-threaded executor runs them beside the other callbacks); they never take the
node's pipeline lock, which is held while a frame is encoded: the pipeline's map lock makes a
peer's keyframe wait for one frame's detection at most. :meth:`NodeFleet.on_keyframe` runs in
the node's worker thread.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import UInt32MultiArray

from .fleet import FleetMessageError, WireMessage, fill_cloud
from .fleet.cdr import cdr_size
from .fleet.member import FleetMember
from .params import one_line

#: Seconds between the fleet timer's runs: catch-up requests and re-publishing (the token
#: bucket's burst covers a period at any fleet.max_bytes_per_s).
TIMER_PERIOD = 0.2
#: Seconds between repeated warnings about refused messages of one kind from one sender.
WARN_PERIOD = 10.0


def request_size(msg: UInt32MultiArray) -> int:
    """Serialized (CDR) bytes of a UInt32MultiArray: encapsulation, layout, data."""
    pos = 4  # layout.dim length
    for dim in msg.layout.dim:
        pos += -pos % 4 + 4 + len(dim.label.encode("utf-8")) + 1  # label
        pos += -pos % 4 + 8  # size, stride
    pos += -pos % 4 + 4 + 4 + 4 * len(msg.data)  # data_offset, data length and values
    return 4 + pos


def cloud_size(msg: PointCloud2) -> int:
    """Serialized (CDR) bytes of a PointCloud2, computed from its fields (no serialization)."""
    return cdr_size(msg.header.frame_id, [f.name for f in msg.fields], len(msg.data))


def fleet_qos(depth: int) -> QoSProfile:
    """Reliable, volatile, keep-last ``depth``: a fresh profile per entity (rclpy writes the
    qos_overrides.* values into the profile it is given)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


class NodeFleet:
    """Keyframe sharing of a :class:`~salad_ros.node.LoopClosureNode` (module docstring).

    ``node`` must have ``cfg``, ``pipeline`` and the ``_advertise``/``_subscribe`` helpers.
    Raises :class:`~salad_ros.params.ConfigError` when ``fleet.max_message_bytes`` cannot hold
    a keyframe of the node's model.
    """

    def __init__(self, node: Any) -> None:
        cfg = node.cfg.fleet
        self._node = node
        self._logger = node.get_logger()
        self.member = FleetMember(node.pipeline, cfg)
        self.robot_id = node.pipeline.robot_id
        self._warned: dict[tuple[str, str, Any], float] = {}
        self._warn_lock = threading.Lock()
        self.group = MutuallyExclusiveCallbackGroup()
        self.keyframe_pub = node._advertise(PointCloud2, cfg.topic, fleet_qos(cfg.queue_depth))
        self.request_pub = node._advertise(UInt32MultiArray, cfg.request_topic, fleet_qos(cfg.queue_depth))
        self.keyframe_sub = node._subscribe(PointCloud2, cfg.topic, self._on_keyframe_msg, fleet_qos(cfg.queue_depth),
                                            callback_group=self.group)
        self.request_sub = node._subscribe(UInt32MultiArray, cfg.request_topic, self._on_request_msg,
                                           fleet_qos(cfg.queue_depth), callback_group=self.group)
        self._timer = node.create_timer(TIMER_PERIOD, self._on_timer, callback_group=self.group)
        self._logger.info(self.describe())

    def describe(self) -> str:
        """The start-up line: identity, topics, what one keyframe carries, the byte budget."""
        cfg, m = self.member.cfg, self.member
        if self._node.cfg.pose.pose_estimation == "none":  # features come from the relative-pose side
            features = "no local features (pose_estimation none)"
        else:
            features = (f"up to {m.max_features} local features of frames with camera_info" if m.max_features
                        else "no local features")
        catch_up = (f"catch-up on {self.request_pub.topic_name} (first request after {cfg.first_request_s:g} s), "
                    if cfg.catch_up else f"catch-up off (requests on {self.request_pub.topic_name} ignored), ")
        return (f"fleet: robot {self.robot_id}, session {self.member.registry.session:08x}; keyframes on "
                f"{self.keyframe_pub.topic_name} ({m.model.dim}-D int8 descriptor, {features}, at most "
                f"{cfg.max_message_bytes} B per message), {catch_up}re-publishing within "
                f"{cfg.max_bytes_per_s:g} B/s")

    # -- worker thread

    def on_keyframe(self, result: Any) -> None:
        """A new own keyframe (a :class:`~salad_ros.detector.FrameResult`): publish it."""
        if result.robot_keyframe_id is None:
            return
        try:
            wire = self.member.on_keyframe(int(result.robot_keyframe_id))
            if wire is not None:
                self._publish(wire)
        except Exception as exc:  # noqa: BLE001 - sharing must not cost the robot its own loop closure
            self._logger.error(f"publishing keyframe {result.robot_keyframe_id} on the fleet topic failed: "
                               f"{type(exc).__name__}: {one_line(exc)}", throttle_duration_sec=WARN_PERIOD)

    def _publish(self, wire: WireMessage) -> None:
        self.keyframe_pub.publish(fill_cloud(PointCloud2(), wire, PointField))

    # -- executor: messages and the timer

    def _on_keyframe_msg(self, msg: PointCloud2) -> None:
        """A fleet keyframe: admitted and inserted, or refused (counted, warned about)."""
        nbytes = 0
        try:
            nbytes = cloud_size(msg)
            self.member.receive(msg, nbytes)
        except FleetMessageError as exc:  # counted by the member already
            self._warn(exc, "keyframe")
        except Exception as exc:  # noqa: BLE001 - never end the executor; count it as malformed
            err = FleetMessageError("malformed", f"{type(exc).__name__}: {one_line(exc)}")
            self.member.registry.note_rejection(err, nbytes)
            self._warn(err, "keyframe")

    def _on_request_msg(self, msg: UInt32MultiArray) -> None:
        """A peer's catch-up request: queue what it lacks of ours (re-published by the timer)."""
        nbytes = 0
        try:
            nbytes = request_size(msg)
            self.member.on_request(msg.data, nbytes)
        except FleetMessageError as exc:
            self._warn(exc, "catch-up request")
        except Exception as exc:  # noqa: BLE001 - never end the executor; count it as malformed
            err = FleetMessageError("malformed", f"{type(exc).__name__}: {one_line(exc)}")
            self.member.registry.note_rejection(err, nbytes)
            self._warn(err, "catch-up request")

    def _on_timer(self) -> None:
        try:
            request = self.member.request()
            if request is not None:
                self.request_pub.publish(UInt32MultiArray(data=request.to_data()))
            self.member.answer(self._publish)
        except Exception as exc:  # noqa: BLE001 - a failed round is retried on the next tick
            self._logger.error(f"fleet catch-up failed: {type(exc).__name__}: {one_line(exc)}",
                               throttle_duration_sec=WARN_PERIOD)

    def _warn(self, exc: FleetMessageError, what: str) -> None:
        """At most one warning per message type, kind and sender every :data:`WARN_PERIOD` s (a misconfigured
        peer sends every keyframe wrong; the counts are in /diagnostics); duplicates at debug level."""
        key, now = (what, exc.kind, exc.robot_id), time.monotonic()
        with self._warn_lock:
            last = self._warned.get(key)
            if last is not None and now - last < WARN_PERIOD:
                return
            self._warned[key] = now
        sender = "unknown sender" if exc.robot_id is None else f"robot {exc.robot_id}"
        count = self.member.stats().get(f"rejected.{exc.kind}", "?")
        # Duplicates are normal: catch-up answers are broadcast, so every robot that holds them
        # already refuses them. Debug only; the count is in /diagnostics.
        log = self._logger.debug if exc.kind == "duplicate" else self._logger.warning
        log(f"refused a fleet {what} from {sender} ({exc.kind}, {count} so far): {one_line(exc)}")

    # -- node events

    def map_reset(self) -> None:
        """The map was reset: a new session, peers' keyframes forgotten (asked for again)."""
        self.member.map_reset()
        self._logger.info(f"fleet: new session {self.member.registry.session:08x} after the map reset")

    def diagnostics(self) -> dict[str, Any]:
        """``fleet.*`` values for ``/diagnostics``: the member's counters (see
        :meth:`FleetMember.stats`) plus the robot id and session."""
        stats = self.member.stats()
        return {"fleet.robot_id": self.robot_id, "fleet.session": f"{self.member.registry.session:08x}",
                **{f"fleet.{k}": v for k, v in stats.items()}}
