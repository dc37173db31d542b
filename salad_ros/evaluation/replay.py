"""``salad_replay``: run a rosbag through the loop-closure pipeline and score it.

Reads images (sensor_msgs/Image or CompressedImage) from a rosbag2 (sqlite3 or mcap) and,
optionally, ground-truth poses (a nav_msgs/Odometry, geometry_msgs/PoseStamped or
PoseWithCovarianceStamped topic, or a TUM file). Frames go through
:class:`~salad_ros.pipeline.LoopClosurePipeline` with the node's parameters file, so the
keyframes and candidates are the ones the node would produce; the model runs batched.

Writes into ``--out``: ``report.json`` (metrics, settings, timing), ``candidates.csv`` (the
accepted loop candidates), ``keyframes.csv`` (each keyframe's pose and best match) and the
plots ``pr_curve.png``, ``trajectory.png``, ``similarity.png``. Metric definitions:
:mod:`salad_ros.evaluation.metrics`. No rclpy is imported.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import queue
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..config import ConfigError, to_flat_dict
from ..io.bags import IMAGE_TYPES, POSE_TYPES, BagError, BagReader, BagReadError
from ..io.images import ImageDecodeError, msg_to_rgb
from ..io.messages import pose_from_msg
from ..io.trajectory import Trajectory, TrajectoryError, read_tum, yaw_of
from . import metrics as M

EXIT_USAGE = 2
EXIT_INPUT = 3
RECALL_KS = (1, 5, 10)


class ReplayError(RuntimeError):
    """A replay cannot run; the message is for the user."""


def default_params_file() -> Path | None:
    """The package's ``config/salad_ros.yaml``: beside the sources, else in the ament share dir."""
    here = Path(__file__).resolve().parents[2] / "config" / "salad_ros.yaml"
    if here.is_file():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory

        shared = Path(get_package_share_directory("salad_ros")) / "config" / "salad_ros.yaml"
        return shared if shared.is_file() else None
    except Exception:  # not installed with colcon, or no ament index at all: built-in defaults
        return None


# --------------------------------------------------------------------------------------------
# Reading


@dataclass
class Frame:
    index: int  #: position among the image topic's messages
    stamp_ns: int
    rgb: np.ndarray
    frame_id: str
    decode_s: float


@dataclass
class ReadStats:
    messages: int = 0  #: image messages seen
    bad: dict[str, int] = field(default_factory=dict)  #: undecodable images per kind
    first_bad: str | None = None
    error: str | None = None  #: bag read error that stopped the read
    last_good_index: int | None = None


def load_ground_truth(reader: BagReader, topic: str | None, tum: str | None, stats: ReadStats) -> Trajectory | None:
    """Poses from a topic of the bag or a TUM file (None without either)."""
    if tum:
        return read_tum(tum)
    if not topic:
        return None
    stamps: list[int] = []
    poses = []
    try:
        for m in reader.messages([topic]):
            stamps.append(m.stamp_ns)
            poses.append(pose_from_msg(m.msg))
    except BagReadError as exc:  # keep the poses read before the damage
        stats.error = str(exc)
        stats.last_good_index = exc.last_good_index
    return Trajectory.from_poses(stamps, poses, source=f"topic {topic}")


def iter_frames(reader: BagReader, topic: str, every: int, max_frames: int | None, stats: ReadStats) -> Iterator[Frame]:
    """Decoded frames of ``topic``: every ``every``-th message, at most ``max_frames``.
    Undecodable images are counted per kind in ``stats`` and skipped."""
    taken = 0
    try:
        for n, m in enumerate(reader.messages([topic])):
            stats.messages += 1
            if n % every:
                continue
            t0 = time.perf_counter()
            try:
                rgb = msg_to_rgb(m.msg)
            except ImageDecodeError as exc:
                stats.bad[exc.kind] = stats.bad.get(exc.kind, 0) + 1
                stats.first_bad = stats.first_bad or f"image message {n}: {exc}"
                continue
            yield Frame(n, m.stamp_ns, rgb, getattr(getattr(m.msg, "header", None), "frame_id", ""),
                        time.perf_counter() - t0)
            taken += 1
            if max_frames is not None and taken >= max_frames:
                return
    except BagReadError as exc:
        stats.error = str(exc)
        stats.last_good_index = exc.last_good_index


