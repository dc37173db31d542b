"""The outputs of a fleet replay (several bags): ``report.json``, ``candidates.csv``,
``keyframes.csv``, the plots and the summary table printed at the end.

``report.json`` holds ``robots`` (per robot: bag, counts, its own intra/inter metrics and fleet
counters), ``intra_robot`` and ``inter_robot`` (pooled over all robots, see
:mod:`.fleet_metrics`), ``fleet`` (what was shared: bytes and features per keyframe, rejected
messages), ``relative_pose`` (with camera_info: intra- and inter-robot pose errors, see
:mod:`.fleet_poses`; else None), ``settings``, ``timing`` and ``files``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..params import to_flat_dict
from .companions import companion_summary
from .fleet_metrics import KINDS, FleetEvaluation
from .fleet_replay import FleetRun, RobotRun
from .replay_loop import ReplaySettings
from .report import METRIC_DEFINITIONS, RECALL_KS, format_stamp, json_default, ms_stats, pr_curve_rows

#: Definitions written beside the numbers, in addition to the single-robot ones.
FLEET_DEFINITIONS = {
    "intra_robot": "each query keyframe's raw matches and accepted candidates of its own robot's keyframes, "
                   "scored as a single-robot replay (true loop: an earlier own keyframe outside the exclusion window "
                   "within radius_m and max_yaw_deg)",
    "inter_robot": "each query keyframe's raw matches and accepted candidates of other robots' keyframes; true loop: "
                   "another robot's keyframe in the query robot's map when it was searched (received before it) "
                   "within radius_m and max_yaw_deg in the shared world frame",
    "recall_at_k": "queries with a true loop whose top-k raw matches of that kind include one (within the "
                   "detector's top_k: raw matches are not extended in a fleet replay)",
    "bytes_per_keyframe": "serialized size (CDR) of each keyframe's fleet message, as on the topic",
}


def _unscored(fleet: FleetRun, kind: str) -> dict[str, Any]:
    """A kind's summary without ground truth: counts only."""
    def of_kind(run: RobotRun, c: Any) -> bool:
        return (c.match_robot_id == run.robot_id) == (kind == "intra_robot")

    cands = sum(1 for run in fleet.robots for r in run.records for c in r.result.candidates if of_kind(run, c))
    out: dict[str, Any] = {"queries": sum(_keyframes(r) for r in fleet.robots), "queries_with_pose": 0}
    out.update(dict.fromkeys(("queries_with_loop", "predictions", "average_precision", "max_recall_at_100_precision",
                              *(f"recall_at_{k}" for k in RECALL_KS)), None))
    out.update(candidates=cands, true_candidates=None, detector_precision=None, detector_recall=None)
    return out


def _keyframes(run: RobotRun) -> int:
    return sum(1 for r in run.records if r.result.is_keyframe)


def _robot_entry(run: RobotRun, ev: FleetEvaluation | None) -> dict[str, Any]:
    cands = [c for r in run.records for c in r.result.candidates]
    inter = sum(1 for c in cands if c.match_robot_id != run.robot_id)
    entry: dict[str, Any] = {
        "robot_id": run.robot_id, "bag": run.bag, "ground_truth": None if run.gt is None else run.gt.source,
        "image_messages": run.image_messages, "frames": len(run.records), "keyframes": _keyframes(run),
        "candidates": len(cands), "intra_robot_candidates": len(cands) - inter, "inter_robot_candidates": inter,
        "keyframes_sent": len(run.sent), "keyframes_received": len(run.received),
        "frames_without_pose": len(run.poses.missing), "undecodable_images": dict(run.stats.bad),
        "undecodable_messages": run.undecodable_messages, "bag_error": run.stats.error, "bag_damage": run.bag_damage,
        "pose_input_problems": companion_summary(run.inputs),
    }
    for kind in KINDS:
        entry[kind] = None if ev is None else ev.per_robot[run.robot_id][kind].summary
    entry["fleet_member"] = run.member.stats()
    return entry


def _stats(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "min": 0.0, "max": 0.0}
    a = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(a.mean()), 1), "min": round(float(a.min()), 1), "max": round(float(a.max()), 1)}


