"""Relative poses of loop candidates inside the pipeline, without ROS.

:class:`LoopPoseEstimator` is the pipeline's pose component. For every keyframe that came with
a camera model it keeps the pose features (keypoints, descriptors and depth at the keypoints,
:mod:`salad_ros.geometry.features`) in a bounded store saved with the map (the attachment
``pose_features-<gen>.npz``, committed with it), so a later session gets poses against an
earlier session's keyframes without their images. For every loop candidate it estimates the query keyframe's pose in the
match keyframe's frame from the stored features
(:func:`salad_ros.relative_pose.estimate_from_features`), honouring ``pose_estimation`` and,
when ``camera_to_base`` is set, expressing it between the two keyframes' base frames.

Bad input never raises: a camera model that fails its checks, an image of another size than the
camera's, depth of another size or type, or depth without one valid pixel is counted per kind
(:attr:`LoopPoseEstimator.counts`) and the frame goes on without it (no camera: no pose).
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .geometry.camera import CameraModel, PoseInputError
from .geometry.feature_store import PoseFeatureStore
from .geometry.features import PoseFeatureExtractor, PoseFeatures
from .geometry.transforms import matrix_to_quaternion, transform_from_xyz_quat
from .params import ConfigError, check_fields, param
from .relative_pose import METHODS, STATUS_NONE, PoseConfig, RelativePose, estimate_from_features

log = logging.getLogger(__name__)

#: Pose features saved beside the keyframe database (a cache: the map loads without it).
#: Key of the map attachment holding the stored pose features (``pose_features-<gen>.npz``).
POSE_FEATURES = "pose_features"
#: Candidate timings kept for the mean reported in diagnostics.
_TIMING_WINDOW = 200
_MIB = 1 << 20


@dataclass
class PoseSettings:
    """Relative pose of loop candidates (flat parameter names, node and replay alike)."""

    pose_estimation: str = param(
        "auto", "Relative pose of loop candidates: auto (metric PnP when depth is available, essential matrix "
        "when only camera_info is, none without camera_info), pnp (metric only), essential (ignore depth) or none",
        choices=METHODS)
    sync_tolerance: float = param(0.01, "Largest stamp difference (s) between an image and its camera_info or depth "
                                  "image (0 = exact)", range=(0.0, 1.0))
    sync_max_wait: float = param(0.3, "Longest wall-clock wait (s) of a frame for its camera_info/depth; after it the "
                                 "frame goes on without them (the node only)", range=(0.0, 5.0))
    camera_to_base: str = param("", "Camera optical frame in the base frame, 'x y z qx qy qz qw' (base <- camera). "
                                "Set: candidate poses are between the keyframes' base frames. Empty: camera optical "
                                "frames")
    base_frame: str = param("base_link", "frame_id of loop candidate messages when camera_to_base is set")
    pose_features_max_side: int = param(640, "Longer side [px] of the image pose features are detected on (larger "
                                        "images are downscaled; feature type, count and ratio test are detector.verify_*)",
                                        range=(64, 4096))
    pose_features_max_count: int = param(10000, "Keyframes whose pose features are kept at most (oldest evicted "
                                         "first)", range=(1, 1 << 31))
    pose_features_max_mb: float = param(256.0, "Memory for keyframe pose features at most [MiB] (ORB, 1000 "
                                        "features: ~40 kB per keyframe)", range=(0.1, 1e6))

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        """Cross-field rules; raises :class:`ConfigError` naming the parameter."""
        self.camera_to_base_matrix()
        if self.camera_to_base.strip() and not self.base_frame:
            raise ConfigError("parameter 'base_frame': empty, but camera_to_base is set")

    def camera_to_base_matrix(self) -> np.ndarray | None:
        """``camera_to_base`` as a 4x4 transform (base <- camera optical), None when empty."""
        text = self.camera_to_base.replace(",", " ").split()
        if not text:
            return None
        try:
            values = [float(v) for v in text]
            q = np.asarray(values[3:], np.float64)
            if len(values) == 7 and abs(float(np.linalg.norm(q)) - 1.0) > 1e-3:
                raise ValueError(f"quaternion ({', '.join(text[3:])}) is not of unit length")
            return transform_from_xyz_quat(values)
        except ValueError as exc:
            raise ConfigError(f"parameter 'camera_to_base': {exc} (expected 'x y z qx qy qz qw', "
                              f"got {self.camera_to_base!r})") from None


def pose_columns(pose: RelativePose | None) -> dict[str, Any]:
    """The candidate table's pose columns (:data:`salad_ros.io.table.CANDIDATE_COLUMNS`) of a
    candidate. Status 0 (or no pose) is the identity with infinite stds: a back end that ignores
    ``pose_status`` then adds an edge that constrains nothing, never a made-up motion."""
    if pose is None or pose.status == STATUS_NONE:
        return {"pose_status": 0, "tx": 0.0, "ty": 0.0, "tz": 0.0, "qx": 0.0, "qy": 0.0, "qz": 0.0, "qw": 1.0,
                "rotation_std_rad": math.inf, "translation_std_m": math.inf}
    qx, qy, qz, qw = (float(v) for v in pose.quaternion_xyzw())
    tx, ty, tz = (float(v) for v in pose.translation)
    return {"pose_status": int(pose.status), "tx": tx, "ty": ty, "tz": tz, "qx": qx, "qy": qy, "qz": qz, "qw": qw,
            "rotation_std_rad": _finite_or_inf(pose.rotation_std_rad),
            "translation_std_m": _finite_or_inf(pose.translation_std_m)}


def _finite_or_inf(v: float) -> float:
    return float(v) if math.isfinite(v) else math.inf


class FramePoses:
    """One frame's pose inputs (camera and depth, already checked) and, computed on first use,
    its pose features: the pipeline makes one per frame with :meth:`LoopPoseEstimator.frame`."""

    def __init__(self, owner: LoopPoseEstimator, image: np.ndarray, camera: CameraModel | None,
                 depth: np.ndarray | None) -> None:
        self._owner = owner
        self._image = image
        self.camera = camera
        self.depth = depth
        self._features: PoseFeatures | None = None

    @property
    def active(self) -> bool:
        """True when this frame can get relative poses (a camera model and estimation on)."""
        return self.camera is not None and self._owner.enabled

    def features(self) -> PoseFeatures | None:
        """The frame's pose features (extracted once), None when it has no usable camera."""
        if self._features is None and self.active:
            t0 = time.perf_counter()
            try:
                self._features = self._owner.extractor.extract(self._image, self.camera, self.depth)
            except PoseInputError as exc:  # checked before; a last line of defence
                self._owner.count(exc.kind)
                self.camera = None
                return None
            self._owner.feature_times.append(time.perf_counter() - t0)
        return self._features

    def estimate(self, candidate: Any) -> RelativePose | None:
        """Relative pose of a loop candidate (``match_id``) against the stored features of its
        match keyframe; None when this frame has no camera or the match has no stored features
        (the detector then verifies as without intrinsics)."""
        t0 = time.perf_counter()
        query = self.features()
        match = self._owner.store.get(int(candidate.match_id))
        if query is None:
            return None
        if match is None:
            self._owner.count("no_match_features")
            return None
        pose = self._owner.solve(query, match, match_robot_id=getattr(candidate, "match_robot_id", None))
        self._owner.candidate_times.append(time.perf_counter() - t0)
        self._owner.status_counts[pose.status] += 1
        return pose

    def store(self, keyframe_id: int) -> None:
        """Keep this keyframe's features for later candidates (no-op without a camera)."""
        feats = self.features()
        if feats is not None:
            self._owner.store.put(int(keyframe_id), feats)


