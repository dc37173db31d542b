"""ROS 2 loop-closure node: a thin rclpy layer over :class:`salad_ros.pipeline.LoopClosurePipeline`.

Threading: the executor thread only decodes incoming images and hands the newest one to a
one-slot mailbox ("latest wins"); a worker thread runs the model, the detector and publishing.
A frame replaced in the mailbox before the worker took it is counted as dropped, so memory
stays bounded however fast the camera is. Services (save/reset) and the diagnostics timer run
on the executor; a lock keeps them from touching the database while the worker uses it.

Outputs (see README, "The loop-closure node"): ``~/loop_candidates`` and ``~/keyframes`` as
PointCloud2 tables (:mod:`salad_ros.io.table`; reliable, transient local), ``~/debug_image``
(computed only while someone subscribes) and ``/diagnostics``. Every topic takes the standard
``qos_overrides.*`` parameters; detector thresholds can change while the node runs
(:data:`salad_ros.ros_params.RUNTIME_PARAMETERS`). The relative-pose side (``camera_info`` and
``depth`` inputs paired by stamp, pose columns, ``~/loop_markers``) is :mod:`salad_ros.node_pose`;
keyframe sharing between robots (``fleet.enable``) is :mod:`salad_ros.node_fleet`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import SetParametersResult
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.exceptions import ParameterException
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import InvalidQosOverridesError
from sensor_msgs.msg import CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from . import debug_image
from .backends import Encoder, check_weights_file, create_encoder
from .config import SaladConfig
from .fileio import directory_problem
from .io.images import ImageDecodeError, msg_to_rgb, rgb_to_raw
from .io.messages import ns_to_sec_nanosec, pose_from_msg, stamp_to_ns
from .io.table import (
    CANDIDATE_COLUMNS,
    KEYFRAME_COLUMNS,
    make_rows,
    pack,
)
from .io.trajectory import Trajectory
from .node_fleet import NodeFleet
from .node_pose import NodePose
from .node_state import LatestFrameSlot, NodeStats, hardware_id, rss_bytes
from .params import DEFAULT_NODE_NAME, ConfigError, one_line
from .ros_params import QOS_OVERRIDES, RUNTIME_PARAMETERS, changed_config, declare_config, integers_as_doubles

# Seconds between repeated warnings of one bad-input kind.
_BAD_INPUT_LOG_PERIOD = 10.0
# /diagnostics warns when more than this share of the images sent in a period was lost in transport.
_LOST_WARN_SHARE = 0.2
# Poses kept for stamp lookup (odometry at 100 Hz covers 2.5 s).
_POSE_HISTORY = 256
# Shutdown budget: the worker finishes its current frame (one inference) within this.
_WORKER_JOIN_TIMEOUT = 3.0

def _qos(depth: int, reliability: ReliabilityPolicy,
         durability: DurabilityPolicy = DurabilityPolicy.VOLATILE) -> QoSProfile:
    """A fresh profile per entity: rclpy writes qos_overrides.* values into the profile it is given."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=reliability, durability=durability)


# Image: sensor-data QoS with depth 1, only the newest image matters ("latest wins" end to end).
IMAGE_DEPTH = 1
# Poses: best-effort subscribers match both reliable and best-effort pose publishers.
POSE_DEPTH = 50
# ~/keyframes and ~/loop_candidates: a back end must not miss one, and one that starts late still
# gets the last TABLE_DEPTH messages of each (reliable, transient local).
TABLE_DEPTH = 100


class StartupError(RuntimeError):
    """The node cannot start; the message is one line naming the cause (usually a parameter)."""


# --------------------------------------------------------------------------------------------
# Frame hand-over


@dataclass
class _Frame:
    rgb: np.ndarray
    header: Header
    stamp_ns: int
    received: float  # time.monotonic() at the callback
    companions: dict | None = None  # matched camera_info / depth messages (salad_ros.node_pose)


# --------------------------------------------------------------------------------------------
# The node