def fleet_section(fleet: FleetRun, settings: ReplaySettings) -> dict[str, Any]:
    """What the robots shared: keyframes, bytes and features per keyframe, rejected messages."""
    sent = [s for run in fleet.robots for s in run.sent]
    rejected: dict[str, int] = {}
    for run in fleet.robots:
        for kind, n in run.rejected.items():
            rejected[kind] = rejected.get(kind, 0) + n
    f = settings.cfg.fleet
    return {
        "robots": len(fleet.robots),
        "keyframes_shared": len(sent),
        "keyframes_received": sum(len(run.received) for run in fleet.robots),
        "bytes_total": sum(s.nbytes for s in sent),
        "bytes_per_keyframe": _stats([s.nbytes for s in sent]),
        "features_per_keyframe": _stats([s.features for s in sent]),
        "rejected_messages": sum(rejected.values()),
        "rejected": rejected,
        "share_features": f.share_features,
        "max_features": f.max_features,
        "max_message_bytes": f.max_message_bytes,
    }


def _timing(fleet: FleetRun, batch_size: int) -> dict[str, Any]:
    records = [r for run in fleet.robots for r in run.records]
    wall = fleet.wall_s
    return {
        "wall_s": round(wall, 3),
        "frames_per_s": round(len(records) / wall, 3) if wall > 0 else None,
        "model_load_s": round(fleet.model_load_s, 3),
        "encode_ms_per_frame": ms_stats([r.encode_ms for r in records]),
        "detect_ms_per_frame": ms_stats([r.detect_ms for r in records]),
        "decode_ms_per_frame": ms_stats([r.decode_ms for r in records]),
        "share_ms_per_keyframe": ms_stats([1e3 * s for run in fleet.robots for s in run.share_s]),
        "batch_size": batch_size,
    }


def _settings(args: Any, settings: ReplaySettings, fleet: FleetRun) -> dict[str, Any]:
    cfg = settings.cfg
    return {
        "bags": [str(b) for b in args.bags], "robot_ids": [run.robot_id for run in fleet.robots],
        "image_topic": args.image_topic, "gt_topic": args.gt_topic, "camera_info_topic": args.camera_info_topic,
        "depth_topic": args.depth_topic, "params_file": str(settings.params) if settings.params else None,
        "model": fleet.model, "weights": cfg.model.weights or None, "random_weights": fleet.random_weights,
        "every": args.every, "max_frames": args.max_frames, "radius_m": args.radius, "max_yaw_deg": args.max_yaw,
        "pose_tolerance_s": settings.tolerance_s, "detector_poses": settings.detector_poses,
        "matches_per_query": cfg.detector.top_k, "metric_definitions": {**METRIC_DEFINITIONS, **FLEET_DEFINITIONS},
        "config": {k: v for k, v in to_flat_dict(cfg).items() if k != "robot_id"},
    }


def build_report(args: Any, settings: ReplaySettings, fleet: FleetRun, ev: FleetEvaluation | None,
                 files: dict[str, str], relative_pose: dict[str, Any] | None = None) -> dict[str, Any]:
    """The content of ``report.json`` of a fleet replay."""
    report: dict[str, Any] = {"robots": [_robot_entry(run, ev) for run in fleet.robots]}
    for kind in KINDS:
        report[kind] = _unscored(fleet, kind) if ev is None else dict(ev.pooled[kind].summary)
    report["fleet"] = fleet_section(fleet, settings)
    report["relative_pose"] = relative_pose
    report["settings"] = _settings(args, settings, fleet)
    report["timing"] = _timing(fleet, settings.cfg.model.batch_size)
    report["pr_curves"] = {kind: pr_curve_rows(None if ev is None else ev.pooled[kind]) for kind in KINDS}
    report["files"] = files
    return report


def _correct(ev: FleetEvaluation | None, robot: int, q: int, match_robot: int, match: int) -> tuple[str, str]:
    """The CSV's ``correct`` and ``distance_m`` of a pair ('' when unknown)."""
    if ev is None:
        return "", ""
    ok = ev.is_true(robot, q, match_robot, match)
    if ok is None:
        return "", ""
    d = np.linalg.norm(ev.positions[robot][q] - ev.positions[match_robot][match])
    return str(ok).lower(), f"{d:.3f}"


