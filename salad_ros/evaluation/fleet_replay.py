"""``salad_replay`` with several bags: one robot of a fleet per bag, replayed together.

Every robot gets its own :class:`~salad_ros.pipeline.LoopClosurePipeline` (the node's
parameters with its ``robot_id``) and :class:`~salad_ros.fleet.member.FleetMember`
(``fleet.*``); all share one loaded model. The frames of all bags are merged by stamp and each
runs through its robot's pipeline in that order. When a frame makes a keyframe, the robot's
fleet message for it is delivered at once to every other robot (as sensor_msgs/PointCloud2-like
objects, through the same validation as on the topic), before the next frame: what a live fleet
on loopback does. So each robot searches exactly the peers' keyframes stamped before its query.

Scoring is :mod:`.fleet_metrics`; the outputs are written by :mod:`.fleet_report`. No rclpy.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import heapq
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..config import SaladConfig
from ..fleet.member import FleetMember
from ..fleet.wire import FleetMessageError, WireMessage, fill_cloud
from ..io.bags import BagReader
from ..io.trajectory import Trajectory, yaw_of
from ..params import ConfigError
from ..pose_inputs import PoseInputs
from .fleet_metrics import FleetKeyframe, Ref, RobotKeyframes
from .frames import Frame, ReadStats, prefetch
from .replay_loop import FrameRecord, PoseLookup, ReplaySettings


class AheadEncoder:
    """One pipeline's view of the shared model: it hands out descriptors the model computed
    ahead for a window of frames of all robots (one forward pass), in the order they were
    queued. Everything else (name, dimension, description) is the shared model's."""

    def __init__(self, shared: Any) -> None:
        self.shared = shared
        self.pending: collections.deque[np.ndarray] = collections.deque()

    def __getattr__(self, name: str) -> Any:
        if name == "shared":  # not set yet (e.g. while copying): no endless recursion
            raise AttributeError(name)
        return getattr(self.shared, name)

    def encode(self, images: Sequence[np.ndarray], color: str = "rgb") -> np.ndarray:
        if len(self.pending) < len(images):
            raise RuntimeError("fleet replay: a frame reached its pipeline without its descriptor")
        return np.stack([self.pending.popleft() for _ in images])


@dataclass
class Shared:
    """One keyframe message a robot published: its size on the wire and features sent."""

    number: int  #: the keyframe's number in the robot's sequence
    nbytes: int
    features: int


@dataclass
class RobotRun:
    """One robot of a fleet replay: its input, pipeline, fleet member and what happened."""

    robot_id: int
    bag: str
    cfg: SaladConfig
    gt: Trajectory | None = None
    poses: PoseLookup | None = None
    stats: ReadStats = field(default_factory=ReadStats)
    inputs: PoseInputs = field(default_factory=PoseInputs)
    image_messages: int = 0
    expected: int = 0
    undecodable_messages: int = 0
    bag_damage: str | None = None
    reader: Any = None  #: the open bag (read after the replay: undecodable messages, damage)
    pipeline: Any = None
    member: FleetMember | None = None
    encoder: AheadEncoder | None = None
    records: list[FrameRecord] = field(default_factory=list)
    #: Per record: entries of :attr:`received` in the map when the frame was processed.
    peers_known: list[int] = field(default_factory=list)
    received: list[tuple[int, int]] = field(default_factory=list)  #: (robot_id, number) in arrival order
    received_ids: list[int] = field(default_factory=list)  #: their ids in this robot's map, same order
    sent: list[Shared] = field(default_factory=list)
    rejected: collections.Counter = field(default_factory=collections.Counter)  #: refused messages per kind
    share_s: list[float] = field(default_factory=list)  #: seconds to encode and deliver each own keyframe


@dataclass
class FleetRun:
    """A fleet replay before scoring."""

    robots: list[RobotRun]
    wall_s: float = 0.0
    model_load_s: float = 0.0
    model: str = ""
    model_name: str = ""
    random_weights: bool = False


def robot_config(cfg: SaladConfig, robot_id: int) -> SaladConfig:
    """The parameters with ``robot_id`` set (everything else as given for all robots)."""
    return dataclasses.replace(cfg, robot=dataclasses.replace(cfg.robot, robot_id=robot_id))


def merge_by_stamp(streams: Sequence[Iterator[Frame]]) -> Iterator[tuple[int, Frame]]:
    """``(stream index, frame)`` of all streams in stamp order; equal stamps go to the lower index."""
    def tagged(i: int, stream: Iterator[Frame]) -> Iterator[tuple[int, Frame]]:
        for frame in stream:
            yield i, frame

    return heapq.merge(*(tagged(i, s) for i, s in enumerate(streams)), key=lambda item: item[1].stamp_ns)


def wire_features(wire: WireMessage) -> int:
    """Local features carried by a fleet message (its ``kp`` field holds two floats each)."""
    return next((f.count // 2 for f in wire.fields if f.name == "kp"), 0)


def to_cloud(wire: WireMessage) -> Any:
    """The message as a PointCloud2-like object, as subscribers get it."""
    return fill_cloud(SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace())), wire,
                      lambda **f: SimpleNamespace(**f))


