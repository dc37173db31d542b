"""Scoring a replay and writing its report: true loops and metrics per keyframe, the CSVs,
the plots, ``report.json`` and the summary table printed at the end.

Metric definitions: :mod:`salad_ros.evaluation.metrics`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..exclusions import SearchExclusions
from ..io.trajectory import Trajectory, yaw_of
from ..params import to_flat_dict
from . import metrics as M
from .diagnosis import describe_cuts, few_keyframes, keyframe_cuts, no_loop_cause
from .replay_loop import FrameRecord, ReplayRun, ReplaySettings

RECALL_KS = (1, 5, 10)

#: Definitions written into every report beside the numbers.
METRIC_DEFINITIONS = {
    "true_loop": "earlier keyframe outside the detector's exclusion window within radius_m (and max_yaw_deg)",
    "pr_curve": "over the threshold on each query keyframe's top-1 raw match score",
    "average_precision": "area under the step PR curve, sum (R_i - R_i-1) * P_i, no interpolation",
    "max_recall_at_100_precision": "largest recall at a threshold with no false positive",
    "recall_at_k": "queries with a true loop whose top-k raw matches include one (beyond the detector's "
                   "top_k: extended by exact search over the keyframe descriptors)",
    "detector_precision": "accepted candidates that are true loops / accepted candidates",
    "detector_recall": "queries with a true loop that got a true accepted candidate / queries with a loop",
}


@dataclass
class Evaluation:
    keyframe_rows: list[int]  #: record index of each keyframe, in keyframe order
    positions: np.ndarray  #: [K, 3] GT positions (NaN: none)
    yaws: np.ndarray
    truth: np.ndarray | None  #: [K, K] true loops (None without ground truth)
    metrics: M.LoopMetrics | None
    row_of: dict[int, int]  #: keyframe id -> keyframe row
    #: report.json's ``relative_pose`` section (None: no camera_info given) and its samples (.pose_eval)
    relative_pose: dict[str, Any] | None = None
    pose_samples: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Frames the keyframe rules cut, by rule (a ``detector.*`` parameter), most first.
    cuts: dict[str, int] = dataclasses.field(default_factory=dict)
    #: Why no query keyframe has a true loop (None when some do, or without ground truth).
    no_loop_cause: str | None = None


def evaluate_records(records: list[FrameRecord], cfg: Any, has_gt: bool, radius: float, max_yaw: float | None,
                     detector_poses: bool) -> Evaluation:
    """Score the keyframes of a replay: their ground-truth positions and headings, the true-loop
    matrix (exclusions as the detector's, detector poses only when it had them) and the metrics."""
    kf = [i for i, r in enumerate(records) if r.result.is_keyframe]
    row_of = {int(records[i].result.keyframe_id): k for k, i in enumerate(kf)}
    pos = np.full((len(kf), 3), np.nan)
    yaw = np.full(len(kf), np.nan)
    for k, i in enumerate(kf):
        p = records[i].gt_pose
        if p is not None:
            pos[k] = (p.x, p.y, p.z)
            yaw[k] = float(yaw_of(p.qx, p.qy, p.qz, p.qw))
    cuts = keyframe_cuts([r.result for r in records])
    if not has_gt:
        return Evaluation(kf, pos, yaw, None, None, row_of, cuts=cuts)
    d = cfg.detector
    stamps = np.array([records[i].stamp_ns for i in kf], dtype=np.int64)
    eligible = M.eligible_matrix(stamps, pos if detector_poses else None,
                                 exclusions=SearchExclusions.from_detector(d))
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
    cause = None if metrics.queries_with_loop else no_loop_cause(pos, eligible, radius, yaw, max_yaw, d, len(records),
                                                                 cuts)
    return Evaluation(kf, pos, yaw, truth, metrics, row_of, cuts=cuts, no_loop_cause=cause)


def extend_matches(queries: list[M.QueryRecord], desc: np.ndarray, eligible: np.ndarray, k: int,
                   chunk: int = 512) -> None:
    """Append to each query's raw matches the next-best eligible keyframes by exact cosine
    similarity, up to ``k`` in all, so recall@k for k > ``top_k`` can be reported. With the
    default flat index this is exactly what the detector would list with ``top_k = k``."""
    for r0 in range(0, len(queries), chunk):
        sim = desc[r0 : r0 + chunk] @ desc.T
        sim[~eligible[r0 : r0 + chunk]] = -np.inf
        for row, q in zip(sim, queries[r0 : r0 + chunk], strict=True):
            need = k - len(q.match_ids)
            if need <= 0:
                continue
            row[[j for j in q.match_ids if j >= 0]] = -np.inf
            best = np.argsort(-row, kind="stable")[:need]
            best = best[np.isfinite(row[best])]
            q.match_ids = list(q.match_ids) + best.tolist()
            q.match_scores = list(q.match_scores) + row[best].tolist()


def ms_stats(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "p95": 0.0}
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(arr.mean()), 3), "median": round(float(np.median(arr)), 3),
            "p95": round(float(np.percentile(arr, 95)), 3)}


