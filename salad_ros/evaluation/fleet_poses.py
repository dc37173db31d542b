"""Relative poses in a fleet replay: report.json's ``relative_pose`` with an ``intra_robot`` and
an ``inter_robot`` section, each scored as the single-bag section (:mod:`.pose_eval`).

* **Ground truth**: every robot's keyframes get world poses from their own bag's ground truth
  (:func:`.pose_eval.world_poses`); all robots share one world frame, so the true relative pose
  of query q (robot r) and match m (robot s) is ``T_m^-1 T_q`` (:func:`.pose_eval.relative_truth`),
  within a robot or between two.
* **Sets**: ``accepted_true_candidates``: accepted candidates of that kind that are true loops
  (:meth:`.fleet_metrics.FleetEvaluation.is_true`) with the poses they got in the run.
  ``ground_truth_pairs``: true-loop pairs of that kind (the fleet metrics' truth matrices),
  estimated again by the query robot's pipeline from its stored pose features; for an
  inter-robot pair the match's are those its robot sent with the keyframe on the fleet wire
  (at most ``fleet.max_features``), exactly what a back end merging two maps gets.
  ``--pose-pairs`` is split between the kinds: half each, and a kind with fewer true pairs
  leaves the rest to the other; each kind's pairs (all robots' in robot order) evenly sampled.

No rclpy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import pose_eval as P
from .companions import companion_summary
from .fleet_metrics import KINDS, FleetEvaluation
from .fleet_replay import FleetRun, RobotRun

DEFINITIONS = {
    **P.DEFINITIONS,
    "intra_robot": "a query keyframe and an own keyframe of its robot: that robot's pipeline, its own stored features",
    "inter_robot": "a query keyframe of robot r and a keyframe of robot s that r received: r's pipeline, from r's "
                   "features and those s sent with the keyframe (fleet.max_features at most); ground truth "
                   "T_m^-1 T_q of the two robots' poses in the shared world frame, each from its own bag",
    "estimates": "per kind: accepted candidates of that kind that got an estimate in the run (status_counts: per "
                 "status); robots[]: every estimate of that robot's pipeline (also of candidates refused after it)",
    "pose_pairs": "--pose-pairs split between intra_robot and inter_robot: half each, the rest of a kind with fewer "
                  "true pairs to the other; each kind's true pairs (robot by robot) evenly sampled",
    "peer_features": "local features stored per received peer keyframe (as sent on the fleet wire)",
}


@dataclass(frozen=True)
class PairRef:
    """A true-loop pair before its ground truth is looked up: query robot and keyframe number,
    match robot and number, and the match's id in the query robot's map."""

    robot: int
    query: int
    match_robot: int
    match: int
    match_id: int


def keyframe_worlds(run: RobotRun, mount: np.ndarray | None, tolerance_ns: int) -> np.ndarray:
    """float[K, 4, 4]: world poses of the robot's keyframes in its own order (NaN: none)."""
    stamps = np.array([r.stamp_ns for r in run.records if r.result.is_keyframe], np.int64)
    if run.gt is None:
        return np.full((len(stamps), 4, 4), np.nan)
    return P.world_poses(run.gt, stamps, mount, tolerance_ns)


def kind_of(robot: int, match_robot: int) -> str:
    return "intra_robot" if robot == match_robot else "inter_robot"


def own_ids(run: RobotRun) -> list[int]:
    """Map ids of the robot's own keyframes, in its keyframe order."""
    return [int(r.result.keyframe_id) for r in run.records if r.result.is_keyframe]


def true_pair_refs(fleet: FleetRun, ev: FleetEvaluation) -> dict[str, list[PairRef]]:
    """Every true-loop pair of each kind, robot by robot, in (query, match) order."""
    out: dict[str, list[PairRef]] = {kind: [] for kind in KINDS}
    for run in fleet.robots:
        r, ids = run.robot_id, own_ids(run)
        out["intra_robot"] += [PairRef(r, int(q), r, int(m), ids[m]) for q, m in np.argwhere(ev.intra_truth[r])]
        for q, col in np.argwhere(ev.inter_truth[r]):
            s, n = run.received[col]
            out["inter_robot"].append(PairRef(r, int(q), s, n, run.received_ids[col]))
    return out


def split_budget(max_pairs: int, intra: int, inter: int) -> tuple[int, int]:
    """``--pose-pairs`` for (intra, inter): half each (inter gets the odd one), the share a kind
    cannot use goes to the other."""
    a, b = max_pairs // 2, max_pairs - max_pairs // 2
    if intra < a:
        a, b = intra, max_pairs - intra
    elif inter < b:
        a, b = max_pairs - inter, inter
    return min(a, intra), min(b, inter)


def candidate_samples(fleet: FleetRun, ev: FleetEvaluation,
                      worlds: dict[int, np.ndarray]) -> dict[str, list[P.PoseSample]]:
    """Per kind: the accepted true candidates' poses from the run against their ground truth."""
    out: dict[str, list[P.PoseSample]] = {kind: [] for kind in KINDS}
    for run in fleet.robots:
        for rec in run.records:
            r = rec.result
            for c in r.candidates:
                q, s, n = int(r.robot_keyframe_id), int(c.match_robot_id), int(c.match_keyframe_id)
                if not ev.is_true(run.robot_id, q, s, n):
                    continue
                truth = P.relative_truth(worlds[run.robot_id][q], worlds[s][n])
                if truth is not None:
                    out[kind_of(run.robot_id, s)].append(P.pose_errors(c.relative_pose, truth))
    return out


