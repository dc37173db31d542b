"""Relative-pose accuracy of a replay against ground truth: the ``relative_pose`` section of
``report.json`` and the numbers behind ``relative_pose.png``.

Definitions:

* **Ground-truth relative pose** of keyframes q (query) and m (match): ``T_m^-1 T_q`` of their
  ground-truth poses at the image stamps (interpolated: linear in position, slerp in rotation,
  between the two samples around the stamp; nearest sample within the pose tolerance at the
  ends), in the frames the estimates are in: base frames when ``camera_to_base`` is set (the
  ground truth is the base's), else camera optical frames (ground-truth poses times
  ``--gt-camera-to-base``). Estimates follow ``X_match = R X_query + t``. The lookup works on
  per-keyframe world poses (:func:`world_poses`, :func:`relative_truth`), so the keyframes may be
  one robot's or two robots' in a shared world frame (:mod:`.fleet_poses`).
* **Errors**: rotation = angle of ``R_est^T R_gt`` (deg); translation = ``|t_est - t_gt|`` (m,
  metric poses); direction = angle between ``t_est`` and ``t_gt`` (deg, direction-only poses,
  pairs at least :data:`MIN_BASELINE_M` apart).
* **Sets**: ``accepted_true_candidates``: the detector's accepted candidates that are true loops,
  with the poses they got during the run (``pose_estimation`` as configured; success = status
  >= 1). ``ground_truth_pairs``: every true-loop pair of keyframes (the replay's true-loop
  definition, whatever the descriptors found), at most ``max_pairs`` evenly sampled, estimated
  again from the stored pose features ``with_depth`` (``auto``: PnP on depth; success = metric,
  status 2) and ``monocular`` (essential matrix, depth ignored; success = status >= 1), so the
  estimator is measured even when the descriptors are random.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..geometry.transforms import angle_between, invert_transform, rotation_angle, transform_from_xyz_quat
from ..io.trajectory import Trajectory
from ..relative_pose import STATUS_DIRECTION, STATUS_METRIC, RelativePose

MIN_BASELINE_M = 0.1
DEFINITIONS = {
    "frame": "estimates and ground truth in base frames when camera_to_base is set, else camera optical frames",
    "rotation_error_deg": "angle of R_est^T R_gt, over successful estimates",
    "translation_error_m": "|t_est - t_gt| over metric estimates (status 2)",
    "direction_error_deg": f"angle between t_est and t_gt over direction-only estimates (status 1), "
                           f"pairs >= {MIN_BASELINE_M} m apart",
    "accepted_true_candidates": "accepted candidates that are true loops, poses as estimated in the run; "
                                "success = status >= 1",
    "ground_truth_pairs": "true-loop keyframe pairs (evenly sampled), from stored features; with_depth: "
                          "success = status 2; monocular (essential matrix): success = status >= 1",
}


@dataclass(frozen=True)
class PoseSample:
    """One estimate against its ground truth (NaN where an error does not apply)."""

    status: int
    rotation_error_deg: float
    translation_error_m: float
    direction_error_deg: float
    rotation_std_deg: float
    translation_std: float


def _slerp(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    q0, q1 = q0 / np.linalg.norm(q0), q1 / np.linalg.norm(q1)
    dot = float(q0 @ q1)
    if dot < 0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + a * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = math.acos(dot)
    return (math.sin((1 - a) * theta) * q0 + math.sin(a * theta) * q1) / math.sin(theta)


def interpolate(gt: Trajectory, stamps_ns: np.ndarray, tolerance_ns: int) -> np.ndarray:
    """float[N, 4, 4] ground-truth transforms at ``stamps_ns`` (NaN where none is within reach)."""
    out = np.full((len(stamps_ns), 4, 4), np.nan)
    s, p = gt.stamps_ns, gt.poses
    for k, t in enumerate(np.asarray(stamps_ns, np.int64)):
        r = int(np.searchsorted(s, t))
        if 0 < r < len(s) and s[r] - s[r - 1] <= 2 * tolerance_ns:  # both neighbours close: interpolate
            a = (t - s[r - 1]) / max(1, s[r] - s[r - 1])
            row = np.r_[(1 - a) * p[r - 1, :3] + a * p[r, :3], _slerp(p[r - 1, 3:], p[r, 3:], float(a))]
            out[k] = transform_from_xyz_quat(row)
            continue
        idx, _ = gt.nearest([t], tolerance_ns)
        if idx[0] >= 0:
            out[k] = transform_from_xyz_quat(p[idx[0]])
    return out


def pose_errors(est: RelativePose | None, truth: np.ndarray) -> PoseSample:
    """Errors of an estimate (None: no estimate, status 0) against a 4x4 ground truth."""
    if est is None:
        return PoseSample(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    rot = math.degrees(rotation_angle(est.rotation.T @ truth[:3, :3])) if est.status > 0 else math.nan
    trans = float(np.linalg.norm(est.translation - truth[:3, 3])) if est.status == STATUS_METRIC else math.nan
    direction = math.nan
    if est.status == STATUS_DIRECTION and np.linalg.norm(truth[:3, 3]) >= MIN_BASELINE_M:
        direction = math.degrees(angle_between(est.translation, truth[:3, 3]))
    return PoseSample(int(est.status), rot, trans, direction, math.degrees(est.rotation_std_rad),
                      est.translation_std_m)


def summarise(samples: list[PoseSample], success_status: int) -> dict[str, Any]:
    """Count, success rate and error statistics (median / p90) of a set of samples."""
    ok = [s for s in samples if s.status >= success_status]

    def stats(values: list[float]) -> dict[str, float | None]:
        v = np.asarray([x for x in values if math.isfinite(x)], np.float64)
        if not v.size:
            return {"count": 0, "median": None, "p90": None}
        return {"count": int(v.size), "median": round(float(np.median(v)), 4),
                "p90": round(float(np.percentile(v, 90)), 4)}

    return {
        "count": len(samples),
        "success": len(ok),
        "success_rate": round(len(ok) / len(samples), 4) if samples else None,
        "status_counts": {str(k): sum(s.status == k for s in samples) for k in (0, 1, 2)},
        "rotation_error_deg": stats([s.rotation_error_deg for s in ok]),
        "translation_error_m": stats([s.translation_error_m for s in ok]),
        "direction_error_deg": stats([s.direction_error_deg for s in ok]),
        "rotation_std_deg": stats([s.rotation_std_deg for s in ok]),
        "translation_std": stats([s.translation_std for s in ok]),
    }


def world_poses(gt: Trajectory, stamps_ns: np.ndarray, mount: np.ndarray | None,
                tolerance_ns: int) -> np.ndarray:
    """float[N, 4, 4]: the ground-truth poses at ``stamps_ns`` of the frame the estimates are in
    (the ground truth's frame, times ``mount`` for camera frames); NaN where there is none.
    Per keyframe of one robot: several robots' keyframes are compared through their world poses."""
    poses = interpolate(gt, np.asarray(stamps_ns, np.int64), tolerance_ns)
    return poses @ mount if mount is not None else poses


def relative_truth(query_world: np.ndarray, match_world: np.ndarray) -> np.ndarray | None:
    """``T_m^-1 T_q``: the query's pose in the match's frame (``X_match = R X_query + t``), from
    two world poses (of one robot or of two in one shared world frame); None when either is unknown."""
    if not (np.isfinite(query_world).all() and np.isfinite(match_world).all()):
        return None
    return invert_transform(match_world) @ query_world


def estimate_frame(camera_to_base: np.ndarray | None,
                   gt_camera_to_base: np.ndarray | None) -> tuple[str, np.ndarray | None] | None:
    """``(frame name, mount for world_poses)`` the estimates are compared in: base frames when
    the pipeline has ``camera_to_base``, else camera optical frames through ``--gt-camera-to-base``;
    None when neither is given (not comparable)."""
    if camera_to_base is not None:
        return "base", None
    if gt_camera_to_base is not None:
        return "camera_optical", gt_camera_to_base
    return None


#: ``ground_truth`` of a section that is not scored for want of a frame to compare in.
NOT_COMPARABLE = ("not comparable: estimates are in camera frames; give --gt-camera-to-base "
                  "(or set camera_to_base)")


def evenly(count: int, at_most: int) -> np.ndarray:
    """Indices of at most ``at_most`` of ``count`` items, evenly spaced, first and last included."""
    if count <= at_most:
        return np.arange(count)
    if at_most <= 0:
        return np.zeros(0, int)
    return np.unique(np.linspace(0, count - 1, at_most).round().astype(int))


def sample_pairs(truth: np.ndarray, max_pairs: int) -> list[tuple[int, int]]:
    """True-loop (query row, match row) pairs, at most ``max_pairs`` evenly spaced in row order."""
    pairs = np.argwhere(truth)
    return [(int(q), int(m)) for q, m in pairs[evenly(len(pairs), max_pairs)]]


@dataclass(frozen=True)
class TruePair:
    """A true-loop pair to estimate again: the pipeline that would (the query's, whose map holds
    both keyframes' pose features), their ids in its map and the ground-truth relative pose."""

    pipeline: Any
    query_id: int
    match_id: int
    truth: np.ndarray


def estimate_pairs(pairs: list[TruePair]) -> dict[str, list[PoseSample]]:
    """``with_depth`` (``auto``) and ``monocular`` (``essential``) samples of every pair."""
    return {name: [pose_errors(p.pipeline.relative_pose(p.query_id, p.match_id, method), p.truth) for p in pairs]
            for name, method in (("with_depth", "auto"), ("monocular", "essential"))}


def scored_sets(candidates: list[PoseSample], pairs: list[TruePair],
                total_pairs: int) -> tuple[dict[str, Any], dict[str, list[PoseSample]]]:
    """The ``accepted_true_candidates`` and ``ground_truth_pairs`` entries of a section (pairs
    estimated again here; ``total_pairs`` true-loop pairs there were) and the samples of each set."""
    samples = {"accepted_true_candidates": candidates, **estimate_pairs(pairs)}
    return {
        "accepted_true_candidates": summarise(candidates, STATUS_DIRECTION),
        "ground_truth_pairs": {
            "pairs": int(total_pairs), "evaluated": len(pairs),
            "with_depth": summarise(samples["with_depth"], STATUS_METRIC),
            "monocular": summarise(samples["monocular"], STATUS_DIRECTION),
        },
    }, samples


def stats_fields(stats: dict[str, Any]) -> dict[str, Any]:
    """A pipeline's :meth:`pose_stats` as the report's fields."""
    return {
        "estimates": stats["estimates"], "status_counts": {str(k): v for k, v in stats["status"].items()},
        "ms_per_candidate": _round(stats["ms_per_candidate"]),
        "feature_ms_per_keyframe": _round(stats["feature_ms_per_keyframe"]),
        "stored_keyframes": stats["stored_keyframes"], "pipeline_input": stats["input"],
    }


def evaluate_relative_poses(pipeline: Any, records: list[Any], ev: Any, gt: Trajectory | None,
                            gt_camera_to_base: np.ndarray | None, *, max_pairs: int = 200,
                            tolerance_ns: int = 100_000_000) -> tuple[dict[str, Any], dict[str, list[PoseSample]]]:
    """The ``relative_pose`` report section of one robot and the samples of each set (for the plot)."""
    section: dict[str, Any] = {**stats_fields(pipeline.pose_stats()), "definitions": DEFINITIONS}
    if gt is None or ev.truth is None:
        return {**section, "ground_truth": "none: no errors computed"}, {}
    frame = estimate_frame(pipeline.camera_to_base, gt_camera_to_base)
    if frame is None:
        return {**section, "ground_truth": NOT_COMPARABLE}, {}
    section["frame"], mount = frame
    world = world_poses(gt, [records[i].stamp_ns for i in ev.keyframe_rows], mount, tolerance_ns)
    kf_ids = [int(records[i].result.keyframe_id) for i in ev.keyframe_rows]
    pairs = [TruePair(pipeline, kf_ids[q], kf_ids[m], t) for q, m in sample_pairs(ev.truth, max_pairs)
             if (t := relative_truth(world[q], world[m])) is not None]
    sets, samples = scored_sets(_candidate_samples(records, ev, world), pairs, int(ev.truth.sum()))
    return {**section, **sets}, samples


def _candidate_samples(records: list[Any], ev: Any, world: np.ndarray) -> list[PoseSample]:
    out = []
    for k, i in enumerate(ev.keyframe_rows):
        for c in records[i].result.candidates:
            j = ev.row_of.get(c.match_id, -1)
            if j >= 0 and ev.truth[k, j] and (t := relative_truth(world[k], world[j])) is not None:
                out.append(pose_errors(c.relative_pose, t))
    return out


def _round(v: float) -> float | None:
    return round(float(v), 3) if math.isfinite(v) else None


def summary_line(section: dict[str, Any] | None, label: str = "relative pose") -> str:
    """One line for the console: success and median errors on the ground-truth pairs (``label``
    names the set, e.g. inter-robot; the timing is left out when the section has none)."""
    if not section:
        return f"{label}: off (no --camera-info-topic)"
    gtp = section.get("ground_truth_pairs")
    if not gtp:
        return f"{label}: {section['estimates']} estimates; {section.get('ground_truth', '')}"

    def med(d: dict[str, Any], key: str, fmt: str) -> str:
        v = d[key]["median"]
        return "n/a" if v is None else format(v, fmt)

    d, m = gtp["with_depth"], gtp["monocular"]
    rate = lambda s: "n/a" if s["success_rate"] is None else f"{100 * s['success_rate']:.0f} %"  # noqa: E731
    ms = section.get("ms_per_candidate")
    return (f"{label} on {gtp['evaluated']} ground-truth loop pairs: with depth {rate(d)} metric, rotation "
            f"{med(d, 'rotation_error_deg', '.2f')} deg, translation {med(d, 'translation_error_m', '.3f')} m "
            f"(medians); monocular {rate(m)}, rotation {med(m, 'rotation_error_deg', '.2f')} deg, direction "
            f"{med(m, 'direction_error_deg', '.1f')} deg" + (f"; {ms} ms per candidate" if ms is not None else ""))