def share(run: RobotRun, number: int, fleet: Sequence[RobotRun]) -> None:
    """Publish ``run``'s keyframe ``number`` and deliver it to every other robot now."""
    t0 = time.perf_counter()
    wire = run.member.on_keyframe(number)
    if wire is None:  # cannot happen for a keyframe just made; nothing to deliver
        return
    run.sent.append(Shared(number, wire.encoded_size, wire_features(wire)))
    msg = to_cloud(wire)
    for other in fleet:
        if other is run:
            continue
        try:
            kf_id = other.member.receive(msg, wire.encoded_size)
        except FleetMessageError as exc:  # counted by the member too; the peer's map lacks it
            other.rejected[exc.kind] += 1
            continue
        other.received.append((run.robot_id, number))
        other.received_ids.append(-1 if kf_id is None else int(kf_id))
    run.share_s.append(time.perf_counter() - t0)


def step(run: RobotRun, frame: Frame, encode_ms: float, fleet: Sequence[RobotRun]) -> None:
    """One frame through its robot's pipeline (its descriptor queued), then its keyframe shared."""
    gt, det = run.poses([frame.stamp_ns])
    known = len(run.received)
    out = run.pipeline.process_batch([frame.rgb], [frame.stamp_ns], det, [frame.frame_id], cameras=[frame.camera],
                                     depths=[frame.depth])
    r = out.frames[0]
    run.records.append(FrameRecord(frame.stamp_ns, gt[0], r, encode_ms, 1e3 * out.detect_s[0], 1e3 * frame.decode_s,
                                   out.descriptors[0].copy() if r.is_keyframe else None))
    run.peers_known.append(known)
    if r.is_keyframe and r.robot_keyframe_id is not None:
        share(run, int(r.robot_keyframe_id), fleet)


def drive(fleet: Sequence[RobotRun], frames: Iterator[tuple[int, Frame]], shared: Any, batch_size: int,
          progress: Any = None) -> None:
    """Run the merged frames: the model encodes a window of ``batch_size`` frames (any robots)
    in one pass, then each frame goes through its robot's pipeline in stamp order. Encoding
    depends on the image alone, so this is the order of a frame-by-frame fleet."""
    window: list[tuple[int, Frame]] = []

    def flush() -> None:
        t0 = time.perf_counter()
        desc = np.asarray(shared.encode([f.rgb for _, f in window]), dtype=np.float32)
        encode_ms = 1e3 * (time.perf_counter() - t0) / len(window)
        for (i, frame), d in zip(window, desc):
            fleet[i].encoder.pending.append(d)
            step(fleet[i], frame, encode_ms, fleet)
        if progress is not None:
            progress.update(len(window))
        window.clear()

    for item in frames:
        window.append(item)
        if len(window) >= max(1, batch_size):
            flush()
    if window:
        flush()


def _progress(total: int, show: bool) -> Any:
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc="replay", file=sys.stderr, dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 5.0)


def open_robots(stack: contextlib.ExitStack, args: argparse.Namespace, settings: ReplaySettings,
                robot_ids: Sequence[int]) -> tuple[list[RobotRun], list[Iterator[Frame]]]:
    """Open every bag (same topics in each), load its ground truth; the robots and their frames."""
    from .replay import bag_frames, open_bag

    robots: list[RobotRun] = []
    streams: list[Any] = []
    for bag, rid in zip(args.bags, robot_ids):
        reader = stack.enter_context(BagReader(bag))
        run = RobotRun(rid, str(bag), robot_config(settings.cfg, rid), reader=reader)
        info, run.gt, run.expected = open_bag(reader, bag, args, run.stats)
        run.poses = PoseLookup(run.gt, settings.tolerance_s, settings.detector_poses)
        run.image_messages = info.count
        streams.append(prefetch(bag_frames(reader, args, settings, run.stats, run.inputs),
                                depth=2 * settings.cfg.model.batch_size))
        robots.append(run)
    return robots, streams