class LoopClosureNode(Node):
    """Subscribes to a camera, publishes loop-closure candidates (see the module docstring).

    ``encoder`` lets tests and benchmarks share one already-built model between nodes; it must
    match the node's model parameters. Other keyword arguments go to :class:`rclpy.node.Node`
    (``context``, ``cli_args``, ``parameter_overrides``, ``namespace``).
    Raises :class:`StartupError` (node already destroyed) when it cannot start.
    """

    def __init__(self, node_name: str = DEFAULT_NODE_NAME, *, encoder: Encoder | None = None, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        try:
            self.cfg = self._declare_parameters()
            self._build_pipeline(encoder)
            self._start()
        except BaseException:
            self.destroy_node()
            raise
        node_cfg = self.cfg.node
        image_qos = self._image_sub.qos_profile
        self.get_logger().info(
            f"ready: {self.pipeline.describe()}; subscribed to "
            f"{self._image_sub.topic_name} ({node_cfg.image_transport}, "
            f"{'reliable' if image_qos.reliability == ReliabilityPolicy.RELIABLE else 'best effort'}, "
            f"depth {image_qos.depth}); database {self.pipeline.keyframe_count} keyframes"
            + (f" from {node_cfg.database_path}" if self.pipeline.keyframe_count else "")
        )

    def _start(self) -> None:
        """State, subscriptions, publishers, services, the diagnostics timer and the worker."""
        self._pipeline_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.stats = NodeStats()
        self._slot = LatestFrameSlot()
        self._bad_logged: dict[str, float] = {}
        self._poses: collections.deque = collections.deque(maxlen=_POSE_HISTORY)
        self._poses_lock = threading.Lock()
        self._db_memory = self.pipeline.memory_bytes()
        self._last_diag = (time.monotonic(), 0, 0, 0)
        # diagnostic_updater's form, '<node name>: <task>' without a leading slash; in a namespace
        # the name keeps it ('robot1/salad_loop_closure: ...') so robots don't share one status
        self._diag_name = f"{self.get_fully_qualified_name().lstrip('/')}: loop closure"
        self._hardware_id = hardware_id(self.pipeline.device)
        self._closed = False

        node_cfg = self.cfg.node
        reliability = ReliabilityPolicy.RELIABLE if node_cfg.reliable_qos else ReliabilityPolicy.BEST_EFFORT
        if node_cfg.image_transport == "compressed":
            # image_transport's convention: the base topic is resolved (remapped) first, so
            # '-r image:=/cam' moves the subscription to /cam/compressed
            msg_type, topic = CompressedImage, self.resolve_topic_name("image") + "/compressed"
        else:
            msg_type, topic = Image, "image"
        # best effort over UDP loses large frames before they reach us: count what DDS reports lost
        try:
            self._image_sub = self._subscribe(msg_type, topic, self._on_image, _qos(IMAGE_DEPTH, reliability),
                                              event_callbacks=SubscriptionEventCallbacks(message_lost=self._on_message_lost))
            self._lost_reported = True
        except _rclpy.UnsupportedEventTypeError:  # an RMW without the event: frames_lost_in_transport stays 0
            self._image_sub = self._subscribe(msg_type, topic, self._on_image, _qos(IMAGE_DEPTH, reliability))
            self._lost_reported = False
        if node_cfg.pose_source != "none":
            msg_type, topic = (Odometry, "odom") if node_cfg.pose_source == "odometry" else (PoseStamped, "pose")
            self._pose_sub = self._subscribe(msg_type, topic, self._on_pose,
                                             _qos(POSE_DEPTH, ReliabilityPolicy.BEST_EFFORT))

        table_qos = (TABLE_DEPTH, ReliabilityPolicy.RELIABLE, DurabilityPolicy.TRANSIENT_LOCAL)
        self._candidates_pub = self._advertise(PointCloud2, "~/loop_candidates", _qos(*table_qos))
        self._keyframes_pub = self._advertise(PointCloud2, "~/keyframes", _qos(*table_qos))
        # reliable: matches best-effort and reliable viewers (rviz, rqt_image_view) alike
        self._debug_pub = self._advertise(Image, "~/debug_image", _qos(1, ReliabilityPolicy.RELIABLE))
        self._diag_pub = self._advertise(DiagnosticArray, "/diagnostics", _qos(10, ReliabilityPolicy.RELIABLE))
        self._save_srv = self.create_service(Trigger, "~/save_database", self._on_save)
        self._reset_srv = self.create_service(Trigger, "~/reset_database", self._on_reset)
        self._diag_timer = self.create_timer(node_cfg.diagnostics_period, self._publish_diagnostics)
        self._pose_io = NodePose(self, self.cfg, self._hand_over, lambda: self.pipeline.keyframe_poses(own_only=True))
        try:  # peers' keyframes: salad_ros.node_fleet (nothing at all with fleet.enable false)
            self._fleet = NodeFleet(self) if self.cfg.fleet.enable else None
        except ConfigError as exc:
            raise StartupError(one_line(exc)) from exc
        self._warn_unused_qos_overrides()  # after every entity that takes qos_overrides.* was created

        self._worker = threading.Thread(target=self._worker_loop, name="salad_worker", daemon=True)
        self._worker.start()
        # runtime changes (RUNTIME_PARAMETERS; the others are read-only): checked, then applied
        self.add_pre_set_parameters_callback(lambda params: integers_as_doubles(SaladConfig, params))
        self.add_on_set_parameters_callback(self._check_parameter_change)
        self.add_post_set_parameters_callback(self._apply_parameter_change)

    def _subscribe(self, msg_type: type, topic: str, callback: Any, qos: QoSProfile, **kwargs: Any) -> Any:
        with self._qos_overrides_checked("subscription", topic):
            return self.create_subscription(msg_type, topic, callback, qos, qos_overriding_options=QOS_OVERRIDES,
                                            **kwargs)

    def _advertise(self, msg_type: type, topic: str, qos: QoSProfile) -> Any:
        with self._qos_overrides_checked("publisher", topic):
            return self.create_publisher(msg_type, topic, qos, qos_overriding_options=QOS_OVERRIDES)

    @contextlib.contextmanager
    def _qos_overrides_checked(self, entity: str, topic: str) -> Any:
        """rclpy's errors about a qos_overrides.* value as a StartupError naming the parameter."""
        try:
            yield
        except _rclpy.UnsupportedEventTypeError:
            raise
        except (RuntimeError, ParameterException, InvalidQosOverridesError, TypeError, ValueError) as exc:
            prefix = f"qos_overrides.{self.resolve_topic_name(topic)}.{entity}."
            policy = re.search(r"policy `(\w+)`", str(exc))
            name = prefix + (policy.group(1) if policy else "*")
            raise StartupError(f"parameter '{name}': {one_line(exc)}") from exc

    def _warn_unused_qos_overrides(self) -> None:
        unused = sorted(n for n in self._parameter_overrides if n.startswith("qos_overrides.") and not self.has_parameter(n))
        if unused:
            mine = sorted({n.rsplit(".", 1)[0] + ".*" for n in self._parameters if n.startswith("qos_overrides.")})
            self.get_logger().warning(f"ignoring {', '.join(unused)}: no such topic and entity here (this node's "
                                      f"QoS parameters: {', '.join(mine)})")

    # -- start-up ---------------------------------------------------------------------------

    def _declare_parameters(self) -> SaladConfig:
        """Declare every config parameter (see :mod:`salad_ros.ros_params`) and build the config."""
        try:
            cfg = declare_config(self, SaladConfig, RUNTIME_PARAMETERS)
        except ConfigError as exc:
            raise StartupError(one_line(exc)) from exc
        try:
            problem = directory_problem(cfg.node.database_path)
        except ValueError as exc:
            raise StartupError(f"parameter 'database_path': {exc}") from exc
        if problem and cfg.node.save_on_shutdown:
            raise StartupError(f"parameter 'database_path': {problem}, so save_on_shutdown would fail")
        if problem:
            self.get_logger().warning(f"database_path {problem}: the map is used read-only, ~/save_database will fail")
        return cfg

    def _build_pipeline(self, encoder: Encoder | None) -> None:
        from .pipeline import LoopClosurePipeline  # after the config is valid: imports torch

        try:
            model = check_weights_file(self.cfg.model)
        except ConfigError as exc:
            raise StartupError(one_line(exc)) from exc
        self.cfg = dataclasses.replace(self.cfg, model=model)
        if encoder is None:
            try:
                encoder = create_encoder(model)
            except ConfigError as exc:
                raise StartupError(one_line(exc)) from exc
            except Exception as exc:  # noqa: BLE001 - checkpoint/engine problems: one clear line
                what = "weights" if model.backend == "torch" else "engine"
                raise StartupError(f"parameter '{what}': {one_line(exc)}") from exc
        try:
            # colour thumbnails: the debug view's match panel
            self.pipeline = LoopClosurePipeline(self.cfg, encoder=encoder, color_thumbnails=True)
        except ConfigError as exc:
            raise StartupError(one_line(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - e.g. a database saved by another model
            raise StartupError(f"parameter 'database_path': {one_line(exc)}") from exc
        # The descriptor identity says it for every backend (an ONNX/engine file exported from
        # random weights carries the same '/random' fingerprint).
        self.random_weights = self.pipeline.random_weights
        if self.random_weights:
            for line in ("*" * 72,
                         "RANDOM WEIGHTS: no trained weights (empty 'weights', or a file exported from random ones).",
                         "Descriptors are meaningless; loop candidates are NOT real. Development only.",
                         "*" * 72):
                self.get_logger().warning(line)

    # -- runtime parameter changes (executor thread) ----------------------------------------

    def _check_parameter_change(self, params: list[Parameter]) -> SetParametersResult:
        if not any(p.name in RUNTIME_PARAMETERS for p in params):
            return SetParametersResult(successful=True)  # not ours (e.g. qos_overrides.* being declared)
        try:
            changed_config(self.cfg, params)
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=one_line(exc))
        return SetParametersResult(successful=True)

    def _apply_parameter_change(self, params: list[Parameter]) -> None:
        mine = [p for p in params if p.name in RUNTIME_PARAMETERS]
        if not mine:
            return
        new = changed_config(self.cfg, mine)  # checked by _check_parameter_change
        with self._pipeline_lock:  # between frames: a frame sees the old or the new thresholds
            self.pipeline.update_detector_config(new.detector)
            self.cfg = dataclasses.replace(self.cfg, node=new.node, detector=new.detector)
        self.get_logger().info("changed " + ", ".join(f"{p.name} = {p.value!r}" for p in mine))

    # -- input (executor thread) -------------------------------------------------------------

    def _on_image(self, msg: Image | CompressedImage) -> None:
        """Decode and hand over the newest frame; bad frames are counted and skipped."""
        with self._stats_lock:
            self.stats.received += 1
        try:
            rgb = msg_to_rgb(msg, self.cfg.node.max_image_pixels)
        except ImageDecodeError as exc:
            self._count_bad(exc.kind, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - the decoders raise ImageDecodeError only; never end the executor
            self._count_bad("undecodable", f"{type(exc).__name__}: {one_line(exc)}")
            return
        stamp_ns = stamp_to_ns(msg.header.stamp)
        if stamp_ns == 0:  # unstamped driver: time-based exclusion needs some time
            stamp_ns = self.get_clock().now().nanoseconds
        self._pose_io.add_frame(_Frame(rgb, msg.header, stamp_ns, time.monotonic()))

    def _hand_over(self, frame: _Frame) -> None:
        """To the worker (latest wins: a frame it never took is counted as dropped)."""
        if self._slot.put(frame):
            with self._stats_lock:
                self.stats.dropped += 1

    def _on_message_lost(self, info: Any) -> None:
        with self._stats_lock:
            self.stats.lost_in_transport += int(info.total_count_change)

    def _count_bad(self, kind: str, message: str) -> None:
        now = time.monotonic()
        with self._stats_lock:
            self.stats.bad[kind] = self.stats.bad.get(kind, 0) + 1
            count = self.stats.bad[kind]
            last = self._bad_logged.get(kind)
            if last is not None and now - last < _BAD_INPUT_LOG_PERIOD:
                return
            self._bad_logged[kind] = now
        self.get_logger().warning(f"skipping bad image ({kind}, {count} so far): {message}")

    def _on_pose(self, msg: Odometry | PoseStamped) -> None:
        with self._poses_lock:
            self._poses.append((stamp_to_ns(msg.header.stamp), pose_from_msg(msg)))
        self._pose_io.set_odometry_frame(msg.header.frame_id)

    def _pose_at(self, stamp_ns: int) -> Any:
        """The pose nearest to ``stamp_ns`` within ``pose_tolerance``, else None."""
        with self._poses_lock:
            history = list(self._poses)
        if not history:
            return None
        stamps, poses = zip(*history, strict=True)
        return Trajectory.from_poses(stamps, poses).lookup([stamp_ns], int(self.cfg.node.pose_tolerance * 1e9))[0]

    # -- worker thread -----------------------------------------------------------------------

    def _worker_loop(self) -> None:
        while True:
            frame = self._slot.take()
            if frame is None:
                return
            try:
                self._process(frame)
            except Exception as exc:  # noqa: BLE001 - one bad frame must not stop the node
                with self._stats_lock:
                    self.stats.failed += 1
                if self.context.ok():
                    self.get_logger().error(f"processing a frame failed: {type(exc).__name__}: {one_line(exc)}",
                                            throttle_duration_sec=10.0)

    def _process(self, frame: _Frame) -> None:
        pose = self._pose_at(frame.stamp_ns) if self.cfg.node.pose_source != "none" else None
        camera, depth = self._pose_io.inputs_for(frame)
        with self._pipeline_lock:
            t0 = time.perf_counter()
            result = self.pipeline.process(frame.rgb, frame.stamp_ns, pose=pose, frame_id=frame.header.frame_id,
                                           camera=camera, depth=depth)
            latency = time.perf_counter() - t0
        with self._stats_lock:
            self.stats.processed += 1
            self.stats.latencies.append(latency)
        if not self.context.ok():
            return
        if result.is_keyframe and result.robot_keyframe_id is not None:
            self._publish_keyframe(frame, result.robot_keyframe_id)
            if self._fleet is not None:
                self._fleet.on_keyframe(result)
        if result.candidates and result.robot_keyframe_id is not None:
            self._publish_candidates(frame, result.robot_keyframe_id, result.candidates)
        self._pose_io.on_result(result)
        if self._debug_pub.get_subscription_count() > 0:
            self._publish_debug(frame, result)
        # memory_bytes may walk the index: refresh it off the latency-critical path
        with self._pipeline_lock:
            self._db_memory = self.pipeline.memory_bytes()
            self._pose_io.refresh(self.pipeline)

    def _publish_keyframe(self, frame: _Frame, keyframe_id: int) -> None:
        sec, nanosec = ns_to_sec_nanosec(frame.stamp_ns)
        rows = make_rows(KEYFRAME_COLUMNS, [{"keyframe_id": keyframe_id, "stamp_sec": sec, "stamp_nanosec": nanosec}])
        self._keyframes_pub.publish(self._table_msg(frame.header, KEYFRAME_COLUMNS, rows))
        with self._stats_lock:
            self.stats.keyframes_published += 1

    def _publish_candidates(self, frame: _Frame, query_keyframe_id: int, candidates: list) -> None:
        records = []
        for c in candidates:  # ids in the robots' own numbering (= map ids while the map holds no peers)
            sec, nanosec = ns_to_sec_nanosec(c.match_stamp_ns)
            records.append({
                "query_id": query_keyframe_id, "match_robot_id": int(c.match_robot_id),
                "match_id": int(c.match_keyframe_id), "match_stamp_sec": sec, "match_stamp_nanosec": nanosec,
                "score": float(c.score), "rank": int(c.rank), "inliers": int(c.inliers or 0),
                # rejected candidates are not published: verified is True or None (not checked)
                "verified": 1 if c.verified else 0,
                **self._pose_io.columns(c),
            })
        rows = make_rows(CANDIDATE_COLUMNS, records)
        header = self._pose_io.candidate_header(frame.header)
        self._candidates_pub.publish(self._table_msg(header, CANDIDATE_COLUMNS, rows))
        with self._stats_lock:
            self.stats.candidate_messages += 1
            self.stats.candidates += len(records)

    @staticmethod
    def _table_msg(header: Header, columns: tuple, rows: np.ndarray) -> PointCloud2:
        fields, step, data = pack(columns, rows)
        msg = PointCloud2(header=header, height=1, width=len(rows), is_bigendian=False,
                          point_step=step, row_step=step * len(rows), is_dense=True)
        msg.fields = [PointField(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in fields]
        msg.data = data
        return msg

    def _publish_debug(self, frame: _Frame, result: Any) -> None:
        try:
            mass = self.pipeline.heatmap(frame.rgb)  # a second forward pass: only on demand
        except Exception:  # noqa: BLE001 - a backend without heat maps still gets the side-by-side view
            mass = None
        best = min(result.candidates, key=lambda c: c.rank) if result.candidates else None
        with self._pipeline_lock:
            match = self.pipeline.thumbnail(best.match_id, color=True) if best is not None else None
        peer = best is not None and best.match_robot_id != self.pipeline.robot_id
        view = debug_image.compose(  # keyframes named as in the candidate table
            frame.rgb, match=match, mass=mass, query_id=result.robot_keyframe_id,
            match_id=best.match_keyframe_id if best is not None else None,
            match_robot_id=best.match_robot_id if peer else None,
            score=float(best.score) if best is not None else None,
            verified=best.verified if best is not None else None,
        )
        h, w, step, data = rgb_to_raw(view, "rgb8")
        msg = Image(header=frame.header, height=h, width=w, encoding="rgb8", is_bigendian=0, step=step)
        msg.data = data
        self._debug_pub.publish(msg)

    # -- services and diagnostics (executor thread) -----------------------------------------

    def _on_save(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        path = self.cfg.node.database_path
        if not path:
            response.success, response.message = False, "parameter 'database_path' is empty: nowhere to save"
            return response
        try:
            with self._pipeline_lock:
                report = self.pipeline.save(path)
        except Exception as exc:  # noqa: BLE001 - report, don't crash the executor
            response.success, response.message = False, f"saving to {path} failed: {one_line(exc)}"
            self.get_logger().error(response.message)
            return response
        response.success, response.message = True, report.summary()
        self.get_logger().info(response.message)
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._pipeline_lock:
            n = self.pipeline.keyframe_count
            self.pipeline.reset()
            if self._fleet is not None:  # a new session: peers get the new keyframes, we ask them again
                self._fleet.map_reset()
            self._db_memory = self.pipeline.memory_bytes()
        self._pose_io.on_reset()
        path = self.cfg.node.database_path
        when = "the next save" + (" (~/save_database or on shutdown)" if self.cfg.node.save_on_shutdown else "")
        response.success = True
        response.message = (f"forgot {n} keyframes; the saved map in {path} is untouched until {when}, which keeps "
                             "it as a backup beside the new one" if path else f"forgot {n} keyframes (nothing saved: "
                             "no database_path)")
        self.get_logger().info(response.message)
        return response

    def diagnostics_status(self) -> DiagnosticStatus:
        """The node's DiagnosticStatus (rates over the time since the previous call)."""
        now = time.monotonic()
        with self._stats_lock:
            s = self.stats.snapshot()
        t_prev, received_prev, processed_prev, lost_prev = self._last_diag
        dt = max(now - t_prev, 1e-6)
        self._last_diag = (now, s["received"], s["processed"], s["lost_in_transport"])
        received, lost = s["received"] - received_prev, s["lost_in_transport"] - lost_prev
        lat = np.asarray(s["latencies"], dtype=np.float64) * 1000.0
        pipeline = self.pipeline
        db_size = pipeline.keyframe_count  # read without a lock (a length); peers' keyframes arrive beside the worker
        values = {
            "input_rate_hz": f"{received / dt:.2f}",
            "processed_rate_hz": f"{(s['processed'] - processed_prev) / dt:.2f}",
            "frames_received": s["received"],
            "frames_lost_in_transport": s["lost_in_transport"] if self._lost_reported else "not reported by this RMW",
            "frames_processed": s["processed"],
            "frames_dropped": s["dropped"],
            "bad_frames": sum(s["bad"].values()),
            **{f"bad_frames.{k}": v for k, v in s["bad"].items()},
            "processing_errors": s["failed"],
            "inference_latency_mean_ms": f"{lat.mean():.1f}" if lat.size else "nan",
            "inference_latency_p95_ms": f"{np.percentile(lat, 95):.1f}" if lat.size else "nan",
            "database_size": db_size,
            "database_memory_bytes": self._db_memory,
            "process_memory_bytes": rss_bytes(),
            "keyframes_published": s["keyframes_published"],
            "candidate_messages": s["candidate_messages"],
            "candidates": s["candidates"],
            "device": pipeline.device,
            "backend": pipeline.backend,
            "model": pipeline.model_name,
            "precision": self.cfg.model.precision,
            "random_weights": str(self.random_weights).lower(),
            **self._pose_io.diagnostics(),
            **(self._fleet.diagnostics() if self._fleet is not None else {}),
        }
        warnings = []
        if lost > 0 and lost > _LOST_WARN_SHARE * (lost + received):
            warnings.append(f"{lost} of {lost + received} images lost in transport before reaching the node "
                            f"({100 * lost / (lost + received):.0f} %): large best-effort images over UDP; set "
                            "reliable_qos (if the camera publishes reliable), enlarge the socket receive buffers or use "
                            "compressed images (README, 'Troubleshooting: lost frames')")
        elif received == 0:
            warnings.append("no images received")
        if self.random_weights:
            warnings.append("random weights: candidates are meaningless")
        level, message = DiagnosticStatus.OK, f"{values['processed_rate_hz']} Hz processed, {db_size} keyframes"
        if not self._worker.is_alive() and not self._closed:
            level, message = DiagnosticStatus.ERROR, "worker thread stopped"
        elif warnings:
            level, message = DiagnosticStatus.WARN, "; ".join(warnings + [message])
        return DiagnosticStatus(
            level=level, name=self._diag_name, message=message, hardware_id=self._hardware_id,
            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
        )

    def _publish_diagnostics(self) -> None:
        msg = DiagnosticArray(status=[self.diagnostics_status()])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)

    # -- shutdown ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the worker (it finishes its current frame) and save if ``save_on_shutdown``.

        Safe to call more than once and after the context was shut down.
        """
        if self._closed or not hasattr(self, "_worker"):  # closed, or start-up failed before the worker
            return
        self._closed = True
        self._slot.close()
        self._worker.join(timeout=_WORKER_JOIN_TIMEOUT)
        if self._worker.is_alive():
            self._log("warning", "worker still busy at shutdown; not waiting for it")
        if self.cfg.node.save_on_shutdown:
            if not self._pipeline_lock.acquire(timeout=1.0):
                self._log("error", "database not saved: the worker still holds it")
                return
            try:
                n = self.pipeline.keyframe_count
                self._log("info", f"saving {n} keyframes to {self.cfg.node.database_path} ...")
                report = self.pipeline.save()
                self._log("info", report.summary())
            except Exception as exc:  # noqa: BLE001 - report and still exit
                self._log("error", f"saving the database failed: {one_line(exc)}")
            finally:
                self._pipeline_lock.release()

    def _log(self, level: str, message: str) -> None:
        # After the context is gone rclpy's logger cannot reach /rosout and complains: use stderr.
        if self.context.ok():
            getattr(self.get_logger(), level)(message)
        else:
            print(f"[{level.upper()}] [{self.get_name()}]: {message}", file=sys.stderr, flush=True)

    def destroy_node(self) -> None:
        if hasattr(self, "_slot"):
            self.close()
        super().destroy_node()
