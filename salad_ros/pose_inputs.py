"""A colour frame's pose inputs from ROS messages, without rclpy: camera_info and depth paired
with the frame by stamp, decoded and checked, bad input counted per kind.

* :class:`PoseInputs` turns a frame's matched ``sensor_msgs/CameraInfo`` and depth
  ``sensor_msgs/Image`` (``16UC1`` mm or ``32FC1`` m; any object with their fields) into a
  :class:`~salad_ros.geometry.camera.CameraModel` and float metres. It keeps the last valid
  CameraInfo per frame_id: a camera_info published once (latched) or at a lower rate than the
  images still serves later frames. The node and ``salad_replay`` both use it.
* :class:`CompanionSync` is the node's pairing: a :class:`~salad_ros.io.stamp_matcher.StampMatcher`
  over the companion streams heard from recently (a stream that never publishes costs no
  waiting), with a wall-clock bound on how long a frame waits for them.

Counter kinds (:attr:`PoseInputs.counts`, shown as ``pose_input.<kind>`` in ``/diagnostics``):
``missing_camera_info``, ``missing_depth`` (a stream that exists had nothing for the frame),
:data:`~salad_ros.geometry.camera.INPUT_ERROR_KINDS` (``invalid_camera_info``,
``image_size_mismatch``, ``depth_size_mismatch``, ``depth_encoding``) and ``empty_depth``
(no valid pixel: all zero or NaN).
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .geometry.camera import CameraModel, PoseInputError
from .io.depth import depth_msg_to_metres
from .io.stamp_matcher import StampMatcher, SyncedFrame

CAMERA_INFO, DEPTH = "camera_info", "depth"
#: Every kind :class:`PoseInputs` counts.
POSE_INPUT_KINDS = ("missing_camera_info", "missing_depth", "invalid_camera_info", "image_size_mismatch",
                    "depth_size_mismatch", "depth_encoding", "empty_depth")


class PoseInputs:
    """Matched companion messages -> ``(CameraModel | None, depth | None)``; see the module docstring."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self._cameras: dict[str, CameraModel] = {}
        self._lock = threading.Lock()

    def _count(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1

    def snapshot(self) -> dict[str, int]:
        """Every kind with its count (zeros included), thread-safe."""
        with self._lock:
            return {k: self.counts.get(k, 0) for k in POSE_INPUT_KINDS}

    def resolve(self, image_shape: Sequence[int], frame_id: str, camera_msg: Any, depth_msg: Any, *,
                camera_expected: bool = True, depth_expected: bool = True) -> tuple[CameraModel | None, np.ndarray | None]:
        """The frame's camera model (its own CameraInfo, else the last valid one of ``frame_id``)
        and depth in metres, both checked against the image; what is missing or bad is counted
        (missing ones only when that stream is ``expected``) and returned as None."""
        camera = self._camera(image_shape, frame_id, camera_msg, camera_expected)
        depth = self._depth(image_shape, depth_msg, depth_expected)
        return camera, depth

    def _camera(self, shape: Sequence[int], frame_id: str, msg: Any, expected: bool) -> CameraModel | None:
        if msg is None:
            camera = self._cameras.get(frame_id)
            if camera is None:
                if expected:
                    self._count("missing_camera_info")
                return None
        else:
            try:
                camera = CameraModel.from_camera_info(msg).validate()
            except PoseInputError as exc:
                self._count(exc.kind)
                return None
            except (AttributeError, TypeError, ValueError):  # not shaped like a CameraInfo at all
                self._count("invalid_camera_info")
                return None
        try:
            camera.check_image(shape)
        except PoseInputError as exc:
            self._count(exc.kind)
            return None
        self._cameras[frame_id] = camera
        return camera

    def _depth(self, shape: Sequence[int], msg: Any, expected: bool) -> np.ndarray | None:
        if msg is None:
            if expected:
                self._count("missing_depth")
            return None
        try:
            depth = depth_msg_to_metres(msg)
        except PoseInputError as exc:
            self._count(exc.kind)
            return None
        except (AttributeError, TypeError, ValueError):
            self._count("depth_encoding")
            return None
        if depth.shape != tuple(shape[:2]):
            self._count("depth_size_mismatch")
            return None
        if not np.isfinite(depth).any():  # decoding made every invalid pixel NaN
            self._count("empty_depth")
            return None
        return depth


class CompanionSync:
    """Pairs colour frames with camera_info and depth messages by stamp (the node's side).

    Only streams heard from within ``stale_s`` seconds are waited for (none: frames pass at
    once); when that set changes the matcher is rebuilt, its waiting frames passed on first. A
    frame waits at most ``max_wait_s`` of wall clock (:meth:`expire`, called by a timer, and on
    every new message); then it goes on with what has arrived. Thread-safe.
    """

    STREAMS = (CAMERA_INFO, DEPTH)

    def __init__(self, tolerance_ns: int, max_wait_s: float, *, stale_s: float = 5.0, max_pending: int = 10,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tolerance_ns = int(tolerance_ns)
        self.max_wait_s = float(max_wait_s)
        self.stale_s = float(stale_s)
        self.max_pending = int(max_pending)
        self._clock = clock
        self._lock = threading.Lock()
        self._heard: dict[str, float] = {}
        self._streams: tuple[str, ...] = ()
        self._matcher: StampMatcher | None = None
        self._arrivals: collections.deque[tuple[float, int]] = collections.deque()
        self._old_counts: collections.Counter[str] = collections.Counter()

    def heard(self, stream: str) -> bool:
        """True once ``stream`` has delivered a message (its absence for a frame is then counted)."""
        return stream in self._heard

    @property
    def streams(self) -> tuple[str, ...]:
        """The streams frames wait for now."""
        return self._streams

    def add_companion(self, stream: str, stamp_ns: int, msg: Any) -> list[SyncedFrame]:
        """Buffer a camera_info or depth message; returns the frames ready to go, oldest first."""
        if stream not in self.STREAMS:
            raise KeyError(f"unknown stream {stream!r}")
        with self._lock:
            now = self._clock()
            self._heard[stream] = now
            out = self._refresh(now)
            assert self._matcher is not None  # the stream just heard from is active
            out += self._matcher.add_companion(stream, int(stamp_ns), msg)
            return out + self._expire(now)

    def add_frame(self, stamp_ns: int, frame: Any) -> list[SyncedFrame]:
        """Queue a colour frame; returns the frames ready to go, oldest first."""
        with self._lock:
            now = self._clock()
            out = self._refresh(now)
            if self._matcher is None:
                return out + [SyncedFrame(int(stamp_ns), frame, {})]
            self._arrivals.append((now, int(stamp_ns)))
            out += self._matcher.add_frame(int(stamp_ns), frame)
            return out + self._expire(now)

    def expire(self) -> list[SyncedFrame]:
        """Frames that waited ``max_wait_s`` or longer, and those no longer waited for."""
        with self._lock:
            now = self._clock()
            return self._refresh(now) + self._expire(now)

    def counts(self) -> dict[str, int]:
        """The matchers' counters (``late_<stream>``, ``evicted_<stream>``, ...), all sessions."""
        with self._lock:
            total = collections.Counter(self._old_counts)
            if self._matcher is not None:
                total.update(self._matcher.counts)
            return dict(total)

    def _expire(self, now: float) -> list[SyncedFrame]:
        cutoff = None
        while self._arrivals and now - self._arrivals[0][0] >= self.max_wait_s:
            cutoff = self._arrivals.popleft()[1]
        if cutoff is None or self._matcher is None:
            return []
        return self._matcher.flush_until(cutoff)

    def _refresh(self, now: float) -> list[SyncedFrame]:
        active = tuple(s for s in self.STREAMS if now - self._heard.get(s, -math.inf) < self.stale_s)
        if active == self._streams:
            return []
        out: list[SyncedFrame] = []
        if self._matcher is not None:
            out = self._matcher.flush()
            self._old_counts.update(self._matcher.counts)
        self._streams = active
        self._arrivals.clear()
        wait_ns = int(self.max_wait_s * 1e9)
        self._matcher = StampMatcher(active, self.tolerance_ns, wait_ns, self.max_pending) if active else None
        return out