def write_csvs(out: Path, fleet: FleetRun, ev: FleetEvaluation | None) -> tuple[Path, Path]:
    """``candidates.csv`` (accepted candidates of every robot) and ``keyframes.csv``; keyframes
    are named by robot id and their number in that robot's sequence."""
    cand_path, kf_path = out / "candidates.csv", out / "keyframes.csv"
    with cand_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["robot_id", "query_stamp", "match_stamp", "query_keyframe", "match_robot_id", "match_keyframe",
                    "kind", "score", "rank", "verified", "inliers", "correct", "distance_m"])
        for run in fleet.robots:
            for rec in run.records:
                r = rec.result
                for c in r.candidates:
                    kind = "intra" if c.match_robot_id == run.robot_id else "inter"
                    verified = "" if c.verified is None else str(bool(c.verified)).lower()
                    w.writerow([run.robot_id, format_stamp(c.query_stamp_ns), format_stamp(c.match_stamp_ns),
                                r.robot_keyframe_id, c.match_robot_id, c.match_keyframe_id, kind, f"{c.score:.6f}",
                                c.rank, verified, c.inliers,
                                *_correct(ev, run.robot_id, int(r.robot_keyframe_id), c.match_robot_id,
                                          c.match_keyframe_id)])
    with kf_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["robot_id", "keyframe", "stamp", "x", "y", "z", "yaw_deg", "peers_keyframes_held",
                    "has_intra_loop", "has_inter_loop", "top1_robot_id", "top1_keyframe", "top1_score", "candidates"])
        for run in fleet.robots:
            for rec, known in zip(run.records, run.peers_known):
                r = rec.result
                if not r.is_keyframe:
                    continue
                w.writerow([run.robot_id, r.robot_keyframe_id, format_stamp(r.stamp_ns), *_pose_cells(rec.gt_pose),
                            known, *_has_loops(ev, run.robot_id, int(r.robot_keyframe_id), rec.gt_pose),
                            *_top1_cells(r), len(r.candidates)])
    return cand_path, kf_path


def _pose_cells(p: Any) -> list[str]:
    if p is None:
        return [""] * 4
    from ..io.trajectory import yaw_of

    return [f"{p.x:.3f}", f"{p.y:.3f}", f"{p.z:.3f}", f"{math.degrees(float(yaw_of(p.qx, p.qy, p.qz, p.qw))):.1f}"]


def _has_loops(ev: FleetEvaluation | None, robot: int, q: int, pose: Any) -> list[str]:
    if ev is None or pose is None:
        return ["", ""]
    return [str(bool(ev.intra_truth[robot][q].any())).lower(), str(bool(ev.inter_truth[robot][q].any())).lower()]


def _top1_cells(r: Any) -> list[str]:
    if not r.matches:
        return ["", "", ""]
    m = r.matches[0]
    return [str(m.robot_id), str(m.robot_keyframe_id), f"{m.score:.6f}"]


def make_plots(out: Path, fleet: FleetRun, ev: FleetEvaluation | None, title: str) -> dict[str, str]:
    """``fleet_trajectories.png`` (with ground truth) and a PR curve per kind of loop."""
    from . import plots

    files: dict[str, str] = {}
    if ev is not None:
        for kind in KINDS:
            m = ev.pooled[kind]
            name = f"pr_curve_{kind}.png"
            files[f"pr_curve_{kind}_png"] = str(plots.plot_pr_curve(
                m.curve, m.summary["average_precision"], m.summary["max_recall_at_100_precision"], out / name,
                f"{title} - {kind.replace('_', ' ')}"))
    if any(run.gt is not None for run in fleet.robots):
        paths, keyframes, intra, inter = [], [], [], []
        for run in fleet.robots:
            gt = run.gt
            step = max(1, len(gt) // 5000) if gt is not None else 1
            paths.append((run.robot_id, gt.poses[::step, :2] if gt is not None else np.zeros((0, 2))))
            keyframes.append((run.robot_id, _keyframe_xy(run)))
        xy = dict(keyframes)
        for run in fleet.robots:
            for rec in run.records:
                for c in rec.result.candidates:
                    q, m = xy[run.robot_id], xy.get(c.match_robot_id)
                    qi, mi = int(rec.result.robot_keyframe_id), c.match_keyframe_id
                    if m is None or not 0 <= mi < len(m):
                        continue
                    ok = None if ev is None else ev.is_true(run.robot_id, qi, c.match_robot_id, mi)
                    edge = ((run.robot_id, qi), q[qi], m[mi], ok)
                    (intra if c.match_robot_id == run.robot_id else inter).append(edge)
        files["fleet_trajectories_png"] = str(plots.plot_fleet_trajectories(
            paths, keyframes, intra, inter, out / "fleet_trajectories.png", title))
    return files


def _keyframe_xy(run: RobotRun) -> np.ndarray:
    """The robot's keyframes' ground-truth x-y, in its keyframe order (NaN: none)."""
    rows = [(p.x, p.y) if (p := rec.gt_pose) is not None else (np.nan, np.nan)
            for rec in run.records if rec.result.is_keyframe]
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


def write_outputs(out: Path, args: Any, settings: ReplaySettings, fleet: FleetRun, ev: FleetEvaluation | None,
                  poses: tuple[dict[str, Any], dict[str, Any]] | None = None) -> tuple[dict[str, Any], Path]:
    """Write the CSVs, the plots (unless ``--no-plots``) and ``report.json`` into ``out``;
    ``poses``: the ``relative_pose`` section and its samples per kind (None: no camera_info)."""
    cand_csv, kf_csv = write_csvs(out, fleet, ev)
    files = {"candidates_csv": str(cand_csv), "keyframes_csv": str(kf_csv)}
    if not args.no_plots:
        title = f"{len(fleet.robots)} robots: {fleet.model_name}" + (" (RANDOM WEIGHTS)" if fleet.random_weights else "")
        files.update(make_plots(out, fleet, ev, title))
        if poses is not None and poses[1]:
            from .pose_plots import plot_pose_error_rows

            rows = [(kind.replace("_", "-"), poses[1][kind]) for kind in KINDS]
            files["relative_pose_png"] = str(plot_pose_error_rows(rows, out / "relative_pose.png", title))
    report = build_report(args, settings, fleet, ev, files, None if poses is None else poses[0])
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=2, default=json_default) + "\n")
    return report, path


