"""The replay loop: decoded frames through a :class:`~salad_ros.pipeline.LoopClosurePipeline`
in batches, one :class:`FrameRecord` per frame (detector result, ground truth, timings)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SaladConfig
from ..io.trajectory import Trajectory
from .frames import Frame, ReadStats, prefetch


@dataclass
class ReplaySettings:
    """How a replay runs, resolved from the command line and the parameters file."""

    cfg: SaladConfig
    params: Path | None  #: the parameters file used (None: built-in defaults)
    detector_poses: bool  #: ground-truth poses are given to the detector as the node's odometry
    tolerance_s: float  #: largest image/pose stamp difference


@dataclass
class FrameRecord:
    stamp_ns: int
    gt_pose: Any  #: Pose or None
    result: Any  #: detector FrameResult
    encode_ms: float  #: the batch's forward pass divided by its frames
    detect_ms: float
    decode_ms: float
    #: Kept for keyframes only (the similarity plot), to bound memory on long bags.
    descriptor: np.ndarray | None = None


@dataclass
class ReplayRun:
    """What a replay produced before scoring: one record per frame, what was read, timings."""

    records: list[FrameRecord]
    stats: ReadStats
    image_messages: int  #: messages on the image topic (from the bag's index)
    ground_truth: str | None = None  #: where the ground truth came from (None: none given)
    missing_pose: list[int] = field(default_factory=list)  #: stamps of frames without a ground-truth pose
    undecodable_messages: int = 0  #: messages the bag reader could not deserialise
    first_undecodable: str | None = None
    wall_s: float = 0.0
    model_load_s: float = 0.0
    model: str = ""  #: the pipeline's one-line model description
    model_name: str = ""  #: descriptor identity
    random_weights: bool = False
    #: The pipeline after the run (its stored pose features serve the relative-pose evaluation).
    pipeline: Any = None
    #: Bad or missing camera_info / depth per kind (empty without those topics).
    pose_inputs: dict[str, int] = field(default_factory=dict)
    bag_damage: str | None = None  #: damaged mcap chunks skipped (see BagReader.damaged)
    bag_integrity: str = ""  #: what the reader could verify (e.g. chunk checksums)


class PoseLookup:
    """Ground truth for a batch of frame stamps: ``(poses scored, poses given to the detector)``.
    Stamps without a pose within the tolerance are collected in :attr:`missing`."""

    def __init__(self, gt: Trajectory | None, tolerance_s: float, detector_poses: bool) -> None:
        self.gt = gt
        self.tolerance_ns = int(round(tolerance_s * 1e9))
        self.detector_poses = detector_poses
        self.missing: list[int] = []

    def __call__(self, stamps: list[int]) -> tuple[list[Any], list[Any]]:
        if self.gt is None:
            return [None] * len(stamps), [None] * len(stamps)
        found = self.gt.lookup(stamps, self.tolerance_ns)
        self.missing.extend(s for s, p in zip(stamps, found, strict=True) if p is None)
        return found, (found if self.detector_poses else [None] * len(stamps))


def run_pipeline(pipeline: Any, frames: Iterator[Frame], poses_for: Any, batch_size: int,
                 progress: Any = None) -> list[FrameRecord]:
    """Feed frames in batches; ``poses_for(stamps) -> (gt poses, poses given to the detector)``."""
    records: list[FrameRecord] = []
    batch: list[Frame] = []

    def flush() -> None:
        stamps = [f.stamp_ns for f in batch]
        gt, det = poses_for(stamps)
        out = pipeline.process_batch([f.rgb for f in batch], stamps, det, [f.frame_id for f in batch],
                                     cameras=[f.camera for f in batch], depths=[f.depth for f in batch])
        encode_ms = 1e3 * out.encode_s / len(batch)
        for f, g, r, d, detect_s in zip(batch, gt, out.frames, out.descriptors, out.detect_s, strict=True):
            records.append(FrameRecord(f.stamp_ns, g, r, encode_ms, 1e3 * detect_s, 1e3 * f.decode_s,
                                       d.copy() if r.is_keyframe else None))
        if progress is not None:
            progress.update(len(batch))
        batch.clear()

    for frame in frames:
        batch.append(frame)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return records


def replay_frames(pipeline: Any, frames: Iterator[Frame], poses_for: Any, batch_size: int, expected: int,
                  show_progress: bool) -> tuple[list[FrameRecord], float]:
    """:func:`run_pipeline` with frames decoded ahead in a thread and an optional progress bar;
    returns the records and the wall-clock seconds."""
    progress = None
    if show_progress:
        from tqdm import tqdm

        progress = tqdm(total=expected, unit="frame", desc="replay", file=sys.stderr, dynamic_ncols=True,
                        mininterval=0.5 if sys.stderr.isatty() else 5.0)
    t0 = time.perf_counter()
    try:
        records = run_pipeline(pipeline, prefetch(frames, depth=2 * batch_size), poses_for, batch_size, progress)
    finally:
        if progress is not None:
            progress.close()
    return records, time.perf_counter() - t0
