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

With ``--camera-info-topic`` (and ``--depth-topic``) loop candidates get relative poses as in
the node, and ``report.json`` gains ``relative_pose`` (:mod:`.pose_eval`, plot
``relative_pose.png``).

Several bags (one per robot, ``--robot-ids``) are replayed together as a fleet sharing keyframes:
:mod:`.fleet_replay` (driving), :mod:`.fleet_metrics` (intra- and inter-robot scoring) and
:mod:`.fleet_report` (its ``report.json``, CSVs and ``fleet_trajectories.png``).

This module is the command line and the order of the steps; the steps live in
:mod:`.frames` (reading the bag), :mod:`.replay_loop` (driving the pipeline) and
:mod:`.report` (scoring and writing the outputs).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..backends import ModelConfig, check_weights_file
from ..config import SaladConfig
from ..io.bags import IMAGE_TYPES, POSE_TYPES, BagError, BagReader
from ..io.trajectory import Trajectory, TrajectoryError
from ..loop_pose import PoseSettings
from ..params import ConfigError
from ..pose_inputs import PoseInputs
from . import pose_eval
from .companions import companion_summary, iter_frames_with_companions
from .frames import Frame, ReadStats, iter_frames, load_ground_truth, prefetch
from .replay_loop import FrameRecord, PoseLookup, ReplayRun, ReplaySettings, replay_frames, run_pipeline
from .report import (
    RECALL_KS,
    Evaluation,
    evaluate_records,
    extend_matches,
    format_stamp,
    format_table,
    make_plots,
    print_summary,
    write_csvs,
    write_outputs,
)

__all__ = [  # the steps, importable from here as before the split
    "EXIT_INPUT", "EXIT_USAGE", "RECALL_KS", "Evaluation", "Frame", "FrameRecord", "ReadStats", "ReplayError",
    "build_parser", "evaluate_records", "extend_matches", "format_table", "iter_frames", "load_ground_truth",
    "main", "make_plots", "prefetch", "run", "run_pipeline", "write_csvs",
]

EXIT_USAGE = 2
EXIT_INPUT = 3


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
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="salad_replay",
        description="Replay a rosbag2 through the SALAD loop detector (same parameters as the node) and score "
        "the loop candidates against ground-truth poses.",
    )
    p.add_argument("bags", nargs="+", metavar="bag",
                   help="rosbag2 directory, or a .mcap / .db3 file; several: one per robot of a fleet, replayed "
                   "together (see --robot-ids)")
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
    p.add_argument("--camera-info-topic", help="sensor_msgs/CameraInfo topic: loop candidates get relative poses "
                   "(parameter 'pose_estimation'), report.json a 'relative_pose' section")
    p.add_argument("--depth-topic", help="depth sensor_msgs/Image aligned to the images (16UC1 mm or 32FC1 m): "
                   "metric relative poses")
    p.add_argument("--gt-camera-to-base", metavar="'X Y Z QX QY QZ QW'",
                   help="camera optical frame in the ground truth's frame, to score relative poses in camera frames "
                   "(not needed when the parameter 'camera_to_base' is set: poses are then scored in base frames)")
    p.add_argument("--pose-pairs", type=int, default=200, metavar="N",
                   help="ground-truth loop pairs whose relative pose is estimated and scored (evenly sampled; "
                   "default 200)")
    p.add_argument("--robot-ids", metavar="ID,ID,...",
                   help="robot ids of the bags, in order (default 0, 1, 2, ...); several bags are replayed as a "
                   "fleet sharing keyframes (parameters fleet.*), report.json separates intra- and inter-robot loops")
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
    """Replay, score and report: read the settings, run the bag through the pipeline, write
    the outputs into ``--out`` and print the summary. Several bags: :mod:`.fleet_replay`."""
    robot_ids = parse_robot_ids(args.robot_ids, len(args.bags))
    if len(args.bags) > 1:
        from .fleet_replay import run_fleet

        return run_fleet(args, load_settings(args), robot_ids, encoder_override)
    args.bag = args.bags[0]
    settings = load_settings(args)
    if args.robot_ids:
        settings.cfg = dataclasses.replace(settings.cfg, robot=dataclasses.replace(settings.cfg.robot,
                                                                                   robot_id=robot_ids[0]))
    result, gt = replay_bag(args, settings, encoder_override)
    check_what_was_read(args, result, settings.tolerance_s)
    ev = evaluate_records(result.records, settings.cfg, gt is not None, args.radius, args.max_yaw,
                          settings.detector_poses)
    if args.camera_info_topic:
        ev.relative_pose, ev.pose_samples = score_relative_poses(args, settings, result, ev, gt)
    report, report_path = write_outputs(Path(args.out), args, settings, result, ev, gt)
    print_summary(report, report_path, ev, args.radius)
    if args.camera_info_topic:
        print(pose_eval.summary_line(ev.relative_pose))
    return 0