def format_stamp(ns: int) -> str:
    """A stamp in nanoseconds as seconds with nine decimals (exact)."""
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
                w.writerow([format_stamp(c.query_stamp_ns), format_stamp(c.match_stamp_ns), c.query_id, c.match_id,
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
            w.writerow([r.keyframe_id, format_stamp(r.stamp_ns)] + ["" if np.isnan(v) else f"{v:.3f}" for v in p]
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
        seconds = (gt.stamps_ns[::step] - gt.stamps_ns[0]) * 1e-9
        files["trajectory_png"] = str(plots.plot_trajectory(gt.poses[::step, :2], ev.positions[:, :2], edges,
                                                            out / "trajectory.png", title, seconds))
    if ev.keyframe_rows:
        # Long runs: plot every step-th keyframe (the matrix would not fit in memory or pixels).
        step = max(1, math.ceil(len(ev.keyframe_rows) / 1500))
        desc = np.stack([records[i].descriptor for i in ev.keyframe_rows[::step]])
        n = len(ev.keyframe_rows)
        truth = ev.truth[::step, ::step] if ev.truth is not None else np.zeros((len(desc), len(desc)), bool)
        files["similarity_png"] = str(plots.plot_similarity(desc @ desc.T, truth, out / "similarity.png", title,
                                                            step=step, total=n))
    if ev.pose_samples:
        from .pose_plots import plot_pose_errors

        files["relative_pose_png"] = str(plot_pose_errors(ev.pose_samples, out / "relative_pose.png", title))
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
        ("keyframes", describe_cuts(report["keyframes"], report["frames_processed"], report["keyframe_cuts"])),
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
# report.json


def _unscored_summary(records: list[FrameRecord], ev: Evaluation) -> dict[str, Any]:
    """The summary keys of a replay without ground truth: counts only."""
    return {
        "keyframes": len(ev.keyframe_rows), "queries": len(ev.keyframe_rows), "queries_with_pose": 0,
        "queries_with_loop": None, "predictions": None, "average_precision": None,
        "max_recall_at_100_precision": None, "recall_at_1": None, "recall_at_5": None, "recall_at_10": None,
        "candidates": sum(len(records[i].result.candidates) for i in ev.keyframe_rows), "true_candidates": None,
        "detector_precision": None, "detector_recall": None,
    }


def pr_curve_rows(m: M.LoopMetrics | None) -> list[dict[str, float]]:
    if m is None:
        return []
    return [{"threshold": round(float(t), 6), "precision": round(float(p), 6), "recall": round(float(r), 6)}
            for t, p, r in zip(m.curve.thresholds, m.curve.precision, m.curve.recall, strict=True)]


def _timing(run: ReplayRun, batch_size: int) -> dict[str, Any]:
    n, wall, records = len(run.records), run.wall_s, run.records
    return {
        "wall_s": round(wall, 3),
        "frames_per_s": round(n / wall, 3) if wall > 0 else None,
        "model_load_s": round(run.model_load_s, 3),
        "encode_ms_per_frame": ms_stats([r.encode_ms for r in records]),
        "detect_ms_per_frame": ms_stats([r.detect_ms for r in records]),
        "decode_ms_per_frame": ms_stats([r.decode_ms for r in records]),
        "batch_size": batch_size,
    }


def build_report(args: Any, settings: ReplaySettings, run: ReplayRun, ev: Evaluation,
                 files: dict[str, str]) -> dict[str, Any]:
    """The content of ``report.json``; ``args`` are the replay's command-line arguments."""
    cfg, stats = settings.cfg, run.stats
    summary = ev.metrics.summary() if ev.metrics is not None else _unscored_summary(run.records, ev)
    return {
        "bag": str(args.bag),
        "image_topic": args.image_topic,
        "ground_truth": run.ground_truth,
        "params_file": str(settings.params) if settings.params else None,
        "model": run.model,
        "weights": cfg.model.weights or None,
        "random_weights": run.random_weights,
        **summary,
        "image_messages": run.image_messages,
        "image_messages_read": stats.messages,
        "frames_processed": len(run.records),
        "every": args.every,
        "max_frames": args.max_frames,
        "undecodable_images": dict(stats.bad),
        "undecodable_messages": run.undecodable_messages,
        "first_undecodable": stats.first_bad or run.first_undecodable,
        "frames_without_pose": len(run.missing_pose),
        "frames_without_pose_stamps": [format_stamp(s) for s in run.missing_pose[:20]],
        "keyframe_cuts": ev.cuts,
        "no_loop_cause": ev.no_loop_cause,
        "bag_error": stats.error,
        "bag_damage": run.bag_damage,
        "bag_integrity": run.bag_integrity,
        "last_good_message_index": stats.last_good_index,
        "radius_m": args.radius,
        "max_yaw_deg": args.max_yaw,
        "pose_tolerance_s": settings.tolerance_s,
        "detector_poses": settings.detector_poses,
        "matches_per_query": cfg.detector.top_k,
        "metric_definitions": METRIC_DEFINITIONS,
        "pr_curve": pr_curve_rows(ev.metrics),
        "timing": _timing(run, cfg.model.batch_size),
        "relative_pose": ev.relative_pose,
        "config": to_flat_dict(cfg),
        "files": files,
    }


def write_outputs(out: Path, args: Any, settings: ReplaySettings, run: ReplayRun, ev: Evaluation,
                  gt: Trajectory | None) -> tuple[dict[str, Any], Path]:
    """Write the CSVs, the plots (unless ``--no-plots``) and ``report.json`` into ``out``;
    returns the report and its path."""
    cand_csv, kf_csv = write_csvs(out, run.records, ev)
    report = build_report(args, settings, run, ev, {"candidates_csv": str(cand_csv), "keyframes_csv": str(kf_csv)})
    if not args.no_plots:
        title = f"{Path(args.bag).name}: {run.model_name}" + (" (RANDOM WEIGHTS)" if run.random_weights else "")
        report["files"].update(make_plots(out, run.records, ev, gt, title))
    report_path = out / "report.json"
    report_path.write_text(json.dumps(report, indent=2, default=json_default) + "\n")
    return report, report_path


def print_summary(report: dict[str, Any], report_path: Path, ev: Evaluation, radius: float) -> None:
    """The table, what the numbers cannot say, and where the files are."""
    print(format_table(report))
    m = ev.metrics
    if m is None:
        print("no ground truth given (--gt-topic or --gt-tum): metrics not computed")
    elif not m.queries_with_loop:
        print(f"no query keyframe has a true loop within {radius} m, so precision/recall are undefined. "
              f"Likely cause: {ev.no_loop_cause}")
    if few_keyframes(report["keyframes"], report["frames_processed"]) and ev.cuts and ev.no_loop_cause is None:
        rule = next(iter(ev.cuts))
        print(f"few keyframes: {describe_cuts(report['keyframes'], report['frames_processed'], ev.cuts)}"
              + ("" if rule == "time_jump" else f"; detector.{rule} cut the most"))
    if report["random_weights"]:
        print("(random weights: these numbers are not a measure of SALAD)")
    labels = {"candidates_csv": "candidates", "keyframes_csv": "keyframes", "pr_curve_png": "PR curve",
              "trajectory_png": "trajectory", "similarity_png": "similarity", "relative_pose_png": "poses"}
    print(f"{'report':<11} {report_path}")
    for key, label in labels.items():
        if key in report["files"]:
            print(f"{label:<11} {report['files'][key]}")


def json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return str(obj)