def format_table(report: dict[str, Any]) -> str:
    """Intra- against inter-robot metrics, then per robot and what the fleet shared."""
    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    a, b = report["intra_robot"], report["inter_robot"]
    rows = [("", "intra_robot", "inter_robot")]
    for key, label in (("queries_with_loop", "queries with a true loop"), ("average_precision", "average precision"),
                       ("max_recall_at_100_precision", "max recall @ 100% precision"), ("recall_at_1", "recall@1"),
                       ("candidates", "accepted candidates"), ("true_candidates", "  of them true"),
                       ("detector_precision", "detector precision"), ("detector_recall", "detector recall")):
        rows.append((label, fmt(a[key]), fmt(b[key])))
    width = max(len(r[0]) for r in rows)
    line = "-" * (width + 30)
    lines = [line] + [f"{n:<{width}}  {x:>12}  {y:>12}" for n, x, y in rows] + [line]
    for r in report["robots"]:
        lines.append(f"robot {r['robot_id']}: {r['frames']} frames, {r['keyframes']} keyframes, {r['candidates']} "
                     f"candidates ({r['inter_robot_candidates']} inter-robot), {r['keyframes_received']} keyframes "
                     f"received  [{r['bag']}]")
    f, t = report["fleet"], report["timing"]
    lines.append(f"fleet: {f['keyframes_shared']} keyframes shared, {f['bytes_per_keyframe']['mean']:.0f} bytes per "
                 f"keyframe (max {f['bytes_per_keyframe']['max']:.0f}, {f['features_per_keyframe']['mean']:.0f} "
                 f"features), {f['bytes_total']} bytes in all, {f['rejected_messages']} rejected")
    lines.append(f"throughput: {t['frames_per_s'] or 0:.2f} frames/s ({t['wall_s']:.1f} s), encode / detect "
                 f"{t['encode_ms_per_frame']['mean']:.1f} / {t['detect_ms_per_frame']['mean']:.1f} ms per frame")
    return "\n".join(lines)


def print_summary(report: dict[str, Any], path: Path) -> None:
    """The table, what the numbers cannot say, and where the files are."""
    print(format_table(report))
    if report["intra_robot"]["queries_with_loop"] is None:
        print("no ground truth given (--gt-topic): metrics not computed")
    elif not report["inter_robot"]["queries_with_loop"]:
        print("no query keyframe has a true loop with another robot's keyframe received before it: inter-robot "
              "precision/recall are undefined")
    if report["settings"]["random_weights"]:
        print("(random weights: these numbers are not a measure of SALAD)")
    if report.get("relative_pose") is not None:
        from .fleet_poses import summary_lines

        print("\n".join(summary_lines(report["relative_pose"])))
    print(f"{'report':<11} {path}")
    for key, value in report["files"].items():
        print(f"{key.removesuffix('_csv').removesuffix('_png'):<11} {value}")