def replay_fleet(args: argparse.Namespace, settings: ReplaySettings, robot_ids: Sequence[int],
                 encoder_override: Any = None) -> FleetRun:
    """Open the bags, load the model once, build one pipeline and fleet member per robot and
    run all frames merged by stamp."""
    from ..pipeline import LoopClosurePipeline
    from .replay import load_encoder, random_weights_warning

    with contextlib.ExitStack() as stack:
        robots, streams = open_robots(stack, args, settings, robot_ids)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        shared, model_s = load_encoder(settings.cfg.model, encoder_override)
        for run in robots:
            run.encoder = AheadEncoder(shared)
            run.pipeline = LoopClosurePipeline(run.cfg, encoder=run.encoder)
            run.member = FleetMember(run.pipeline, run.cfg.fleet)
        first = robots[0].pipeline
        print(f"model: {first.describe()} (loaded in {model_s:.1f} s, shared by {len(robots)} robots)")
        if first.random_weights:
            print(random_weights_warning(settings.cfg.model))
        for run in robots:
            print(f"robot {run.robot_id}: {run.bag}: replaying {run.expected} of {run.image_messages} images on "
                  f"{args.image_topic}" + (f", ground truth from {run.gt.source} ({len(run.gt)} poses)"
                                           if run.gt is not None else ", no ground truth"))
        progress = _progress(sum(r.expected for r in robots), not args.no_progress)
        t0 = time.perf_counter()
        try:
            drive(robots, merge_by_stamp(streams), shared, settings.cfg.model.batch_size, progress)
        finally:
            if progress is not None:
                progress.close()
            for stream in streams:  # stop the readers' threads before their bags close
                stream.close()
        wall = time.perf_counter() - t0
        for run in robots:
            run.undecodable_messages, run.bag_damage = run.reader.undecodable, run.reader.damaged
    return FleetRun(robots, wall, model_s, first.describe(), first.model_name, first.random_weights)


def scoring_input(run: RobotRun) -> RobotKeyframes:
    """A robot's keyframes as :mod:`.fleet_metrics` scores them."""
    kfs: list[FleetKeyframe] = []
    for rec, known in zip(run.records, run.peers_known):
        r = rec.result
        if not r.is_keyframe:
            continue
        if r.robot_keyframe_id != len(kfs):  # own keyframes are numbered 0, 1, 2, ... in order
            raise RuntimeError(f"robot {run.robot_id}: keyframe number {r.robot_keyframe_id}, expected {len(kfs)}")
        p = rec.gt_pose
        pos = np.array([p.x, p.y, p.z]) if p is not None else np.full(3, np.nan)
        yaw = float(yaw_of(p.qx, p.qy, p.qz, p.qw)) if p is not None else float("nan")
        kfs.append(FleetKeyframe(r.stamp_ns, pos, yaw, [Ref(m.robot_id, m.robot_keyframe_id, m.score) for m in r.matches],
                                 [Ref(c.match_robot_id, c.match_keyframe_id, c.score) for c in r.candidates], known))
    return RobotKeyframes(run.robot_id, kfs, list(run.received))


def check_runs(args: argparse.Namespace, fleet: FleetRun, tolerance_s: float) -> None:
    """Per robot: warn about damage, undecodable images and frames without a pose; a bag with
    no decodable image is an error."""
    from .replay import ReplayError

    for run in fleet.robots:
        stats, name = run.stats, f"robot {run.robot_id} ({run.bag})"
        if stats.error:
            print(f"salad_replay: warning: {name}: {stats.error}; evaluating the {len(run.records)} frames read "
                  "before it", file=sys.stderr)
        if not run.records:
            raise ReplayError(f"{name}: no decodable image on {args.image_topic}")
        if stats.bad:
            print(f"salad_replay: warning: {name}: skipped {sum(stats.bad.values())} undecodable images; first: "
                  f"{stats.first_bad}", file=sys.stderr)
        if run.poses.missing:
            print(f"salad_replay: warning: {name}: {len(run.poses.missing)} of {len(run.records)} frames have no "
                  f"ground-truth pose within {tolerance_s} s; their keyframes are not scored", file=sys.stderr)


def run_fleet(args: argparse.Namespace, settings: ReplaySettings, robot_ids: Sequence[int],
              encoder_override: Any = None) -> int:
    """Several bags: replay them as a fleet, score, write the outputs and print the summary."""
    from . import fleet_report
    from .fleet_metrics import TruthSettings, evaluate_fleet
    from .replay import RECALL_KS

    if args.gt_tum:
        raise ConfigError("--gt-tum gives one trajectory: with several bags give --gt-topic (each bag's own)")
    fleet = replay_fleet(args, settings, robot_ids, encoder_override)
    check_runs(args, fleet, settings.tolerance_s)
    ev = None
    if args.gt_topic:
        from ..exclusions import SearchExclusions

        how = TruthSettings(SearchExclusions.from_detector(settings.cfg.detector), args.radius, args.max_yaw,
                            settings.detector_poses)
        ev = evaluate_fleet([scoring_input(r) for r in fleet.robots], how, RECALL_KS)
    poses = score_poses(args, settings, fleet, ev) if args.camera_info_topic else None
    out, path = fleet_report.write_outputs(Path(args.out), args, settings, fleet, ev, poses)
    fleet_report.print_summary(out, path)
    return 0


def score_poses(args: argparse.Namespace, settings: ReplaySettings, fleet: FleetRun,
                ev: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``relative_pose`` section (intra- and inter-robot) and its samples: :mod:`.fleet_poses`."""
    from .fleet_poses import evaluate_fleet_poses
    from .replay import gt_camera_to_base

    section, samples = evaluate_fleet_poses(fleet, ev, gt_camera_to_base(args), max_pairs=args.pose_pairs,
                                            tolerance_ns=int(round(settings.tolerance_s * 1e9)))
    return {"camera_info_topic": args.camera_info_topic, "depth_topic": args.depth_topic, **section}, samples
