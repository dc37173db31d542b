"""The loop-closure node's relative-pose side, kept out of :mod:`salad_ros.node`.

:class:`NodePose` owns the ``camera_info`` (sensor_msgs/CameraInfo) and ``depth``
(sensor_msgs/Image, ``16UC1`` mm or ``32FC1`` m, aligned to the colour image) subscriptions,
pairs them with colour frames by stamp (:class:`~salad_ros.pose_inputs.CompanionSync`: within
``sync_tolerance``, waiting at most ``sync_max_wait`` of wall clock), turns a frame's
companions into a camera model and depth for the pipeline (:class:`~salad_ros.pose_inputs.PoseInputs`,
in the worker thread, bad input counted per kind), gives candidate messages their pose columns
and header, keeps ``~/loop_markers`` (:mod:`salad_ros.markers`) up to date and adds the pose
values to ``/diagnostics``. With ``pose_estimation: none`` there are no subscriptions and
frames go straight to the worker.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from .config import SaladConfig
from .io.messages import stamp_to_ns
from .loop_pose import pose_columns
from .markers import LoopMarkers
from .pose_inputs import CAMERA_INFO, DEPTH, CompanionSync, PoseInputs
from .ros_params import QOS_OVERRIDES

# Best effort (matches reliable publishers too), a few messages: companions wait in the matcher.
CAMERA_INFO_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.BEST_EFFORT,
                             durability=DurabilityPolicy.VOLATILE)
DEPTH_QOS_BEST_EFFORT = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
DEPTH_QOS_RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE)


class NodePose:
    """Relative-pose input and output of a :class:`~salad_ros.node.LoopClosureNode` (module docstring).

    ``hand_over(frame)`` passes a frame (with its ``companions`` set) on to the worker;
    ``keyframe_poses()`` returns the map's keyframe poses for the markers.
    """

    def __init__(self, node: Node, cfg: SaladConfig, hand_over: Callable[[Any], None],
                 keyframe_poses: Callable[[], Any]) -> None:
        pose = cfg.pose
        self.enabled = pose.pose_estimation != "none"
        self._hand_over = hand_over
        self.inputs = PoseInputs()
        self.sync = CompanionSync(int(round(pose.sync_tolerance * 1e9)), pose.sync_max_wait)
        self._base_frame = pose.base_frame if pose.camera_to_base.strip() else ""
        self._robot_id = cfg.robot.robot_id
        self._pipeline_stats: dict[str, Any] = {}
        self.markers = LoopMarkers(node, keyframe_poses) if cfg.node.pose_source != "none" else None
        if not self.enabled:
            return
        depth_qos = DEPTH_QOS_RELIABLE if cfg.node.reliable_qos else DEPTH_QOS_BEST_EFFORT
        self.camera_info_sub = node.create_subscription(CameraInfo, "camera_info", self._on_camera_info,
                                                        CAMERA_INFO_QOS, qos_overriding_options=QOS_OVERRIDES)
        self.depth_sub = node.create_subscription(Image, "depth", self._on_depth, depth_qos,
                                                  qos_overriding_options=QOS_OVERRIDES)
        period = min(0.1, max(0.02, pose.sync_max_wait / 4))
        self._timer = node.create_timer(period, self._on_timer)

    # -- executor thread: pairing

    def add_frame(self, frame: Any) -> None:
        """A decoded colour frame (``stamp_ns``, ``companions`` attributes): on to the worker
        once its companions arrived or waited long enough."""
        if not self.enabled:
            self._hand_over(frame)
            return
        self._pass_on(self.sync.add_frame(frame.stamp_ns, frame))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._pass_on(self.sync.add_companion(CAMERA_INFO, stamp_to_ns(msg.header.stamp), msg))

    def _on_depth(self, msg: Image) -> None:
        self._pass_on(self.sync.add_companion(DEPTH, stamp_to_ns(msg.header.stamp), msg))

    def _on_timer(self) -> None:
        self._pass_on(self.sync.expire())

    def _pass_on(self, synced: list) -> None:
        for s in synced:
            s.frame.companions = s.companions
            self._hand_over(s.frame)

    def set_odometry_frame(self, frame_id: str) -> None:
        if self.markers is not None:
            self.markers.set_frame(frame_id)

    # -- worker thread

    def inputs_for(self, frame: Any) -> tuple[Any, Any]:
        """(camera model, depth in metres) of a frame for the pipeline; (None, None) without."""
        if not self.enabled:
            return None, None
        companions = getattr(frame, "companions", None) or {}
        return self.inputs.resolve(frame.rgb.shape, frame.header.frame_id, companions.get(CAMERA_INFO),
                                   companions.get(DEPTH), camera_expected=self.sync.heard(CAMERA_INFO),
                                   depth_expected=self.sync.heard(DEPTH))

    def refresh(self, pipeline: Any) -> None:
        """Copy the pipeline's pose statistics (call with the pipeline lock held)."""
        self._pipeline_stats = pipeline.pose_stats()

    def on_result(self, result: Any) -> None:
        """Markers follow new keyframes and candidates."""
        if self.markers is None:
            return
        # A loop with another robot's keyframe has its far end in that robot's map frame, not
        # in our odometry frame: no edge for it (nor a sphere, see keyframe_poses(own_only=True)).
        own = [c for c in result.candidates if int(c.match_robot_id) == self._robot_id]
        if own:
            self.markers.add_edges((int(c.query_id), int(c.match_id), bool(c.verified)) for c in own)
        elif result.is_keyframe:
            self.markers.changed()

    def on_reset(self) -> None:
        if self.markers is not None:
            self.markers.clear()

    # -- output

    def candidate_header(self, header: Header) -> Header:
        """The query image's header; with ``camera_to_base`` set its frame_id is ``base_frame``."""
        if not self._base_frame:
            return header
        return Header(stamp=header.stamp, frame_id=self._base_frame)

    @staticmethod
    def columns(candidate: Any) -> dict[str, Any]:
        """The pose columns of a candidate's table row."""
        return pose_columns(getattr(candidate, "relative_pose", None))

    def diagnostics(self) -> dict[str, Any]:
        """Values for ``/diagnostics``: estimates per status, mean ms per candidate, bad or
        missing input per kind (``pose_input.<kind>``), stored keyframes."""
        s = self._pipeline_stats
        if not self.enabled:
            return {"pose_estimation": "none"}
        ms = s.get("ms_per_candidate", math.nan)
        feat_ms = s.get("feature_ms_per_keyframe", math.nan)
        inputs = dict(self.inputs.snapshot())
        for kind, n in s.get("input", {}).items():  # the pipeline's own checks (no_match_features, ...)
            inputs[kind] = inputs.get(kind, 0) + n
        late = {k: v for k, v in self.sync.counts().items() if k.startswith(("late_", "evicted_"))}
        return {
            "pose_estimation": "on" if self.sync.heard(CAMERA_INFO) else "waiting for camera_info",
            "pose_estimates": s.get("estimates", 0),
            **{f"pose_status.{k}": v for k, v in s.get("status", {0: 0, 1: 0, 2: 0}).items()},
            "pose_estimation_mean_ms": "nan" if math.isnan(ms) else f"{ms:.1f}",
            "pose_features_mean_ms": "nan" if math.isnan(feat_ms) else f"{feat_ms:.1f}",
            "pose_features_stored": s.get("stored_keyframes", 0),
            **{f"pose_input.{k}": v for k, v in inputs.items()},
            **{f"pose_input.{k}": v for k, v in late.items()},
        }