def candidate_counts(fleet: FleetRun) -> dict[str, dict[str, Any]]:
    """Per kind: accepted candidates that got an estimate in the run, and per status."""
    counts = {kind: Counter() for kind in KINDS}
    for run in fleet.robots:
        for rec in run.records:
            for c in rec.result.candidates:
                if c.relative_pose is not None:
                    counts[kind_of(run.robot_id, c.match_robot_id)][int(c.relative_pose.status)] += 1
    return {kind: {"estimates": sum(n.values()), "status_counts": {str(k): n.get(k, 0) for k in (0, 1, 2)}}
            for kind, n in counts.items()}


def peer_features(run: RobotRun) -> dict[str, Any]:
    """Features stored per received keyframe in the robot's pose store: what its inter-robot
    poses are estimated from."""
    counts = [0 if (f := run.pipeline.stored_pose_features(i)) is None else len(f)
              for i in run.received_ids if i >= 0]
    a = np.asarray(counts, np.float64)
    return {"keyframes": len(counts), "with_features": int((a > 0).sum()),
            "per_keyframe": {"mean": round(float(a.mean()), 1) if a.size else 0.0,
                             "min": int(a.min()) if a.size else 0, "max": int(a.max()) if a.size else 0}}


def robot_entry(run: RobotRun) -> dict[str, Any]:
    """One robot's pipeline counters and timings, bad input and the peers' features it holds."""
    return {"robot_id": run.robot_id, **P.stats_fields(run.pipeline.pose_stats()),
            "input_problems": companion_summary(run.inputs), "peer_features": peer_features(run)}


def evaluate_fleet_poses(fleet: FleetRun, ev: FleetEvaluation | None, gt_camera_to_base: np.ndarray | None, *,
                         max_pairs: int = 200, tolerance_ns: int = 100_000_000
                         ) -> tuple[dict[str, Any], dict[str, dict[str, list[P.PoseSample]]]]:
    """The fleet's ``relative_pose`` section and, per kind, the samples of each set (for the plot)."""
    robots = [robot_entry(run) for run in fleet.robots]
    status = Counter()
    for entry in robots:
        status.update({int(k): v for k, v in entry["status_counts"].items()})
    section: dict[str, Any] = {"estimates": sum(status.values()),
                               "status_counts": {str(k): status.get(k, 0) for k in (0, 1, 2)},
                               "robots": robots, "definitions": DEFINITIONS}
    kinds = candidate_counts(fleet)
    frame = estimate_frame(fleet.robots, gt_camera_to_base)
    reason = "none: no errors computed" if ev is None else P.NOT_COMPARABLE if frame is None else None
    if reason is not None:
        return {**section, "ground_truth": reason, **{k: {**kinds[k], "ground_truth": reason} for k in KINDS}}, {}
    section["frame"], mount = frame
    worlds = {run.robot_id: keyframe_worlds(run, mount, tolerance_ns) for run in fleet.robots}
    cands = candidate_samples(fleet, ev, worlds)
    refs = true_pair_refs(fleet, ev)
    budget = dict(zip(KINDS, split_budget(max_pairs, len(refs["intra_robot"]), len(refs["inter_robot"]))))
    pipelines = {run.robot_id: run.pipeline for run in fleet.robots}
    query_ids = {run.robot_id: own_ids(run) for run in fleet.robots}
    samples: dict[str, dict[str, list[P.PoseSample]]] = {}
    for kind in KINDS:
        pairs = []
        for ref in (refs[kind][i] for i in P.evenly(len(refs[kind]), budget[kind])):
            truth = P.relative_truth(worlds[ref.robot][ref.query], worlds[ref.match_robot][ref.match])
            if truth is not None:
                pairs.append(P.TruePair(pipelines[ref.robot], query_ids[ref.robot][ref.query], ref.match_id, truth))
        sets, samples[kind] = P.scored_sets(cands[kind], pairs, len(refs[kind]))
        section[kind] = {**kinds[kind], "frame": section["frame"], **sets}
    return section, samples


def estimate_frame(robots: Sequence[RobotRun],
                   gt_camera_to_base: np.ndarray | None) -> tuple[str, np.ndarray | None] | None:
    """The frame all robots' estimates are compared in (the robots share their parameters, so
    ``camera_to_base`` is the same for all: the first robot's tells)."""
    return P.estimate_frame(robots[0].pipeline.camera_to_base, gt_camera_to_base)


def summary_lines(section: dict[str, Any] | None) -> list[str]:
    """One console line per kind, then the pipelines' timing."""
    if not section:
        return [P.summary_line(None)]
    lines = [P.summary_line(section[kind], f"{kind.replace('_', '-')} relative pose") for kind in KINDS]
    ms = [f"robot {r['robot_id']} {r['ms_per_candidate']}" for r in section["robots"] if r["ms_per_candidate"]]
    if ms:
        lines.append(f"relative pose: ms per candidate: {', '.join(ms)}")
    return lines