def parse_robot_ids(text: str | None, bags: int) -> list[int]:
    """``--robot-ids`` (one distinct id per bag), default 0, 1, 2, ..."""
    if not text:
        return list(range(bags))
    try:
        ids = [int(t) for t in text.split(",")]
    except ValueError:
        raise ConfigError(f"--robot-ids expects integers separated by commas, got {text!r}") from None
    if len(ids) != bags:
        raise ConfigError(f"--robot-ids gives {len(ids)} ids for {bags} bag{'' if bags == 1 else 's'}: one per bag")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"--robot-ids: every robot needs its own id, got {text!r}")
    if any(not 0 <= i <= (1 << 32) - 2 for i in ids):
        raise ConfigError(f"--robot-ids: ids are 0 .. {(1 << 32) - 2}, got {text!r}")
    return ids


def score_relative_poses(args: argparse.Namespace, settings: ReplaySettings, result: ReplayRun, ev: Evaluation,
                         gt: Trajectory | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``relative_pose`` section (and the samples for its plot): see :mod:`.pose_eval`."""
    section, samples = pose_eval.evaluate_relative_poses(
        result.pipeline, result.records, ev, gt, gt_camera_to_base(args), max_pairs=args.pose_pairs,
        tolerance_ns=int(round(settings.tolerance_s * 1e9)))
    section = {"camera_info_topic": args.camera_info_topic, "depth_topic": args.depth_topic,
               "input_problems": result.pose_inputs, **section}
    return section, samples


def gt_camera_to_base(args: argparse.Namespace) -> Any:
    """``--gt-camera-to-base`` as a 4x4 transform (None when not given)."""
    if not args.gt_camera_to_base:
        return None
    try:
        return PoseSettings(camera_to_base=args.gt_camera_to_base).camera_to_base_matrix()
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("parameter 'camera_to_base'", "--gt-camera-to-base")) from None


# --------------------------------------------------------------------------------------------
# Steps


def load_settings(args: argparse.Namespace) -> ReplaySettings:
    """The node's parameters with the command line's overrides, the weights file checked."""
    from ..config import load_config

    if args.every < 1:
        raise ConfigError("--every must be >= 1")
    if args.max_frames is not None and args.max_frames < 1:
        raise ConfigError("--max-frames must be >= 1")
    if args.pose_pairs < 0:
        raise ConfigError("--pose-pairs must be >= 0")
    if args.depth_topic and not args.camera_info_topic:
        raise ConfigError("--depth-topic needs --camera-info-topic (depth alone gives no pose)")
    if args.image_topic in (args.camera_info_topic, args.depth_topic):
        raise ConfigError("--camera-info-topic and --depth-topic must differ from --image-topic")
    gt_camera_to_base(args)  # refused before the replay, not after it
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
    cfg = dataclasses.replace(cfg, model=check_weights_file(cfg.model))
    detector_poses = args.detector_poses == "on" or (args.detector_poses == "auto" and cfg.node.pose_source != "none")
    tolerance_s = args.pose_tolerance if args.pose_tolerance is not None else cfg.node.pose_tolerance
    return ReplaySettings(cfg, params, detector_poses, tolerance_s)


def load_encoder(model: ModelConfig, encoder_override: Any = None) -> tuple[Any, float]:
    """The model (or ``encoder_override``) and the seconds loading took; a model that cannot be
    loaded is one line, not a traceback."""
    from ..backends import create_encoder

    t0 = time.perf_counter()
    try:
        encoder = encoder_override or create_encoder(model)
    except ConfigError:
        raise
    except Exception as exc:  # a damaged or foreign checkpoint
        raise ReplayError(f"cannot load the model ({model.weights or 'random weights'}): {exc}") from exc
    return encoder, time.perf_counter() - t0


def build_pipeline(cfg: SaladConfig, encoder_override: Any = None) -> tuple[Any, float]:
    """The pipeline (model loaded) and the seconds loading took."""
    from ..pipeline import LoopClosurePipeline

    encoder, seconds = load_encoder(cfg.model, encoder_override)
    return LoopClosurePipeline(cfg, encoder=encoder), seconds


def random_weights_warning(model: ModelConfig) -> str:
    """What the replay prints when the descriptors come from untrained weights."""
    why = "no checkpoint given (--allow-random-weights)" if model.backend == "torch" else \
        f"{model.model_file} was exported from random weights"
    return (f"WARNING: RANDOM WEIGHTS - {why}. The descriptors are meaningless, so the metrics below say nothing "
            "about SALAD; they only show that the pipeline runs.")


def open_bag(reader: BagReader, bag: str, args: argparse.Namespace, stats: ReadStats) -> tuple[Any, Trajectory | None, int]:
    """Check an open bag's topics and load its ground truth: ``(image topic info, ground truth,
    frames expected)``; damage the reader salvaged from is a warning."""
    if reader.salvaged:
        print(f"salad_replay: warning: {bag}: {reader.salvaged}", file=sys.stderr)
    if reader.damaged:
        print(f"salad_replay: warning: {bag}: {reader.damaged}", file=sys.stderr)
    info = reader.require_topic(args.image_topic, IMAGE_TYPES, "image topic")
    if args.gt_topic:
        reader.require_topic(args.gt_topic, POSE_TYPES, "ground-truth topic")
    if args.camera_info_topic:
        reader.require_topic(args.camera_info_topic, ("sensor_msgs/msg/CameraInfo",), "camera_info topic")
    if args.depth_topic:
        reader.require_topic(args.depth_topic, ("sensor_msgs/msg/Image",), "depth topic")
    gt = load_ground_truth(reader, args.gt_topic, args.gt_tum, stats)
    if gt is not None and len(gt) == 0:
        raise ReplayError(f"ground truth {gt.source} has no poses")
    expected = math.ceil(info.count / args.every)
    if args.max_frames:
        expected = min(expected, args.max_frames)
    return info, gt, expected


def bag_frames(reader: BagReader, args: argparse.Namespace, settings: ReplaySettings, stats: ReadStats,
               inputs: PoseInputs) -> Iterator[Frame]:
    """The bag's selected frames, with their camera_info and depth when asked for."""
    if args.camera_info_topic:
        return iter_frames_with_companions(reader, args.image_topic, args.camera_info_topic, args.depth_topic,
                                           args.every, args.max_frames, stats,
                                           int(round(settings.cfg.pose.sync_tolerance * 1e9)), inputs)
    return iter_frames(reader, args.image_topic, args.every, args.max_frames, stats)