class LoopPoseEstimator:
    """Pose features of keyframes and relative poses of loop candidates (module docstring).

    ``detector`` (a :class:`~salad_ros.detector.DetectorConfig`) gives the local features: the
    verification's feature type, count and ratio test; they are detected on the image scaled to
    ``pose_features_max_side`` (640 px by default: twice the verification thumbnails, which
    on the demo bag's loops raised metric success from 48 % to 89 %). The solver's pixel
    thresholds (:class:`~salad_ros.relative_pose.PoseConfig`) are in pixels of that image.
    Not thread-safe.
    """

    def __init__(self, settings: PoseSettings, detector: Any, config: PoseConfig | None = None) -> None:
        self.settings = settings
        self.method = settings.pose_estimation
        self.camera_to_base = settings.camera_to_base_matrix()
        #: Camera mounts of peer robots (robot id -> base <- camera), as their keyframes said; a robot
        #: without an entry is taken to be mounted like this one.
        self.peer_mounts: dict[int, np.ndarray] = {}
        self.config = config or PoseConfig()
        self.extractor = PoseFeatureExtractor(detector.verify_feature, detector.verify_max_features,
                                              settings.pose_features_max_side, detector.verify_ratio)
        self.store = PoseFeatureStore(settings.pose_features_max_count, int(settings.pose_features_max_mb * _MIB))
        #: bad input per kind (:data:`salad_ros.geometry.camera.INPUT_ERROR_KINDS`, ``empty_depth``)
        #: and candidates whose match keyframe has no stored features (``no_match_features``)
        self.counts: collections.Counter[str] = collections.Counter()
        self.status_counts: collections.Counter[int] = collections.Counter()
        self.candidate_times: collections.deque[float] = collections.deque(maxlen=_TIMING_WINDOW)
        self.feature_times: collections.deque[float] = collections.deque(maxlen=_TIMING_WINDOW)

    @property
    def enabled(self) -> bool:
        """False when ``pose_estimation`` is ``none``."""
        return self.method != "none"

    def count(self, kind: str) -> None:
        self.counts[kind] += 1

    # -- per frame

    def frame(self, image: np.ndarray, camera: CameraModel | None, depth: np.ndarray | None) -> FramePoses:
        """Check one frame's camera model and depth (metres, NaN/0 = invalid) against its image;
        what fails is counted and dropped (a bad camera drops the depth too)."""
        if camera is None or not self.enabled:
            return FramePoses(self, image, None, None)
        shape = np.asarray(image).shape
        try:
            camera.validate()
            camera.check_image(shape)
        except PoseInputError as exc:
            self.count(exc.kind)
            return FramePoses(self, image, None, None)
        return FramePoses(self, image, camera, self._checked_depth(depth, shape[:2]))

    def _checked_depth(self, depth: np.ndarray | None, size: tuple[int, ...]) -> np.ndarray | None:
        if depth is None:
            return None
        d = np.asarray(depth)
        if d.ndim == 3 and d.shape[2] == 1:
            d = d[:, :, 0]
        if d.dtype.kind != "f":
            self.count("depth_encoding")
            return None
        if d.shape != tuple(size):
            self.count("depth_size_mismatch")
            return None
        if not np.any(np.isfinite(d) & (d > 0)):
            self.count("empty_depth")
            return None
        return d

    # -- solving

    def set_peer_mount(self, robot_id: int, camera_to_base: Sequence[float] | None) -> None:
        """Robot ``robot_id``'s camera mount (``x y z qx qy qz qw``; None: not known, ours assumed)."""
        if camera_to_base is None:
            self.peer_mounts.pop(int(robot_id), None)
        else:
            self.peer_mounts[int(robot_id)] = transform_from_xyz_quat(list(camera_to_base))

    def own_mount(self) -> tuple[float, ...] | None:
        """This robot's ``camera_to_base`` as ``x y z qx qy qz qw`` (what peers are told), None when unset."""
        if self.camera_to_base is None:
            return None
        return (*(float(v) for v in self.camera_to_base[:3, 3]),
                *(float(v) for v in matrix_to_quaternion(self.camera_to_base[:3, :3])))

    def solve(self, query: PoseFeatures, match: PoseFeatures, method: str | None = None, *,
              query_robot_id: int | None = None, match_robot_id: int | None = None) -> RelativePose:
        """Relative pose from two feature records with ``method`` (default: the configured one),
        in base frames when ``camera_to_base`` is set: each keyframe's own, its robot's mount
        from :attr:`peer_mounts` for another robot's keyframe (robot ids None: this robot's).

        With ``pnp`` and no depth at the matches, the pose is status 0 but its inliers are an
        essential-matrix fit's, so verification still has an answer.
        """
        method = method or self.method
        pose = estimate_from_features(query, match, method=method, config=self.config, extractor=self.extractor)
        if method == "pnp" and pose.inliers == 0 and pose.matches >= self.config.min_inliers:
            mono = estimate_from_features(query, match, method="essential", config=self.config,
                                          extractor=self.extractor)
            pose = RelativePose(STATUS_NONE, inliers=mono.inliers, matches=mono.matches, method="pnp",
                                reason=f"{pose.reason}; essential-matrix check: {mono.reason}")
        if self.camera_to_base is not None and pose.status != STATUS_NONE:
            pose = pose.in_base_frame(self._mount(query_robot_id), self._mount(match_robot_id))
        return pose

    def _mount(self, robot_id: int | None) -> np.ndarray:
        """The camera mount of robot ``robot_id``'s keyframes (this robot's when unknown)."""
        assert self.camera_to_base is not None
        return self.camera_to_base if robot_id is None else self.peer_mounts.get(int(robot_id), self.camera_to_base)

    def between(self, query_id: int, match_id: int, method: str | None = None, *, query_robot_id: int | None = None,
                match_robot_id: int | None = None) -> RelativePose | None:
        """Relative pose of two stored keyframes (evaluation) made by the given robots (None:
        this one); None when either has no features."""
        q, m = self.store.get(int(query_id)), self.store.get(int(match_id))
        if q is None or m is None:
            return None
        return self.solve(q, m, method, query_robot_id=query_robot_id, match_robot_id=match_robot_id)

    # -- statistics

    def stats(self) -> dict[str, Any]:
        """Counters and mean timings for diagnostics and reports."""
        def mean_ms(values: collections.deque[float]) -> float:
            return 1e3 * float(np.mean(values)) if values else math.nan

        return {
            "estimates": sum(self.status_counts.values()),
            "status": {s: self.status_counts.get(s, 0) for s in (0, 1, 2)},
            "input": dict(self.counts),
            "ms_per_candidate": mean_ms(self.candidate_times),
            "feature_ms_per_keyframe": mean_ms(self.feature_times),
            "stored_keyframes": len(self.store),
            "stored_bytes": self.store.nbytes(),
        }

    # -- the map

    def clear(self) -> None:
        """Forget every stored keyframe and the peers' mounts (a reset of the map)."""
        self.store.clear()
        self.peer_mounts.clear()

    @property
    def stored(self) -> int:
        """Keyframes whose pose features are held."""
        return len(self.store)

    def to_bytes(self, stamps_by_id: dict[int, int]) -> bytes:
        """The stored features as the map's ``pose_features`` attachment (committed with it)."""
        return self.store.to_bytes(stamps_by_id)

    def max_file_bytes(self, entries: int) -> int:
        """Largest attachment this estimator's store writes for a map of ``entries`` keyframes."""
        return self.store.max_file_bytes(entries)

    def load(self, source: str | Path | bytes, stamps_by_id: dict[int, int], name: str | None = None) -> int:
        """Load the features saved with a map (the attachment's bytes, or a file); records of
        keyframes the map doesn't have (by id and stamp) are skipped. Features of another type
        are a warning and ignored; a damaged file raises ValueError (the caller warns: the map
        still loads, its keyframes then have no poses). Returns how many loaded."""
        name = name or str(source)[:80]
        loaded = PoseFeatureStore(self.store.max_count, self.store.max_bytes)
        n = loaded.load(source, stamps_by_id, name=name)
        kinds = {rec.kind for rec in (loaded.get(k) for k in stamps_by_id) if rec is not None}
        if kinds and kinds != {self.extractor.kind}:
            log.warning("%s holds %s features but detector.verify_feature is %s: ignored", name,
                        ", ".join(sorted(kinds)), self.extractor.kind)
            return 0
        self.store = loaded
        return n