def prefetch(items: Iterator[Frame], depth: int) -> Iterator[Frame]:
    """Decode in a background thread while the model runs (torch releases the GIL)."""
    q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
    done = object()
    failure: list[BaseException] = []
    stop = threading.Event()

    def run() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as exc:  # re-raised in the consumer
            failure.append(exc)
        finally:
            q.put(done)

    thread = threading.Thread(target=run, name="salad_replay_reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                break
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)
    if failure:
        raise failure[0]


# --------------------------------------------------------------------------------------------
# Running


class RecordingEncoder:
    """Wraps an encoder to keep the last batch's descriptors and the time spent encoding."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.last = np.zeros((0, 0), np.float32)
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode(self, images: Sequence[np.ndarray], color: str = "rgb") -> np.ndarray:
        t0 = time.perf_counter()
        out = self.inner.encode(images, color)
        self.seconds += time.perf_counter() - t0
        self.last = np.asarray(out, dtype=np.float32)
        return out


@dataclass
class FrameRecord:
    stamp_ns: int
    gt_pose: Any  #: Pose or None
    result: Any  #: detector FrameResult
    encode_ms: float
    detect_ms: float
    decode_ms: float
    #: Kept for keyframes only (the similarity plot), to bound memory on long bags.
    descriptor: np.ndarray | None = None


def run_pipeline(pipeline: Any, frames: Iterator[Frame], poses_for: Any, batch_size: int,
                 progress: Any = None) -> list[FrameRecord]:
    """Feed frames in batches; ``poses_for(stamps) -> (gt poses, poses given to the detector)``."""
    records: list[FrameRecord] = []
    encoder: RecordingEncoder = pipeline.encoder
    batch: list[Frame] = []

    def flush() -> None:
        stamps = [f.stamp_ns for f in batch]
        gt, det = poses_for(stamps)
        enc0 = encoder.seconds
        t0 = time.perf_counter()
        results = pipeline.process_batch([f.rgb for f in batch], stamps, det, [f.frame_id for f in batch])
        total = time.perf_counter() - t0
        enc = encoder.seconds - enc0
        for f, g, r, d in zip(batch, gt, results, encoder.last):
            records.append(FrameRecord(f.stamp_ns, g, r, 1e3 * enc / len(batch), 1e3 * (total - enc) / len(batch),
                                       1e3 * f.decode_s, d.copy() if r.is_keyframe else None))
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


# --------------------------------------------------------------------------------------------
# Evaluation and output


@dataclass
class Evaluation:
    keyframe_rows: list[int]  #: record index of each keyframe, in keyframe order
    positions: np.ndarray  #: [K, 3] GT positions (NaN: none)
    yaws: np.ndarray
    truth: np.ndarray | None  #: [K, K] true loops (None without ground truth)
    metrics: M.LoopMetrics | None
    row_of: dict[int, int]  #: keyframe id -> keyframe row


def evaluate_records(records: list[FrameRecord], cfg: Any, has_gt: bool, radius: float, max_yaw: float | None,
                     detector_poses: bool) -> Evaluation:
    kf = [i for i, r in enumerate(records) if r.result.is_keyframe]
    row_of = {int(records[i].result.keyframe_id): k for k, i in enumerate(kf)}
    pos = np.full((len(kf), 3), np.nan)
    yaw = np.full(len(kf), np.nan)
    for k, i in enumerate(kf):
        p = records[i].gt_pose
        if p is not None:
            pos[k] = (p.x, p.y, p.z)
            yaw[k] = float(yaw_of(p.qx, p.qy, p.qz, p.qw))
    if not has_gt:
        return Evaluation(kf, pos, yaw, None, None, row_of)
    d = cfg.detector
    stamps = np.array([records[i].stamp_ns for i in kf], dtype=np.int64)
    eligible = M.eligible_matrix(
        stamps, pos if detector_poses else None, exclude_recent=d.exclude_recent_keyframes,
        exclude_within_ns=int(round(d.exclude_recent_s * 1e9)), exclude_radius=d.exclude_radius_m)
    truth = M.ground_truth(pos, eligible, radius, yaw, max_yaw)
    queries = []
    for k, i in enumerate(kf):
        r = records[i].result
        ids = [row_of.get(m.id, -1) for m in r.matches]
        queries.append(M.QueryRecord(k, ids, [m.score for m in r.matches],
                                     [row_of.get(c.match_id, -1) for c in r.candidates], [c.score for c in r.candidates]))
    if d.top_k < max(RECALL_KS):
        desc = np.stack([records[i].descriptor for i in kf])
        extend_matches(queries, desc, eligible, max(RECALL_KS))
    metrics = M.evaluate(queries, truth, ~np.isnan(pos).any(axis=1), RECALL_KS)
    return Evaluation(kf, pos, yaw, truth, metrics, row_of)


def extend_matches(queries: list[M.QueryRecord], desc: np.ndarray, eligible: np.ndarray, k: int,
                   chunk: int = 512) -> None:
    """Append to each query's raw matches the next-best eligible keyframes by exact cosine
    similarity, up to ``k`` in all, so recall@k for k > ``top_k`` can be reported. With the
    default flat index this is exactly what the detector would list with ``top_k = k``."""
    for r0 in range(0, len(queries), chunk):
        sim = desc[r0 : r0 + chunk] @ desc.T
        sim[~eligible[r0 : r0 + chunk]] = -np.inf
        for row, q in zip(sim, queries[r0 : r0 + chunk]):
            need = k - len(q.match_ids)
            if need <= 0:
                continue
            row[[j for j in q.match_ids if j >= 0]] = -np.inf
            best = np.argsort(-row, kind="stable")[:need]
            best = best[np.isfinite(row[best])]
            q.match_ids = list(q.match_ids) + best.tolist()
            q.match_scores = list(q.match_scores) + row[best].tolist()


def _ms_stats(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "p95": 0.0}
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(arr.mean()), 3), "median": round(float(np.median(arr)), 3),
            "p95": round(float(np.percentile(arr, 95)), 3)}


def _stamp(ns: int) -> str:
    sec, rest = divmod(int(ns), 1_000_000_000)
    return f"{sec}.{rest:09d}"


def write_csvs(out: Path, records: list[FrameRecord], ev: Evaluation) -> tuple[Path, Path]:
    cand_path, kf_path = out / "candidates.csv", out / "keyframes.csv"
    truth = ev.truth
    with cand_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["query_stamp", "match_stamp", "query_keyframe", "match_keyframe", "score", "rank", "verified",
                    "inliers", "correct", "distance_m"])
        for i in ev.keyframe_rows:
            for c in records[i].result.candidates:
                q, j = ev.row_of.get(c.query_id, -1), ev.row_of.get(c.match_id, -1)
                correct, dist = "", ""
                if truth is not None and q >= 0 and j >= 0 and not np.isnan(ev.positions[[q, j]]).any():
                    correct = "true" if truth[q, j] else "false"
                    dist = f"{np.linalg.norm(ev.positions[q] - ev.positions[j]):.3f}"
                verified = "" if c.verified is None else str(bool(c.verified)).lower()
                w.writerow([_stamp(c.query_stamp_ns), _stamp(c.match_stamp_ns), c.query_id, c.match_id,
                            f"{c.score:.6f}", c.rank, verified, c.inliers, correct, dist])
    with kf_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["keyframe", "stamp", "x", "y", "z", "yaw_deg", "has_true_loop", "top1_keyframe", "top1_score",
                    "top1_correct", "candidates"])
        m = ev.metrics
        for k, i in enumerate(ev.keyframe_rows):
            r = records[i].result
            p = ev.positions[k]
            top = r.matches[0] if r.matches else None
            has_loop = "" if m is None or k not in m.has_loop else str(m.has_loop[k]).lower()
            top_ok = "" if m is None or k not in m.top1_correct else str(m.top1_correct[k]).lower()
            w.writerow([r.keyframe_id, _stamp(r.stamp_ns)] + ["" if np.isnan(v) else f"{v:.3f}" for v in p]
                       + ["" if np.isnan(ev.yaws[k]) else f"{math.degrees(ev.yaws[k]):.1f}", has_loop,
                          "" if top is None else top.id, "" if top is None else f"{top.score:.6f}", top_ok,
                          len(r.candidates)])
    return cand_path, kf_path


def make_plots(out: Path, records: list[FrameRecord], ev: Evaluation, gt: Trajectory | None, title: str) -> dict[str, str]:
    from . import plots

    files: dict[str, str] = {}
    m = ev.metrics
    if m is not None:
        files["pr_curve_png"] = str(plots.plot_pr_curve(m.curve, m.average_precision, m.max_recall_at_100_precision,
                                                        out / "pr_curve.png", title))
    if gt is not None:
        step = max(1, len(gt) // 5000)
        edges = []
        for k, i in enumerate(ev.keyframe_rows):
            for c in records[i].result.candidates:
                j = ev.row_of.get(c.match_id, -1)
                if j >= 0:
                    ok = None if ev.truth is None or np.isnan(ev.positions[[k, j]]).any() else bool(ev.truth[k, j])
                    edges.append((k, j, ok))
        files["trajectory_png"] = str(plots.plot_trajectory(gt.poses[::step, :2], ev.positions[:, :2], edges,
                                                            out / "trajectory.png", title))
    if ev.keyframe_rows:
        # Long runs: plot every step-th keyframe (the matrix would not fit in memory or pixels).
        step = max(1, math.ceil(len(ev.keyframe_rows) / 1500))
        desc = np.stack([records[i].descriptor for i in ev.keyframe_rows[::step]])
        n = len(ev.keyframe_rows)
        truth = ev.truth[::step, ::step] if ev.truth is not None else np.zeros((len(desc), len(desc)), bool)
        files["similarity_png"] = str(plots.plot_similarity(desc @ desc.T, truth, out / "similarity.png", title,
                                                            step=step, total=n))
    return files


def format_table(report: dict[str, Any]) -> str:
    """The metrics as an aligned two-column text table."""
    def fmt(v: Any) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    t = report["timing"]
    rows = [
        ("frames processed", f"{report['frames_processed']} of {report['image_messages']} images"
         + (f" (1 in {report['every']})" if report["every"] > 1 else "")),
        ("keyframes", report["keyframes"]),
        ("queries with a true loop", report["queries_with_loop"]),
        ("average precision", report["average_precision"]),
        ("max recall @ 100% precision", report["max_recall_at_100_precision"]),
        ("recall@1 / @5 / @10", " / ".join(fmt(report[f"recall_at_{k}"]) for k in (1, 5, 10))),
        ("accepted candidates (true)", f"{report['candidates']} ({fmt(report['true_candidates'])})"),
        ("detector precision / recall", f"{fmt(report['detector_precision'])} / {fmt(report['detector_recall'])}"),
        ("encode / detect ms per frame", f"{t['encode_ms_per_frame']['mean']:.1f} / {t['detect_ms_per_frame']['mean']:.1f}"),
        ("throughput", f"{t['frames_per_s']:.2f} frames/s ({t['wall_s']:.1f} s)"),
    ]
    width = max(len(r[0]) for r in rows)
    line = "-" * (width + 32)
    return "\n".join([line] + [f"{name:<{width}}  {fmt(value)}" for name, value in rows] + [line])


# --------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="salad_replay",
        description="Replay a rosbag2 through the SALAD loop detector (same parameters as the node) and score "
        "the loop candidates against ground-truth poses.",
    )
    p.add_argument("bag", help="rosbag2 directory, or a .mcap / .db3 file")
    p.add_argument("--image-topic", required=True, help="sensor_msgs/Image or CompressedImage topic")
    gt = p.add_mutually_exclusive_group()
    gt.add_argument("--gt-topic", help="ground truth: nav_msgs/Odometry, geometry_msgs/PoseStamped or "
                    "PoseWithCovarianceStamped topic in the bag")
    gt.add_argument("--gt-tum", metavar="FILE", help="ground truth: TUM trajectory file 'stamp tx ty tz qx qy qz qw'")
    p.add_argument("--out", required=True, help="output directory (created; files in it are overwritten)")
    p.add_argument("--params", help="ROS 2 parameters file (default: the package's config/salad_ros.yaml)")
    p.add_argument("--weights", help="SALAD checkpoint (overrides 'weights')")
    p.add_argument("--allow-random-weights", action="store_true",
                   help="run with random weights when no checkpoint is given (metrics are then meaningless)")
    p.add_argument("--backbone", help="overrides 'backbone', e.g. dinov2_vits14")
    p.add_argument("--descriptor", help="overrides 'descriptor', e.g. salad-8448")
    p.add_argument("--image-size", type=int, help="overrides 'image_size' (multiple of 14)")
    p.add_argument("--device", help="overrides 'device' (auto, cpu, cuda, cuda:N)")
    p.add_argument("--batch-size", type=int, help="overrides 'batch_size' (images per forward pass)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="any other parameter, e.g. --set detector.min_score=0.6 (repeatable; VALUE is YAML)")
    p.add_argument("--every", type=int, default=1, metavar="N", help="use every N-th image (default 1)")
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    p.add_argument("--radius", type=float, default=5.0, help="true-loop distance [m] (default 5)")
    p.add_argument("--max-yaw", type=float, metavar="DEG", help="true loops also need headings within DEG degrees")
    p.add_argument("--pose-tolerance", type=float, metavar="S",
                   help="largest image/pose stamp difference [s] (default: the 'pose_tolerance' parameter)")
    p.add_argument("--detector-poses", choices=("auto", "on", "off"), default="auto",
                   help="give ground-truth poses to the detector as the node's odometry (auto: when the "
                   "parameter 'pose_source' is not none)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--set expects NAME=VALUE, got {item!r}")
        out[name.strip()] = yaml.safe_load(value)
    for flag, name in (("weights", "weights"), ("backbone", "backbone"), ("descriptor", "descriptor"),
                       ("image_size", "image_size"), ("device", "device"), ("batch_size", "batch_size")):
        value = getattr(args, flag)
        if value is not None:
            out[name] = value
    if args.allow_random_weights:
        out["allow_random_weights"] = True
    # Replay scores one sequence on its own: never load or extend a saved map.
    out["database_path"] = ""
    out["save_on_shutdown"] = False
    return out


def main(argv: Sequence[str] | None = None, *, encoder: Any = None) -> int:
    """Console entry point; ``encoder`` replaces the configured model (tests, benchmarks)."""
    args = build_parser().parse_args(argv)
    try:
        return run(args, encoder)
    except (ConfigError, ReplayError, BagError, TrajectoryError) as exc:
        print(f"salad_replay: error: {exc}", file=sys.stderr)
        return EXIT_INPUT if isinstance(exc, (BagError, TrajectoryError)) else EXIT_USAGE


def run(args: argparse.Namespace, encoder_override: Any = None) -> int:
    from ..settings import load_config

    if args.every < 1:
        raise ConfigError("--every must be >= 1")
    if args.max_frames is not None and args.max_frames < 1:
        raise ConfigError("--max-frames must be >= 1")
    params = Path(args.params) if args.params else default_params_file()
    if args.params and not params.is_file():
        raise ConfigError(f"--params: no such file {params}")
    try:
        cfg = load_config(params, _overrides(args))
    except ConfigError as exc:
        text = str(exc)
        if "allow_random_weights" in text:
            text = "no model weights: give --weights FILE (e.g. dino_salad.ckpt), or --allow-random-weights to try " \
                   "the pipeline with a random model (metrics are then meaningless)"
        raise ConfigError(text) from None
    model = cfg.model
    if model.backend == "torch" and model.weights and not model.weights.startswith("hub") \
            and not Path(model.weights).is_file():
        raise ConfigError(f"--weights / parameter 'weights': file not found: {model.weights}")
    random_weights = model.backend == "torch" and not model.weights and encoder_override is None
    out = Path(args.out)
    detector_poses = args.detector_poses == "on" or (args.detector_poses == "auto" and cfg.node.pose_source != "none")
    tolerance_s = args.pose_tolerance if args.pose_tolerance is not None else cfg.node.pose_tolerance
    tol_ns = int(round(tolerance_s * 1e9))

    stats = ReadStats()
    with BagReader(args.bag) as reader:
        if reader.salvaged:
            print(f"salad_replay: warning: {args.bag}: {reader.salvaged}", file=sys.stderr)
        info = reader.require_topic(args.image_topic, IMAGE_TYPES, "image topic")
        if args.gt_topic:
            reader.require_topic(args.gt_topic, POSE_TYPES, "ground-truth topic")
        gt = load_ground_truth(reader, args.gt_topic, args.gt_tum, stats)
        if gt is not None and len(gt) == 0:
            raise ReplayError(f"ground truth {gt.source} has no poses")

        expected = math.ceil(info.count / args.every)
        if args.max_frames:
            expected = min(expected, args.max_frames)
        out.mkdir(parents=True, exist_ok=True)

        from ..backends import create_encoder
        from ..pipeline import LoopClosurePipeline

        t_model = time.perf_counter()
        try:
            encoder = RecordingEncoder(encoder_override or create_encoder(model))
        except ConfigError:
            raise
        except Exception as exc:  # a damaged or foreign checkpoint: one line, not a traceback
            raise ReplayError(f"cannot load the model ({model.weights or 'random weights'}): {exc}") from exc
        pipeline = LoopClosurePipeline(cfg, encoder=encoder)  # type: ignore[arg-type]
        model_s = time.perf_counter() - t_model
        print(f"model: {encoder.describe()} (loaded in {model_s:.1f} s)")
        if random_weights:
            print("WARNING: RANDOM WEIGHTS - no checkpoint given (--allow-random-weights). The descriptors are "
                  "meaningless, so the metrics below say nothing about SALAD; they only show that the pipeline runs.")
        print(f"replaying {expected} of {info.count} images on {args.image_topic} ({info.msgtype.rsplit('/', 1)[-1]})"
              + (f", ground truth from {gt.source} ({len(gt)} poses)" if gt is not None else ", no ground truth"))

        missing_pose: list[int] = []

        def poses_for(stamps: list[int]) -> tuple[list[Any], list[Any]]:
            if gt is None:
                return [None] * len(stamps), [None] * len(stamps)
            found = gt.lookup(stamps, tol_ns)
            missing_pose.extend(s for s, p in zip(stamps, found) if p is None)
            return found, (found if detector_poses else [None] * len(stamps))

        progress = None
        if not args.no_progress:
            from tqdm import tqdm

            progress = tqdm(total=expected, unit="frame", desc="replay", file=sys.stderr, dynamic_ncols=True,
                            mininterval=0.5 if sys.stderr.isatty() else 5.0)
        t0 = time.perf_counter()
        frames = prefetch(iter_frames(reader, args.image_topic, args.every, args.max_frames, stats),
                          depth=2 * model.batch_size)
        try:
            records = run_pipeline(pipeline, frames, poses_for, model.batch_size, progress)
        finally:
            if progress is not None:
                progress.close()
        wall = time.perf_counter() - t0
        undecodable_msgs = reader.undecodable
        first_undecodable = reader.first_undecodable

    if stats.error:
        print(f"salad_replay: warning: {stats.error}; evaluating the {len(records)} frames read before it",
              file=sys.stderr)
    if not records:
        raise ReplayError(f"no decodable image on {args.image_topic}"
                          + (f" ({sum(stats.bad.values())} undecodable: {stats.first_bad})" if stats.bad else ""))
    if stats.bad:
        print(f"salad_replay: warning: skipped {sum(stats.bad.values())} undecodable images "
              f"({', '.join(f'{k}: {v}' for k, v in stats.bad.items())}); first: {stats.first_bad}", file=sys.stderr)
    if missing_pose:
        print(f"salad_replay: warning: {len(missing_pose)} of {len(records)} frames have no ground-truth pose within "
              f"{tolerance_s} s (first at {_stamp(missing_pose[0])}); their keyframes are not scored", file=sys.stderr)

    ev = evaluate_records(records, cfg, gt is not None, args.radius, args.max_yaw, detector_poses)
    m = ev.metrics
    summary = m.summary() if m is not None else {
        "keyframes": len(ev.keyframe_rows), "queries": len(ev.keyframe_rows), "queries_with_pose": 0,
        "queries_with_loop": None, "predictions": None, "average_precision": None,
        "max_recall_at_100_precision": None, "recall_at_1": None, "recall_at_5": None, "recall_at_10": None,
        "candidates": sum(len(records[i].result.candidates) for i in ev.keyframe_rows), "true_candidates": None,
        "detector_precision": None, "detector_recall": None,
    }
    cand_csv, kf_csv = write_csvs(out, records, ev)
    n = len(records)
    report: dict[str, Any] = {
        "bag": str(args.bag),
        "image_topic": args.image_topic,
        "ground_truth": None if gt is None else gt.source,
        "params_file": str(params) if params else None,
        "model": encoder.describe(),
        "weights": model.weights or None,
        "random_weights": random_weights,
        **summary,
        "image_messages": info.count,
        "image_messages_read": stats.messages,
        "frames_processed": n,
        "every": args.every,
        "max_frames": args.max_frames,
        "undecodable_images": dict(stats.bad),
        "undecodable_messages": undecodable_msgs,
        "first_undecodable": stats.first_bad or first_undecodable,
        "frames_without_pose": len(missing_pose),
        "frames_without_pose_stamps": [_stamp(s) for s in missing_pose[:20]],
        "bag_error": stats.error,
        "last_good_message_index": stats.last_good_index,
        "radius_m": args.radius,
        "max_yaw_deg": args.max_yaw,
        "pose_tolerance_s": tolerance_s,
        "detector_poses": detector_poses,
        "matches_per_query": cfg.detector.top_k,
        "metric_definitions": {
            "true_loop": "earlier keyframe outside the detector's exclusion window within radius_m (and max_yaw_deg)",
            "pr_curve": "over the threshold on each query keyframe's top-1 raw match score",
            "average_precision": "area under the step PR curve, sum (R_i - R_i-1) * P_i, no interpolation",
            "max_recall_at_100_precision": "largest recall at a threshold with no false positive",
            "recall_at_k": "queries with a true loop whose top-k raw matches include one (beyond the detector's "
                           "top_k: extended by exact search over the keyframe descriptors)",
            "detector_precision": "accepted candidates that are true loops / accepted candidates",
            "detector_recall": "queries with a true loop that got a true accepted candidate / queries with a loop",
        },
        "pr_curve": [] if m is None else [
            {"threshold": round(float(t), 6), "precision": round(float(p), 6), "recall": round(float(r), 6)}
            for t, p, r in zip(m.curve.thresholds, m.curve.precision, m.curve.recall)
        ],
        "timing": {
            "wall_s": round(wall, 3),
            "frames_per_s": round(n / wall, 3) if wall > 0 else None,
            "model_load_s": round(model_s, 3),
            "encode_ms_per_frame": _ms_stats([r.encode_ms for r in records]),
            "detect_ms_per_frame": _ms_stats([r.detect_ms for r in records]),
            "decode_ms_per_frame": _ms_stats([r.decode_ms for r in records]),
            "batch_size": model.batch_size,
        },
        "config": to_flat_dict(cfg),
        "files": {"candidates_csv": str(cand_csv), "keyframes_csv": str(kf_csv)},
    }
    if not args.no_plots:
        title = f"{Path(args.bag).name}: {encoder.model_name}" + (" (RANDOM WEIGHTS)" if random_weights else "")
        report["files"].update(make_plots(out, records, ev, gt, title))
    report_path = out / "report.json"
    report_path.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")

    print(format_table(report))
    if m is None:
        print("no ground truth given (--gt-topic or --gt-tum): metrics not computed")
    elif not m.queries_with_loop:
        print(f"no query keyframe has a true loop within {args.radius} m: precision/recall are undefined")
    if random_weights:
        print("(random weights: these numbers are not a measure of SALAD)")
    labels = {"candidates_csv": "candidates", "keyframes_csv": "keyframes", "pr_curve_png": "PR curve",
              "trajectory_png": "trajectory", "similarity_png": "similarity"}
    print(f"{'report':<11} {report_path}")
    for key, label in labels.items():
        if key in report["files"]:
            print(f"{label:<11} {report['files'][key]}")
    return 0


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return str(obj)


if __name__ == "__main__":
    sys.exit(main())
