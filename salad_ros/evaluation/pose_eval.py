"""Relative-pose accuracy of a replay against ground truth: the ``relative_pose`` section of
``report.json`` and the numbers behind ``relative_pose.png``.

Definitions:

* **Ground-truth relative pose** of keyframes q (query) and m (match): ``T_m^-1 T_q`` of their
  ground-truth poses at the image stamps (interpolated: linear in position, slerp in rotation,
  between the two samples around the stamp; nearest sample within the pose tolerance at the
  ends), in the frames the estimates are in: base frames when ``camera_to_base`` is set (the
  ground truth is the base's), else camera optical frames (ground-truth poses times
  ``--gt-camera-to-base``). Estimates follow ``X_match = R X_query + t``.
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


def keyframe_truth(records: list[Any], ev: Any, gt: Trajectory, camera_to_base: np.ndarray | None,
                   tolerance_ns: int) -> np.ndarray:
    """Per keyframe row: the ground-truth 4x4 transform of the frame the estimates are in."""
    stamps = np.array([records[i].stamp_ns for i in ev.keyframe_rows], np.int64)
    poses = interpolate(gt, stamps, tolerance_ns)
    if camera_to_base is not None:
        poses = poses @ camera_to_base
    return poses


def _relative(world: np.ndarray, q: int, m: int) -> np.ndarray:
    return invert_transform(world[m]) @ world[q]


def sample_pairs(truth: np.ndarray, max_pairs: int) -> list[tuple[int, int]]:
    """True-loop (query row, match row) pairs, at most ``max_pairs`` evenly spaced in row order."""
    pairs = np.argwhere(truth)
    if len(pairs) > max_pairs:
        pairs = pairs[np.unique(np.linspace(0, len(pairs) - 1, max_pairs).round().astype(int))]
    return [(int(q), int(m)) for q, m in pairs]


def evaluate_relative_poses(pipeline: Any, records: list[Any], ev: Any, gt: Trajectory | None,
                            gt_camera_to_base: np.ndarray | None, *, max_pairs: int = 200,
                            tolerance_ns: int = 100_000_000) -> tuple[dict[str, Any], dict[str, list[PoseSample]]]:
    """The ``relative_pose`` report section and the samples of each set (for the plot)."""
    stats = pipeline.pose_stats()
    section: dict[str, Any] = {
        "estimates": stats["estimates"], "status_counts": {str(k): v for k, v in stats["status"].items()},
        "ms_per_candidate": _round(stats["ms_per_candidate"]),
        "feature_ms_per_keyframe": _round(stats["feature_ms_per_keyframe"]),
        "stored_keyframes": stats["stored_keyframes"], "pipeline_input": stats["input"],
        "definitions": DEFINITIONS,
    }
    if gt is None or ev.truth is None:
        return {**section, "ground_truth": "none: no errors computed"}, {}
    base = pipeline.camera_to_base is not None
    mount = None if base else gt_camera_to_base
    if not base and mount is None:
        return {**section, "ground_truth": "not comparable: estimates are in camera frames; give --gt-camera-to-base "
                                           "(or set camera_to_base)"}, {}
    world = keyframe_truth(records, ev, gt, mount, tolerance_ns)
    section["frame"] = "base" if base else "camera_optical"
    samples = {"accepted_true_candidates": _candidate_samples(records, ev, world)}
    pairs = sample_pairs(ev.truth, max_pairs)
    kf_ids = [int(records[i].result.keyframe_id) for i in ev.keyframe_rows]
    for name, method in (("with_depth", "auto"), ("monocular", "essential")):
        samples[name] = [pose_errors(pipeline.relative_pose(kf_ids[q], kf_ids[m], method), _relative(world, q, m))
                         for q, m in pairs if np.isfinite(world[[q, m]]).all()]
    section["accepted_true_candidates"] = summarise(samples["accepted_true_candidates"], STATUS_DIRECTION)
    section["ground_truth_pairs"] = {
        "pairs": int(ev.truth.sum()), "evaluated": len(samples["with_depth"]),
        "with_depth": summarise(samples["with_depth"], STATUS_METRIC),
        "monocular": summarise(samples["monocular"], STATUS_DIRECTION),
    }
    return section, samples


def _candidate_samples(records: list[Any], ev: Any, world: np.ndarray) -> list[PoseSample]:
    out = []
    for k, i in enumerate(ev.keyframe_rows):
        for c in records[i].result.candidates:
            j = ev.row_of.get(c.match_id, -1)
            if j >= 0 and ev.truth[k, j] and np.isfinite(world[[k, j]]).all():
                out.append(pose_errors(c.relative_pose, _relative(world, k, j)))
    return out


def _round(v: float) -> float | None:
    return round(float(v), 3) if math.isfinite(v) else None


def summary_line(section: dict[str, Any] | None) -> str:
    """One line for the console: success and median errors on the ground-truth pairs."""
    if not section:
        return "relative pose: off (no --camera-info-topic)"
    gtp = section.get("ground_truth_pairs")
    if not gtp:
        return f"relative pose: {section['estimates']} estimates; {section.get('ground_truth', '')}"

    def med(d: dict[str, Any], key: str, fmt: str) -> str:
        v = d[key]["median"]
        return "n/a" if v is None else format(v, fmt)

    d, m = gtp["with_depth"], gtp["monocular"]
    rate = lambda s: "n/a" if s["success_rate"] is None else f"{100 * s['success_rate']:.0f} %"  # noqa: E731
    return (f"relative pose on {gtp['evaluated']} ground-truth loop pairs: with depth {rate(d)} metric, rotation "
            f"{med(d, 'rotation_error_deg', '.2f')} deg, translation {med(d, 'translation_error_m', '.3f')} m "
            f"(medians); monocular {rate(m)}, rotation {med(m, 'rotation_error_deg', '.2f')} deg, direction "
            f"{med(m, 'direction_error_deg', '.1f')} deg; {section['ms_per_candidate']} ms per candidate")