def replay_bag(args: argparse.Namespace, settings: ReplaySettings,
               encoder_override: Any = None) -> tuple[ReplayRun, Trajectory | None]:
    """Open the bag, check its topics, load the ground truth and the model, and run every
    selected frame through the pipeline."""
    stats = ReadStats()
    with BagReader(args.bag) as reader:
        info, gt, expected = open_bag(reader, args.bag, args, stats)
        Path(args.out).mkdir(parents=True, exist_ok=True)

        pipeline, model_s = build_pipeline(settings.cfg, encoder_override)
        print(f"model: {pipeline.describe()} (loaded in {model_s:.1f} s)")
        if pipeline.random_weights:
            print(random_weights_warning(settings.cfg.model))
        print(f"replaying {expected} of {info.count} images on {args.image_topic} ({info.msgtype.rsplit('/', 1)[-1]})"
              + (f", ground truth from {gt.source} ({len(gt)} poses)" if gt is not None else ", no ground truth"))

        poses = PoseLookup(gt, settings.tolerance_s, settings.detector_poses)
        inputs = PoseInputs()
        frames = bag_frames(reader, args, settings, stats, inputs)
        records, wall = replay_frames(pipeline, frames, poses, settings.cfg.model.batch_size, expected,
                                      not args.no_progress)
        result = ReplayRun(records, stats, info.count, None if gt is None else gt.source, poses.missing,
                           reader.undecodable, reader.first_undecodable, wall, model_s, pipeline.describe(),
                           pipeline.model_name, pipeline.random_weights, pipeline, companion_summary(inputs),
                           reader.damaged, reader.integrity)
    return result, gt


def check_what_was_read(args: argparse.Namespace, result: ReplayRun, tolerance_s: float) -> None:
    """Warn about damage, undecodable images and frames without a pose; nothing read is an error."""
    stats, records = result.stats, result.records
    if stats.error:
        print(f"salad_replay: warning: {stats.error}; evaluating the {len(records)} frames read before it",
              file=sys.stderr)
    if not records:
        raise ReplayError(f"no decodable image on {args.image_topic}"
                          + (f" ({sum(stats.bad.values())} undecodable: {stats.first_bad})" if stats.bad else ""))
    if stats.bad:
        print(f"salad_replay: warning: skipped {sum(stats.bad.values())} undecodable images "
              f"({', '.join(f'{k}: {v}' for k, v in stats.bad.items())}); first: {stats.first_bad}", file=sys.stderr)
    missing = result.missing_pose
    if missing:
        print(f"salad_replay: warning: {len(missing)} of {len(records)} frames have no ground-truth pose within "
              f"{tolerance_s} s (first at {format_stamp(missing[0])}); their keyframes are not scored",
              file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
