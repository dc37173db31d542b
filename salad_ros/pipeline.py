"""Images in, loop candidates out: encoder + keyframe database + detector, without ROS.

The live node and offline replay both drive a :class:`LoopClosurePipeline`, so a sequence
gives the same keyframes and candidates whichever way it is fed. Callers use the pipeline's
methods (:meth:`~LoopClosurePipeline.process`, :meth:`~LoopClosurePipeline.keyframe_count`,
:meth:`~LoopClosurePipeline.describe`, ...) rather than its encoder, database or detector.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backends import Encoder, create_encoder, is_random_model_name
from .config import SaladConfig
from .database import DatabaseError, Keyframe, KeyframeDatabase, Origin, Pose
from .database.storage import on_disk, read_attachment
from .detector import DetectorConfig, FrameResult, LoopDetector
from .fleet.wire import SharedFeatures, SharedKeyframe
from .geometry.camera import CameraModel
from .geometry.features import PoseFeatures
from .loop_pose import POSE_FEATURES, LoopPoseEstimator
from .relative_pose import RelativePose
from .verification import ThumbnailStore

log = logging.getLogger(__name__)

#: Verification thumbnails are saved with the keyframe database, as its attachment of this key
#: (``thumbnails-<generation>.npz``, committed by the same manifest switch). A cache: the map loads
#: without it.
THUMBNAILS = "thumbnails"
#: Where saves before that kept them (beside the manifest); still read when the manifest has none.
LEGACY_THUMBNAILS_FILE = "thumbnails.npz"
#: Keyframe metadata key of a peer keyframe's camera mount (``x y z qx qy qz qw``, as it was sent).
MOUNT_KEY = "camera_to_base"
#: Colour keyframe thumbnails for a live view (count-bounded; the byte bound never binds first).
COLOR_THUMBNAIL_COUNT = 1024
COLOR_THUMBNAIL_SIDE = 160


def describe_saved(path: str | Path) -> str:
    """What the folder ``path`` holds now, in words (for messages after a failed save)."""
    try:
        now = on_disk(path) if Path(path).is_dir() else None
    except OSError:
        now = None
    if now is None:
        return f"there is no saved map in {path}"
    if now.count is None:
        return f"{path} holds the same unreadable map as before"
    return f"the saved map in {path} is unchanged (generation {now.generation}, {_count(now.count, 'keyframe')})"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def database_exists(path: str | Path) -> bool:
    """True when ``path`` holds a saved keyframe database (not merely an empty folder): a
    ``manifest.json`` of any kind, so that a damaged one is refused by the load, not replaced."""
    return bool(path) and os.path.lexists(Path(path) / "manifest.json")


@dataclass
class BatchResult:
    """What :meth:`LoopClosurePipeline.process_batch` produced for a batch of frames."""

    #: The detector's result for each frame, in input order.
    frames: list[FrameResult]
    #: ``float32[B, dim]``: the encoder's descriptor of each frame, in input order.
    descriptors: np.ndarray
    #: Wall-clock seconds of the batch's one forward pass (all frames together).
    encode_s: float = 0.0
    #: Wall-clock seconds the detector (search, insertion, verification) spent on each frame.
    detect_s: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class SaveReport:
    """What :meth:`LoopClosurePipeline.save` wrote; :meth:`summary` is the one-line reply."""

    path: Path  #: the database folder
    generation: int  #: the generation now on disk
    keyframes: int  #: keyframes in the saved map
    #: Verification thumbnails saved with it; None when none were saved (see ``thumbnails_note``).
    thumbnails: int | None
    thumbnails_note: str = ""  #: why no thumbnails were saved ("" when they were)
    #: Where the replaced map was kept, when it held keyframes the new one lacks (e.g. after a
    #: reset); None when nothing was lost.
    backup: Path | None = None
    replaced_keyframes: int | None = None  #: keyframes of the replaced map (None: no map, or unreadable)
    warnings: tuple[str, ...] = ()  #: problems after the commit (the new map is in place)

    def summary(self) -> str:
        """One line: what was saved where, with or without thumbnails, and where the replaced
        map was kept."""
        text = f"saved {_count(self.keyframes, 'keyframe')} to {self.path} (generation {self.generation})"
        text += f" with {_count(self.thumbnails, 'verification thumbnail')}" if self.thumbnails is not None else \
            f" without verification thumbnails ({self.thumbnails_note})"
        if self.backup is not None:
            old = "an unreadable map" if self.replaced_keyframes is None else \
                f"{_count(self.replaced_keyframes, 'keyframe')}, not all in the new map"
            text += f"; the replaced map ({old}) is kept in {self.backup} (load it with database_path:={self.backup})"
        if self.warnings:
            text += "; warning: " + "; ".join(self.warnings)
        return text


class LoopClosurePipeline:
    """Runs the configured encoder and loop detector frame by frame.

    With ``cfg.node.database_path`` pointing at a saved database, that map is loaded first
    (multi-session operation); a database made by another model or damaged is refused.
    ``encoder`` replaces the one ``cfg.model`` describes (tests, a model shared between
    pipelines). With ``color_thumbnails`` the pipeline also keeps small colour thumbnails of
    recent keyframes for a live view (:meth:`thumbnail` with ``color=True``); it owns every
    thumbnail, so a reset forgets them all. Not thread-safe: callers serialise access (the node
    holds a lock), except for :meth:`add_peer_keyframe` and :meth:`shared_keyframe`, which may
    run beside :meth:`process` (they wait for at most one frame's detection, not its encoding).
    """

    def __init__(self, cfg: SaladConfig, encoder: Encoder | None = None, *, color_thumbnails: bool = False) -> None:
        self.cfg = cfg
        self.encoder = encoder or create_encoder(cfg.model)
        self._color_thumbs = ThumbnailStore(
            COLOR_THUMBNAIL_COUNT, COLOR_THUMBNAIL_COUNT * 3 * COLOR_THUMBNAIL_SIDE**2, COLOR_THUMBNAIL_SIDE,
            quality=85, color=True,
        ) if color_thumbnails else None
        # relative poses of loop candidates (pose features of keyframes, committed with the map)
        self._poses = LoopPoseEstimator(cfg.pose, cfg.detector)
        # the map (database, detector, stores); held for detection, peers' keyframes, save and reset
        self._map_lock = threading.RLock()
        path = cfg.node.database_path
        if database_exists(path):
            self.database = KeyframeDatabase.load(
                path, expected_dim=self.encoder.dim, expected_model=self.encoder.model_name, config=cfg.database,
                robot_id=cfg.robot.robot_id,
            )
            log.info("loaded keyframe database %s with %d keyframes", path, len(self.database))
            self.detector = LoopDetector(cfg.detector, self.database)
            self._load_attachments(Path(path))
            self._load_peer_mounts()
        else:
            self.reset()

    def _load_peer_mounts(self) -> None:
        """The peers' camera mounts from their keyframes in the loaded map (each robot's latest)."""
        origins = self.database.origins()
        for kf_id in np.flatnonzero(origins[:, 0] != self.database.robot_id):
            meta = self.database.get(int(kf_id)).metadata or {}
            mount = meta.get(MOUNT_KEY)
            try:
                self._poses.set_peer_mount(int(origins[kf_id, 0]), mount)
            except (TypeError, ValueError) as exc:  # a hand-edited map: that robot counts as mounted like us
                log.warning("keyframe %d of robot %d: bad %s %r (%s): ignored", kf_id, origins[kf_id, 0], MOUNT_KEY,
                            mount, exc)

    def _stamps_by_id(self) -> dict[int, int]:
        return dict(enumerate(int(s) for s in self.database.stamps_ns()))

    def _load_attachments(self, path: Path) -> None:
        """The verification thumbnails and pose features committed with the loaded map. Both are
        caches: a missing or damaged one is a warning and the map loads without it."""
        stamps = self._stamps_by_id()
        store = self.detector.thumbnails
        if store is not None:
            # Without them, geometric verification against the loaded map has nothing to compare with.
            legacy = path / LEGACY_THUMBNAILS_FILE  # saved before they were committed with the map
            self._load_attachment(path, THUMBNAILS, store.max_file_bytes(len(stamps)),
                                  lambda data, name: store.load(data, stamps, name=name),
                                  "verification thumbnails", "verification against it follows "
                                  "detector.verify_missing_thumbnail", legacy if os.path.lexists(legacy) else None)
        self._load_attachment(path, POSE_FEATURES, self._poses.max_file_bytes(len(stamps)),
                              lambda data, name: self._poses.load(data, stamps, name=name),
                              "pose features", "loop candidates against it get no relative pose")

    @staticmethod
    def _load_attachment(path: Path, key: str, max_bytes: int, load: Callable[[bytes | Path, str], int], what: str,
                         without: str, fallback: Path | None = None) -> None:
        try:
            found = read_attachment(path, key, max_bytes)
            if found is not None:
                n = load(found[1], str(found[0]))
            elif fallback is not None:
                n = load(fallback, str(fallback))
            else:
                return
            log.info("loaded %s of %d keyframes of the map in %s", what, n, path)
        except (OSError, ValueError) as exc:  # DatabaseError too
            log.warning("%s not loaded: %s; the map is loaded without them, so %s", what, exc, without)

    # -- frames

    def process(
        self, image: np.ndarray, stamp_ns: int, pose: Pose | None = None, frame_id: str = "", *,
        camera: CameraModel | None = None, depth: np.ndarray | None = None,
    ) -> FrameResult:
        """Encode one RGB uint8 image and run the detector on it. With ``camera`` (the image's
        intrinsics) and optionally ``depth`` (float metres aligned to the image, NaN/0 = none),
        loop candidates get a relative pose (``LoopCandidate.relative_pose``)."""
        return self.process_batch([image], [stamp_ns], [pose], [frame_id], cameras=[camera], depths=[depth]).frames[0]

    def process_batch(
        self,
        images: Sequence[np.ndarray],
        stamps_ns: Sequence[int],
        poses: Sequence[Pose | None] | None = None,
        frame_ids: Sequence[str] | None = None,
        *,
        cameras: Sequence[CameraModel | None] | None = None,
        depths: Sequence[np.ndarray | None] | None = None,
    ) -> BatchResult:
        """Encode a batch in one forward pass, then run the detector frame by frame in order.

        Gives exactly the results that calling :meth:`process` on each frame gives (the detector
        is sequential and deterministic; batching only changes how descriptors are computed),
        plus the descriptors and the time spent encoding and detecting.
        """
        t0 = time.perf_counter()
        descriptors = np.asarray(self.encoder.encode(list(images)), dtype=np.float32)
        encode_s = time.perf_counter() - t0
        poses = poses if poses is not None else [None] * len(images)
        frame_ids = frame_ids if frame_ids is not None else [""] * len(images)
        cameras = cameras if cameras is not None else [None] * len(images)
        depths = depths if depths is not None else [None] * len(images)
        frames: list[FrameResult] = []
        detect_s: list[float] = []
        for d, s, p, img, f, cam, dep in zip(descriptors, stamps_ns, poses, images, frame_ids, cameras, depths,
                                             strict=True):
            t0 = time.perf_counter()
            with self._map_lock:
                geo = self._poses.frame(img, cam, dep)
                result = self.detector.process(d, int(s), pose=p, image=img, frame_id=f,
                                               geometry=geo.estimate if geo.active else None)
                if result.is_keyframe and result.keyframe_id is not None:
                    geo.store(result.keyframe_id)
                    if self._color_thumbs is not None:
                        self._color_thumbs.put(result.keyframe_id, img)
            detect_s.append(time.perf_counter() - t0)
            frames.append(result)
        return BatchResult(frames, descriptors, encode_s, detect_s)

    # -- the model

    @property
    def model_name(self) -> str:
        """Descriptor identity: architecture, input size and weights fingerprint."""
        return self.encoder.model_name

    @property
    def random_weights(self) -> bool:
        """True when the descriptors come from untrained weights (no checkpoint, or an exported
        file made from random weights): see :func:`salad_ros.backends.is_random_model_name`."""
        return is_random_model_name(self.encoder.model_name)

    @property
    def backend(self) -> str:
        """Inference backend name (``torch``, ``onnxruntime``, ``tensorrt``)."""
        return self.encoder.backend

    @property
    def device(self) -> str:
        """Device the model runs on (e.g. ``cpu``, ``cuda:0``)."""
        return self.encoder.device

    def describe(self) -> str:
        """One line about the model: backend, device, descriptor identity, dimension."""
        return self.encoder.describe()

    def heatmap(self, image: np.ndarray) -> np.ndarray | None:
        """Per-patch assignment mass of an RGB image for the debug view (a second forward
        pass), or None when the backend has none."""
        heatmap = getattr(self.encoder, "heatmap", None)
        return heatmap(image) if heatmap is not None else None

    # -- the map

    @property
    def keyframe_count(self) -> int:
        """Keyframes in the map (loaded ones included)."""
        return len(self.database)

    def memory_bytes(self) -> int:
        """Memory held by the keyframe database (index and per-keyframe columns) in bytes."""
        return self.database.memory_bytes()

    def keyframe(self, keyframe_id: int) -> Keyframe:
        """The stored keyframe (stamp, frame id, pose, metadata); KeyError when there is none."""
        return self.database.get(keyframe_id)

    def thumbnail(self, keyframe_id: int, color: bool = False) -> np.ndarray | None:
        """The keyframe's verification thumbnail (grey uint8), or with ``color`` its colour
        thumbnail (RGB uint8, needs ``color_thumbnails``); None when that store is off or the
        bounded store has evicted or never had it."""
        store = self._color_thumbs if color else self.detector.thumbnails
        return store.get(keyframe_id) if store is not None else None

    def save(self, path: str | Path | None = None) -> SaveReport:
        """Save the map to ``path`` or the configured ``database_path``, with the verification
        thumbnails when verification is on: both are committed together or not at all.

        A replaced map holding keyframes this one lacks (e.g. after :meth:`reset`) is kept as
        ``<path>/previous`` first. Returns a :class:`SaveReport`. When the save fails (a full
        disk, no backup possible), raises :class:`DatabaseError` saying that nothing was saved
        and what the folder holds now."""
        target = path or self.cfg.node.database_path
        if not target:
            raise ValueError("no database path: set 'database_path' or pass a path")
        target = Path(target)
        with self._map_lock:  # peers' keyframes wait: the map and its attachments must agree
            store = self.detector.thumbnails
            stamps = self._stamps_by_id()
            attachments = {THUMBNAILS: store.to_bytes(stamps)} if store is not None else {}
            if self._poses.stored:  # committed with the map, like the thumbnails
                attachments[POSE_FEATURES] = self._poses.to_bytes(stamps)
            try:
                saved = self.database.save(target, attachments)
                thumbs = len(store) if store is not None else None
            except (OSError, RuntimeError) as exc:  # a full disk, an unwritable folder, faiss failing to write
                why = f"{exc.strerror} ({Path(exc.filename).name})" if isinstance(exc, OSError) and exc.strerror \
                    and exc.filename else str(exc) or type(exc).__name__
                raise DatabaseError(f"{why}: nothing was saved; {describe_saved(target)}") from exc
        return SaveReport(target, saved.generation, saved.count, thumbs,
                          "" if store is not None else "verification is off", saved.backup, saved.replaced_count,
                          saved.warnings)

    def update_detector_config(self, config: DetectorConfig) -> None:
        """Apply new detector thresholds from the next frame on, keeping the detector's state (last
        keyframe, consistency chains, thumbnails); a later :meth:`reset` keeps them too. What
        shapes the detector's stores (``verify``, ``verify_feature``, ``verify_max_features``,
        ``thumbnail_*``) can't change here: ValueError."""
        self.detector.update_config(config)
        self.cfg = dataclasses.replace(self.cfg, detector=config)

    def reset(self) -> None:
        """Forget every keyframe (peers' too) and the detector's history; the new map gets a new
        session. The saved map is not touched; a later :meth:`save` replaces it but keeps it in
        ``<path>/previous`` (see :class:`SaveReport`)."""
        with self._map_lock:
            self.database = KeyframeDatabase.from_config(self.encoder.dim, self.cfg.database, self.encoder.model_name,
                                                         self.cfg.robot.robot_id)
            self.detector = LoopDetector(self.cfg.detector, self.database)
            if self._color_thumbs is not None:
                self._color_thumbs.clear()
            self._poses.clear()

    # -- multi-robot (salad_ros.fleet)

    @property
    def robot_id(self) -> int:
        """This robot's fleet id (parameter ``robot_id``): the owner of the map."""
        return self.database.robot_id

    @property
    def session(self) -> int:
        """The map's lineage: random for a new map (and after :meth:`reset`), kept by save/load."""
        return self.database.session

    @property
    def own_keyframe_count(self) -> int:
        """This robot's own keyframes in the map (its next keyframe gets this number)."""
        return self.database.own_count

    @property
    def dim(self) -> int:
        """Descriptor dimension."""
        return self.encoder.dim

    def add_peer_keyframe(self, kf: SharedKeyframe) -> int:
        """Insert another robot's keyframe (with its local features, for verification and relative
        poses of loops against it); returns its id in this map. It is searchable at once.
        ValueError for our own lineage, a keyframe held already or another dimension."""
        # the peer's camera mount, kept with its keyframe: poses in base frames need it after a restart too
        meta = None if kf.camera_to_base is None else {MOUNT_KEY: list(kf.camera_to_base)}
        with self._map_lock:
            kf_id = int(self.database.add(kf.descriptor[None], [kf.stamp_ns], frame_ids=kf.frame_id, poses=[kf.pose],
                                          metadata=[meta], origin=Origin(kf.robot_id, kf.session, [kf.keyframe_id]))[0])
            self._poses.set_peer_mount(kf.robot_id, kf.camera_to_base)
            f = kf.features
            if f is not None and len(f) and f.kind == self._poses.extractor.kind:
                self._poses.store.put(kf_id, PoseFeatures(f.points, f.descriptors, f.depth, f.kind, f.focal_px))
            return kf_id

    def shared_keyframe(self, robot_keyframe_id: int) -> SharedKeyframe | None:
        """This robot's keyframe number ``robot_keyframe_id`` as peers get it (descriptor as
        stored, pose, ORB features when it has them), None when the map has no such keyframe."""
        with self._map_lock:
            kf_id = self.database.find(self.robot_id, self.session, robot_keyframe_id)
            if kf_id is None:
                return None
            rec = self.database.get(kf_id)
            feats = self._poses.store.get(kf_id)
            shared = None
            if feats is not None and feats.kind == "orb" and feats.descriptors is not None and len(feats):
                shared = SharedFeatures(feats.points, feats.descriptors, feats.depth, feats.focal_px)
            return SharedKeyframe(rec.robot_id, rec.session, rec.robot_keyframe_id, rec.stamp_ns,
                                  self.database.descriptor(kf_id), rec.frame_id, rec.pose, shared,
                                  self._poses.own_mount())

    def keyframe_origins(self) -> tuple[np.ndarray, np.ndarray]:
        """``(origins int64[N, 3], stamps int64[N])``: robot_id, session and robot keyframe id of
        every keyframe in the map, with its stamp (a restarted node's peers' keyframes)."""
        with self._map_lock:
            return self.database.origins(), self.database.stamps_ns()

    # -- relative poses of loop candidates

    @property
    def camera_to_base(self) -> np.ndarray | None:
        """The ``camera_to_base`` parameter as a 4x4 transform (base <- camera), None when unset:
        candidate poses are then between camera optical frames."""
        return self._poses.camera_to_base

    def relative_pose(self, query_id: int, match_id: int, method: str | None = None) -> RelativePose | None:
        """The relative pose of two keyframes from their stored pose features (as a candidate
        between them would get; ``method`` overrides ``pose_estimation``), None when either has
        none (no camera given, evicted from the bounded store, or no such keyframe)."""
        with self._map_lock:
            if not (0 <= int(query_id) < len(self.database) and 0 <= int(match_id) < len(self.database)):
                return None
            robots = self.database.origins([query_id, match_id])[:, 0].tolist()
            return self._poses.between(query_id, match_id, method, query_robot_id=robots[0],
                                       match_robot_id=robots[1])

    def stored_pose_features(self, keyframe_id: int) -> PoseFeatures | None:
        """The pose features stored for keyframe ``keyframe_id`` (a peer's: as received), None
        when it has none (evaluation: what its relative poses are estimated from)."""
        with self._map_lock:
            return self._poses.store.get(int(keyframe_id))

    def pose_stats(self) -> dict:
        """Relative-pose counters and timings: estimates per status, bad input per kind,
        mean ms per candidate and per keyframe's feature extraction, stored keyframes."""
        return self._poses.stats()

    def keyframe_poses(self, own_only: bool = False) -> np.ndarray:
        """Every keyframe's pose as float64[N, 7] (x y z qx qy qz qw), NaN rows without one;
        with ``own_only`` also NaN rows for the peers' keyframes (their poses are in another
        robot's map frame)."""
        with self._map_lock:  # poses and origins of the same keyframes (a peer's may arrive between)
            poses = self.database.poses()
            if own_only:
                poses[self.database.origins()[:, 0] != self.robot_id] = np.nan
            return poses
