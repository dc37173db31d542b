"""Loop-closure detection over a stream of SALAD descriptors.

Per frame, :meth:`LoopDetector.process` runs, in this order:

1. **Keyframe decision.** The first frame is a keyframe. Later frames must pass every rule:
   at least ``keyframe_min_interval_s`` after the last keyframe; when both have poses, moved at
   least ``keyframe_min_distance_m`` *or* turned at least ``keyframe_min_rotation_deg`` (a
   rule whose threshold is 0 is off; both 0 turn the motion test off); and *novel*: cosine
   similarity to the last keyframe's descriptor below ``keyframe_max_similarity``.
2. **Search** (keyframes only), before inserting the frame: top ``top_k`` keyframes, skipping
   the ``exclude_recent_keyframes`` newest, those within ``exclude_recent_s`` of this frame
   and, with poses, those within ``exclude_radius_m`` of it ("I was just here" is no loop;
   the rule is :mod:`salad_ros.exclusions`, which the evaluation's ground truth shares).
   These raw results are returned as ``FrameResult.matches`` for offline evaluation.
3. **Threshold**: a match needs cosine similarity >= ``min_score``.
4. **Temporal consistency** (``consistency_count`` = c; c = 1 turns it off): a match is kept
   only when it continues a chain of c consecutive query keyframes whose matches lie within
   ``consistency_id_window`` keyframe ids of each other, in the spirit of the temporal checks
   of ORB-SLAM and Kimera. One lucky (aliased) match does not make a loop. With peers' keyframes
   in the database (multi-robot) chains are kept per robot, over that robot's own keyframe
   numbers (:class:`salad_ros.fleet.policy.PeerChains`).
5. **Geometric verification** (``verify``): ratio-tested local features + fundamental-matrix
   RANSAC between the frame's and the match's thumbnails, see :mod:`salad_ros.verification`.
   With a ``geometry`` callback that gives the candidate a relative pose (the pipeline's, when
   the camera intrinsics are known), the pose solver's inliers are the verification instead
   (:meth:`LoopDetector._verify_by_pose`): an essential matrix or a PnP model is a stronger
   test than a fundamental matrix.
6. **Insert** the keyframe (and its thumbnail when verifying).

Default values are chosen for DINOv2-SALAD (unit-norm, 8448-D) descriptors, where revisits of
a place typically score >= 0.5-0.6 and unrelated places <= 0.3: ``min_score`` = 0.5 sits
between the two, slightly towards precision. The detector is deterministic. No rclpy here.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from salad_ros import params as cfgmod
from salad_ros.database import KeyframeDatabase
from salad_ros.descriptors import l2_normalize
from salad_ros.exclusions import SearchExclusions
from salad_ros.fleet.policy import PeerChains
from salad_ros.geometry import Pose, rotation_angle, translation_distance
from salad_ros.params import ConfigError, param
from salad_ros.verification import FEATURES, Features, GeometricVerifier, ThumbnailStore, make_thumbnail, sift_available

_PREFIX = "detector."
# Features of recently matched thumbnails are reused: consecutive queries of a revisit hit the
# same neighbourhood of old keyframes.
_FEATURE_CACHE = 64


@dataclass
class DetectorConfig:
    """Keyframe selection, loop search, consistency and verification (ROS ``detector.*``)."""

    keyframe_min_interval_s: float = param(0.5, "Minimum time between keyframes [s]", range=(0.0, 3600.0))
    keyframe_min_distance_m: float = param(0.5, "With poses: translation since the last keyframe needed "
                                           "for a new one [m] (or enough rotation; 0 = rule off)", range=(0.0, 1e4))
    keyframe_min_rotation_deg: float = param(15.0, "With poses: rotation since the last keyframe needed for "
                                             "a new one [deg] (or enough translation; 0 = rule off)", range=(0.0, 180.0))
    keyframe_max_similarity: float = param(0.9, "Novelty: a frame at least this cosine-similar to the last "
                                           "keyframe is not a keyframe (1.0 = rule off)", range=(-1.0, 1.0))
    min_score: float = param(0.5, "Cosine similarity a database match needs to become a loop candidate",
                             range=(-1.0, 1.0))
    top_k: int = param(5, "Database matches examined per query keyframe", range=(1, 1000))
    exclude_recent_keyframes: int = param(20, "Never match the most recent N keyframes", range=(0, 1 << 31))
    exclude_recent_s: float = param(30.0, "Never match keyframes stamped within this many seconds of the "
                                    "query [s]", range=(0.0, 1e7))
    exclude_radius_m: float = param(0.0, "With poses: never match keyframes within this distance of the "
                                    "query's pose [m] (0 = off)", range=(0.0, 1e6))
    consistency_count: int = param(3, "Consecutive query keyframes that must agree on a match region "
                                   "before it is reported (1 = no consistency check)", range=(1, 100))
    consistency_id_window: int = param(5, "Keyframe-id distance within which consecutive matches count as "
                                       "the same region", range=(0, 1 << 31))
    verify: bool = param(False, "Geometric verification of candidates (needs images in process())")
    verify_feature: str = param("orb", "Local features for verification", choices=FEATURES)
    verify_max_features: int = param(1000, "Keypoints detected per thumbnail", range=(50, 100000))
    verify_ratio: float = param(0.8, "Lowe ratio-test threshold", range=(0.1, 1.0))
    verify_ransac_px: float = param(2.0, "RANSAC epipolar distance threshold [thumbnail pixels]",
                                    range=(0.1, 100.0))
    verify_min_inliers: int = param(20, "Fundamental-matrix inliers a verified pair needs", range=(8, 100000))
    verify_min_inlier_ratio: float = param(0.25, "Inliers / ratio-test matches a verified pair needs",
                                           range=(0.0, 1.0))
    verify_missing_thumbnail: str = param("reject", "When a thumbnail is missing (no image, evicted, loaded map): "
                                          "reject the candidate or accept it unverified", choices=("reject", "accept"))
    thumbnail_max_side: int = param(320, "Longer side of stored thumbnails [px]", range=(32, 4096))
    thumbnail_max_count: int = param(10000, "Thumbnails kept at most (oldest evicted first)", range=(1, 1 << 31))
    thumbnail_max_mb: float = param(256.0, "Memory for thumbnails at most [MiB] (JPEG, ~20 kB each)",
                                    range=(0.1, 1e6))

    def __post_init__(self) -> None:
        cfgmod.check_fields(self)

    def validate(self) -> None:
        """Cross-field rules; raises :class:`ConfigError` naming the parameter."""
        if self.verify and self.verify_feature == "sift" and not sift_available():
            raise ConfigError(f"parameter '{_PREFIX}verify_feature': 'sift' but this OpenCV build has no SIFT; use 'orb'")
        if self.consistency_count > 1 and self.consistency_id_window < 1:
            raise ConfigError(f"parameter '{_PREFIX}consistency_id_window': must be >= 1 when "
                              f"{_PREFIX}consistency_count > 1, got {self.consistency_id_window}")


@dataclass(frozen=True)
class Match:
    """A raw search result of a query keyframe (before threshold/consistency/verification)."""

    id: int
    stamp_ns: int
    score: float
    rank: int  #: 0 = best
    robot_id: int = 0  #: robot that made the matched keyframe
    robot_keyframe_id: int = -1  #: its number in that robot's own sequence


@dataclass
class LoopCandidate:
    """A loop between the query keyframe and an older keyframe."""

    query_id: int
    query_stamp_ns: int
    match_id: int
    match_stamp_ns: int
    score: float
    rank: int  #: rank of the match among the query's top-k (0 = best)
    inliers: int = 0  #: verification inliers (0 when not verified)
    inlier_ratio: float = 0.0
    verified: bool | None = None  #: None = not verified (verification off or accepted without thumbnail)
    streak: int = 1  #: consecutive consistent query keyframes, this one included
    reason: str = ""  #: why it was rejected ("" when accepted)
    #: :class:`salad_ros.relative_pose.RelativePose` of the query in the match's frame (None: not estimated)
    relative_pose: Any = None
    match_robot_id: int = 0  #: robot that made the matched keyframe (the database owner for own loops)
    match_keyframe_id: int = -1  #: the matched keyframe's number in that robot's own sequence


@dataclass
class FrameResult:
    """What :meth:`LoopDetector.process` decided for one frame."""

    stamp_ns: int
    is_keyframe: bool
    keyframe_id: int | None
    reason: str  #: why the frame was or was not a keyframe
    candidates: list[LoopCandidate] = field(default_factory=list)  #: accepted loops, best first
    matches: list[Match] = field(default_factory=list)  #: raw top-k of a keyframe query
    rejected: list[LoopCandidate] = field(default_factory=list)  #: above threshold but rejected
    #: The keyframe rule that cut a non-keyframe: one of :data:`KEYFRAME_RULES` ("" for keyframes).
    rule: str = ""
    #: A keyframe's number in its robot's own sequence (= ``keyframe_id`` while the map holds no
    #: peers' keyframes); None for other frames.
    robot_keyframe_id: int | None = None


#: Why a frame is not a keyframe, by the ``detector.*`` parameter of the rule that cut it.
KEYFRAME_RULES = ("keyframe_min_interval_s", "keyframe_min_distance_m/keyframe_min_rotation_deg",
                  "keyframe_max_similarity", "time_jump")


@dataclass
class _LastKeyframe:
    stamp_ns: int
    pose: Pose | None
    descriptor: np.ndarray


class LoopDetector:
    """Keyframe selection + loop search + consistency + verification over one database."""

    def __init__(self, config: DetectorConfig, database: KeyframeDatabase) -> None:
        config.validate()
        self.config = config
        self.database = database
        self._verifier: GeometricVerifier | None = None
        self._thumbs: ThumbnailStore | None = None
        if config.verify:
            self._verifier = GeometricVerifier(
                config.verify_feature, config.verify_max_features, config.verify_ratio, config.verify_ransac_px,
                config.verify_min_inliers, config.verify_min_inlier_ratio)
            self._thumbs = ThumbnailStore(config.thumbnail_max_count, int(config.thumbnail_max_mb * (1 << 20)),
                                          config.thumbnail_max_side)
        self._features: collections.OrderedDict[int, Features] = collections.OrderedDict()
        self.stats: dict[str, int] = {}
        self.reset()

    #: Settings that shape the detector's stores: fixed for the detector's lifetime.
    FIXED_SETTINGS = ("verify", "verify_feature", "verify_max_features", "thumbnail_max_side", "thumbnail_max_count",
                      "thumbnail_max_mb")

    def update_config(self, config: DetectorConfig) -> None:
        """Use new thresholds from the next frame on, keeping all state (last keyframe, chains,
        thumbnails). A change of a :data:`FIXED_SETTINGS` entry is a ValueError."""
        changed = [name for name in self.FIXED_SETTINGS if getattr(config, name) != getattr(self.config, name)]
        if changed:
            raise ValueError(f"detector.{changed[0]} can't change on a running pipeline")
        config.validate()
        self.config = config  # read at every frame
        if self._verifier is not None:  # its thresholds are plain attributes, read per pair
            v = self._verifier
            v.ratio, v.ransac_px = config.verify_ratio, config.verify_ransac_px
            v.min_inliers, v.min_inlier_ratio = config.verify_min_inliers, config.verify_min_inlier_ratio

    def reset(self) -> None:
        """Forget detector state: last keyframe, consistency chains, thumbnails, counters.
        The database is not touched (the caller clears it if wanted)."""
        self._last: _LastKeyframe | None = None
        self._chains = PeerChains(self.config.consistency_id_window)
        if self._thumbs is not None:
            self._thumbs.clear()
        self._features.clear()
        self.stats = dict.fromkeys(("frames", "keyframes", "candidates", "rejected"), 0)

    @property
    def thumbnails(self) -> ThumbnailStore | None:
        """The bounded thumbnail store (None when verification is off)."""
        return self._thumbs

    # ----- main entry point

    def process(self, descriptor: np.ndarray, stamp_ns: int, pose: Pose | None = None,
                image: np.ndarray | None = None, frame_id: str = "",
                geometry: Callable[[LoopCandidate], Any] | None = None) -> FrameResult:
        """Run one frame through keyframe selection, loop search and insertion.

        ``geometry(candidate)`` is called for every candidate that passed the consistency check
        and returns its :class:`~salad_ros.relative_pose.RelativePose`, or None when it has none
        (no intrinsics, match features missing): see step 5 of the module docstring."""
        desc = self._normalise(descriptor)
        stamp_ns = int(stamp_ns)
        cfg = self.config
        self.stats["frames"] += 1
        rule, reason = self._keyframe_decision(desc, stamp_ns, pose)
        if rule:
            return FrameResult(stamp_ns, False, None, reason, rule=rule)

        ex = SearchExclusions.from_detector(cfg)
        ids, stamps, scores = self.database.search(
            desc[None], cfg.top_k, exclude_recent=ex.recent, exclude_within_ns=ex.within_ns,
            query_stamps_ns=[stamp_ns], query_poses=[pose], exclude_radius=ex.radius_m)
        found = ids[0] >= 0
        origin = self.database.origins(ids[0][found])
        matches = [Match(int(i), int(s), float(c), r, int(o[0]), int(o[2])) for r, (i, s, c, o) in
                   enumerate(zip(ids[0][found], stamps[0][found], scores[0][found], origin, strict=True))]
        passing = [m for m in matches if m.score >= cfg.min_score]
        streaks = self._update_chains(passing)

        thumb = None
        if self._thumbs is not None and image is not None:
            thumb = make_thumbnail(image, cfg.thumbnail_max_side)
        kf_id = int(self.database.add(desc[None], [stamp_ns], frame_ids=frame_id,
                                      poses=None if pose is None else [pose])[0])
        if thumb is not None:
            self._thumbs.put(kf_id, thumb)
        self._last = _LastKeyframe(stamp_ns, pose, desc)
        self.stats["keyframes"] += 1

        accepted: list[LoopCandidate] = []
        rejected: list[LoopCandidate] = []
        query_features: Features | None = None
        for m in passing:
            cand = LoopCandidate(kf_id, stamp_ns, m.id, m.stamp_ns, m.score, m.rank,
                                 streak=streaks[(m.robot_id, m.robot_keyframe_id)], match_robot_id=m.robot_id,
                                 match_keyframe_id=m.robot_keyframe_id)
            if cand.streak < cfg.consistency_count:
                cand.reason = f"inconsistent ({cand.streak}/{cfg.consistency_count} consecutive)"
            else:
                query_features = self._check_geometry(cand, thumb, query_features, geometry)
            (rejected if cand.reason else accepted).append(cand)
        self.stats["candidates"] += len(accepted)
        self.stats["rejected"] += len(rejected)
        return FrameResult(stamp_ns, True, kf_id, reason, accepted, matches, rejected,
                           robot_keyframe_id=int(self.database.origins([kf_id])[0, 2]))

    # ----- steps

    def _normalise(self, descriptor: np.ndarray) -> np.ndarray:
        d = np.asarray(descriptor, dtype=np.float32).reshape(-1)
        if d.shape[0] != self.database.dim:
            raise ValueError(f"descriptor has {d.shape[0]} values, the database expects {self.database.dim}")
        norm = float(np.linalg.norm(d))
        if not math.isfinite(norm) or norm == 0.0:
            raise ValueError("descriptor is all-zero or not finite")
        return l2_normalize(d)

    def _keyframe_decision(self, desc: np.ndarray, stamp_ns: int, pose: Pose | None) -> tuple[str, str]:
        """``(rule, reason)``: the rule of :data:`KEYFRAME_RULES` that cuts the frame ("" when
        it is a keyframe) and why, in words."""
        cfg = self.config
        last = self._last
        if last is None:
            return "", "first keyframe"
        dt = (stamp_ns - last.stamp_ns) * 1e-9
        if dt < 0:
            return "time_jump", f"stamp is {-dt:.3f} s before the last keyframe (reset() after a time jump)"
        if dt < cfg.keyframe_min_interval_s:
            return "keyframe_min_interval_s", \
                f"too soon: {dt:.3f} s < {cfg.keyframe_min_interval_s} s since the last keyframe"
        if pose is not None and last.pose is not None and (cfg.keyframe_min_distance_m > 0 or cfg.keyframe_min_rotation_deg > 0):
            moved = translation_distance(pose, last.pose)
            turned = math.degrees(rotation_angle(pose, last.pose))
            far = cfg.keyframe_min_distance_m > 0 and moved >= cfg.keyframe_min_distance_m
            turned_enough = cfg.keyframe_min_rotation_deg > 0 and turned >= cfg.keyframe_min_rotation_deg
            if not (far or turned_enough):
                return "keyframe_min_distance_m/keyframe_min_rotation_deg", \
                    f"too little motion: {moved:.2f} m, {turned:.1f} deg since the last keyframe"
        sim = float(desc @ last.descriptor)
        if cfg.keyframe_max_similarity < 1.0 and sim >= cfg.keyframe_max_similarity:
            return "keyframe_max_similarity", \
                f"not novel: similarity {sim:.3f} >= {cfg.keyframe_max_similarity} to the last keyframe"
        return "", f"keyframe (similarity {sim:.3f} to the last one, {dt:.2f} s later)"

    def _update_chains(self, passing: list[Match]) -> dict[tuple[int, int], int]:
        """Extend the consistency chains with this query keyframe's passing matches; returns the
        streak per ``(robot_id, robot_keyframe_id)``.

        A match continues a chain when the previous query keyframe had a passing match of the same
        robot within ``consistency_id_window`` of that robot's keyframe numbers; a keyframe
        without passing matches of a robot breaks that robot's chains.
        """
        self._chains.window = self.config.consistency_id_window  # may change between frames
        return self._chains.update((m.robot_id, m.robot_keyframe_id) for m in passing)

    def _check_geometry(self, cand: LoopCandidate, thumb: np.ndarray | None, query_features: Features | None,
                        geometry: Callable[[LoopCandidate], Any] | None) -> Features | None:
        """The candidate's relative pose, then its verification: by the pose when there is one,
        else by the fundamental matrix on thumbnails. Returns the (cached) query features."""
        cand.relative_pose = geometry(cand) if geometry is not None else None
        if self._verifier is None:
            return query_features
        if cand.relative_pose is not None:
            self._verify_by_pose(cand, cand.relative_pose)
            return query_features
        return self._verify(cand, thumb, query_features)

    def _verify_by_pose(self, cand: LoopCandidate, pose: Any) -> None:
        """Verification by the pose solver's inliers (essential matrix or PnP).

        A pose the solver stands by (status >= 1, past its degeneracy and uncertainty checks)
        needs ``verify_min_inliers``; a status-0 result (a plane, a camera that only turned, a
        pose too uncertain to publish) can still show the same place: it needs
        ``verify_min_inliers`` and ``verify_min_inlier_ratio``, like the fundamental matrix.
        """
        cfg = self.config
        cand.inliers = int(pose.inliers)
        cand.inlier_ratio = float(pose.inlier_ratio)
        ok = cand.inliers >= cfg.verify_min_inliers and (
            pose.status > 0 or cand.inlier_ratio >= cfg.verify_min_inlier_ratio)
        cand.verified = ok
        if not ok:
            cand.reason = (f"geometry: {cand.inliers} pose inliers of {pose.matches} matches "
                           f"(pose status {pose.status}: {pose.reason})")

    def _verify(self, cand: LoopCandidate, thumb: np.ndarray | None, query_features: Features | None) -> Features | None:
        """Fill in the verification fields of ``cand``; returns the (cached) query features."""
        cfg = self.config
        assert self._verifier is not None and self._thumbs is not None
        match_features = self._match_features(cand.match_id)
        if thumb is None or match_features is None:
            missing = "this frame has no image" if thumb is None else f"no thumbnail for keyframe {cand.match_id}"
            if cfg.verify_missing_thumbnail == "reject":
                cand.verified = False
                cand.reason = f"unverifiable: {missing}"
            return query_features
        if query_features is None:
            query_features = self._verifier.features(thumb)
        res = self._verifier.verify(query_features, match_features)
        cand.verified = res.accepted
        cand.inliers = res.inliers
        cand.inlier_ratio = res.inlier_ratio
        if not res.accepted:
            cand.reason = f"geometry: {res.reason}"
        return query_features

    def _match_features(self, keyframe_id: int) -> Features | None:
        assert self._verifier is not None and self._thumbs is not None
        feats = self._features.get(keyframe_id)
        if feats is not None:
            self._features.move_to_end(keyframe_id)
            return feats
        thumb = self._thumbs.get(keyframe_id)
        if thumb is None:
            return None
        feats = self._verifier.features(thumb)
        self._features[keyframe_id] = feats
        if len(self._features) > _FEATURE_CACHE:
            self._features.popitem(last=False)
        return feats

