"""``~/loop_markers``: keyframe positions and loop edges as a visualization_msgs/MarkerArray for RViz.

Published in the odometry frame (the frame_id of the node's pose messages) whenever keyframes
or candidates changed, at most every ``period`` seconds, reliable and transient local (a late
RViz still gets the last array). Only keyframes with a pose appear; an edge needs both ends.

Markers: namespace ``salad_keyframes`` (id 0, SPHERE_LIST, blue), ``salad_loops`` id 0
(LINE_LIST, green: verified candidates) and id 1 (LINE_LIST, orange: unverified ones, i.e.
``detector.verify`` off or accepted without a check). An empty set is sent as DELETE.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable

import numpy as np
from geometry_msgs.msg import Point
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from .ros_params import QOS_OVERRIDES

MARKER_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.TRANSIENT_LOCAL)
KEYFRAME_COLOR = (0.2, 0.45, 1.0, 0.9)
VERIFIED_COLOR = (0.1, 0.8, 0.25, 1.0)
UNVERIFIED_COLOR = (1.0, 0.6, 0.0, 0.85)
#: Loop edges kept for display (the newest).
MAX_EDGES = 10000


def _marker(ns: str, mid: int, kind: int, points: list[Point], color: tuple[float, ...], scale: float,
            frame_id: str, stamp: object) -> Marker:
    m = Marker(ns=str(ns), id=mid, type=kind, action=Marker.ADD if points else Marker.DELETE)
    m.header.frame_id = frame_id
    m.header.stamp = stamp
    m.pose.orientation.w = 1.0
    m.scale.x = m.scale.y = m.scale.z = float(scale)
    m.color = ColorRGBA(r=color[0], g=color[1], b=color[2], a=color[3])
    m.points = points
    return m


def build_markers(positions: np.ndarray, edges: Iterable[tuple[int, int, bool]], frame_id: str,
                  stamp: object) -> MarkerArray:
    """The array for keyframe ``positions`` (float[N, 3], NaN rows = no pose) and loop ``edges``
    ``(query_id, match_id, verified)`` between keyframe ids (rows of ``positions``)."""
    ok = np.isfinite(positions).all(axis=1) if len(positions) else np.zeros(0, bool)

    def point(i: int) -> Point:
        x, y, z = (float(v) for v in positions[i])
        return Point(x=x, y=y, z=z)

    lines: dict[bool, list[Point]] = {True: [], False: []}
    for q, j, verified in edges:
        if 0 <= q < len(ok) and 0 <= j < len(ok) and ok[q] and ok[j]:
            lines[bool(verified)] += [point(q), point(j)]
    return MarkerArray(markers=[
        _marker("salad_keyframes", 0, Marker.SPHERE_LIST, [point(i) for i in np.flatnonzero(ok)], KEYFRAME_COLOR,
                0.25, frame_id, stamp),
        _marker("salad_loops", 0, Marker.LINE_LIST, lines[True], VERIFIED_COLOR, 0.06, frame_id, stamp),
        _marker("salad_loops", 1, Marker.LINE_LIST, lines[False], UNVERIFIED_COLOR, 0.04, frame_id, stamp),
    ])


class LoopMarkers:
    """The ``~/loop_markers`` publisher of a node; ``keyframe_poses()`` returns float[N, 7]
    keyframe poses (NaN rows without one). Call :meth:`changed` and :meth:`add_edges` from any
    thread; publishing runs on the node's timer."""

    def __init__(self, node: Node, keyframe_poses: Callable[[], np.ndarray], period: float = 0.5,
                 frame_id: str = "odom") -> None:
        self._node = node
        self._poses = keyframe_poses
        self.frame_id = frame_id
        self._lock = threading.Lock()
        self._edges: collections.deque[tuple[int, int, bool]] = collections.deque(maxlen=MAX_EDGES)
        self._dirty = False
        self.published = 0
        self.pub = node.create_publisher(MarkerArray, "~/loop_markers", MARKER_QOS, qos_overriding_options=QOS_OVERRIDES)
        self._timer = node.create_timer(period, self.publish_if_changed)

    def set_frame(self, frame_id: str) -> None:
        """The odometry frame (from the pose messages' header)."""
        if frame_id and frame_id != self.frame_id:
            with self._lock:
                self.frame_id = frame_id
                self._dirty = True

    def changed(self) -> None:
        """Keyframes changed: republish on the next tick."""
        with self._lock:
            self._dirty = True

    def add_edges(self, edges: Iterable[tuple[int, int, bool]]) -> None:
        with self._lock:
            self._edges.extend(edges)
            self._dirty = True

    def clear(self) -> None:
        """Forget the edges (a reset of the map) and republish."""
        with self._lock:
            self._edges.clear()
            self._dirty = True

    def publish_if_changed(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            self._dirty = False
            edges, frame_id = list(self._edges), self.frame_id
        positions = np.asarray(self._poses(), np.float64).reshape(-1, 7)[:, :3]
        if self.published == 0 and not np.isfinite(positions).all(axis=1).any():
            return  # no keyframe pose known (yet): nothing to show
        msg = build_markers(positions, edges, frame_id, self._node.get_clock().now().to_msg())
        self.pub.publish(msg)
        self.published += 1
