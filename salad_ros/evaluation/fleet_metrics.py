"""Scoring a multi-robot replay: loops within a robot (``intra_robot``) and between robots
(``inter_robot``), on plain data so that the tests can check them by hand.

Each robot's keyframes are numbered 0, 1, 2, ... in its own sequence; a keyframe of the fleet is
named ``(robot_id, number)``. For a query keyframe of robot ``r`` its raw top-k matches (and its
accepted candidates) are split by the matched keyframe's robot:

* **intra_robot**: the matches of ``r``'s own keyframes, scored exactly as a single-robot replay
  (:mod:`.metrics`): a true loop is an earlier own keyframe outside the detector's exclusion
  window within ``radius`` (and ``max_yaw_deg``);
* **inter_robot**: the matches of other robots' keyframes. A true loop is another robot's
  keyframe that was in ``r``'s map when the query was searched (received before it: peers'
  keyframes are never excluded) within ``radius`` (and ``max_yaw_deg``) in the shared world
  frame. A peer keyframe received after the query could not have been found and is no loop.

For each kind: the top-1 prediction is the query's best match of that kind; precision, recall,
AP, max recall at 100 % precision and recall@k follow :mod:`.metrics` (recall@k looks at the
query's raw matches of that kind within the detector's ``top_k``). Queries without a ground-truth
position are left out. Robots' figures are pooled over all their queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..exclusions import SearchExclusions
from . import metrics as M

KINDS = ("intra_robot", "inter_robot")


@dataclass(frozen=True)
class Ref:
    """A matched keyframe of the fleet with the match's score."""

    robot_id: int
    number: int  #: its number in that robot's own sequence
    score: float


@dataclass
class FleetKeyframe:
    """One keyframe of one robot, as the scoring sees it."""

    stamp_ns: int
    position: np.ndarray  #: [3] ground truth in the world frame, NaN = none
    yaw: float = float("nan")
    matches: list[Ref] = field(default_factory=list)  #: raw top-k, best first
    candidates: list[Ref] = field(default_factory=list)  #: accepted loop candidates, best first
    #: Entries of the robot's :attr:`RobotKeyframes.received` in its map when this keyframe was searched.
    peers_known: int = 0


@dataclass
class RobotKeyframes:
    """A robot's keyframes in its own order and the peers' keyframes it received, in order."""

    robot_id: int
    keyframes: list[FleetKeyframe]
    received: list[tuple[int, int]] = field(default_factory=list)  #: (robot_id, number) in arrival order


@dataclass
class KindMetrics:
    """The metrics of one kind of loop (intra or inter) over some queries."""

    summary: dict[str, object]
    curve: M.PRCurve


@dataclass
class QueryOutcome:
    """What one query keyframe gave for one kind of loop."""

    has_loop: bool
    top1: tuple[float, bool] | None  #: (score, correct) of its best match of this kind
    first_hit: int | None  #: 1-based rank (among matches of this kind) of the first true one
    candidates: int
    true_candidates: int


@dataclass
class TruthSettings:
    """What makes a true loop: the detector's exclusions and the radius and heading."""

    exclusions: SearchExclusions
    radius: float
    max_yaw_deg: float | None = None
    detector_poses: bool = False  #: the detector had poses, so its radius exclusion applied


@dataclass
class FleetEvaluation:
    """Pooled and per-robot metrics, and the truth matrices (for the CSVs and the plot)."""

    pooled: dict[str, KindMetrics]  #: kind -> metrics over every robot's queries
    per_robot: dict[int, dict[str, KindMetrics]]
    intra_truth: dict[int, np.ndarray]  #: robot -> [K, K] over its own keyframes
    inter_truth: dict[int, np.ndarray]  #: robot -> [K, L] over its received keyframes
    received_index: dict[int, dict[tuple[int, int], int]]  #: robot -> (peer, number) -> column
    positions: dict[int, np.ndarray]  #: robot -> [K, 3]

    def is_true(self, robot: int, query: int, match_robot: int, match_number: int) -> bool | None:
        """Is the pair a true loop? None when either keyframe has no ground-truth position."""
        pos = self.positions[robot]
        other = self.positions.get(match_robot)
        if other is None or not 0 <= match_number < len(other) or np.isnan(pos[query]).any() \
                or np.isnan(other[match_number]).any():
            return None
        if match_robot == robot:
            return bool(self.intra_truth[robot][query, match_number])
        col = self.received_index[robot].get((match_robot, match_number))
        return col is not None and bool(self.inter_truth[robot][query, col])


def intra_truth(robot: RobotKeyframes, how: TruthSettings) -> np.ndarray:
    """``T[q, j]``: own keyframe ``j`` is a true loop of query ``q`` (as :func:`.metrics.ground_truth`)."""
    kfs = robot.keyframes
    pos = np.array([k.position for k in kfs], dtype=np.float64).reshape(-1, 3)
    stamps = np.array([k.stamp_ns for k in kfs], dtype=np.int64)
    eligible = M.eligible_matrix(stamps, pos if how.detector_poses else None, exclusions=how.exclusions)
    yaws = np.array([k.yaw for k in kfs], dtype=np.float64)
    return M.ground_truth(pos, eligible, how.radius, yaws, how.max_yaw_deg)


def inter_truth(robot: RobotKeyframes, fleet: dict[int, RobotKeyframes], how: TruthSettings) -> np.ndarray:
    """``T[q, i]``: the ``i``-th received peer keyframe is a true loop of query ``q``: it was
    received before ``q`` was searched and lies within the radius (and heading)."""
    kfs = robot.keyframes
    pos = np.array([k.position for k in kfs], dtype=np.float64).reshape(-1, 3)
    yaws = np.array([k.yaw for k in kfs], dtype=np.float64)
    peers = [fleet[r].keyframes[n] for r, n in robot.received]
    ppos = np.array([p.position for p in peers], dtype=np.float64).reshape(-1, 3)
    pyaw = np.array([p.yaw for p in peers], dtype=np.float64)
    known = np.array([k.peers_known for k in kfs], dtype=np.int64)
    held = np.arange(len(peers))[None, :] < known[:, None]
    dist = np.linalg.norm(pos[:, None, :] - ppos[None, :, :], axis=2)
    return held & (dist <= how.radius) & M.headings_within(yaws[:, None], pyaw[None, :], how.max_yaw_deg)


def outcome(refs: Sequence[Ref], candidates: Sequence[Ref], truth_row: np.ndarray, column_of: dict) -> QueryOutcome:
    """One query's outcome for one kind: ``refs``/``candidates`` already of that kind,
    ``column_of[(robot, number)]`` their column in ``truth_row`` (missing: never true)."""
    def true(ref: Ref) -> bool:
        col = column_of.get((ref.robot_id, ref.number))
        return col is not None and 0 <= col < len(truth_row) and bool(truth_row[col])

    top1 = (float(refs[0].score), true(refs[0])) if refs else None
    first_hit = next((i + 1 for i, ref in enumerate(refs) if true(ref)), None)
    return QueryOutcome(bool(truth_row.any()), top1, first_hit, len(candidates), sum(true(c) for c in candidates))


def summarise(outcomes: Sequence[QueryOutcome], queries: int, ks: Sequence[int] = (1, 5, 10)) -> KindMetrics:
    """The report's metrics over ``outcomes`` (the queries with a position) of ``queries`` in all:
    the definitions of :func:`.metrics.evaluate`."""
    positives = sum(o.has_loop for o in outcomes)
    predicted = [o.top1 for o in outcomes if o.top1 is not None]
    curve = M.pr_curve([s for s, _ in predicted], [c for _, c in predicted], positives)
    n_cand = sum(o.candidates for o in outcomes)
    n_true = sum(o.true_candidates for o in outcomes)
    found = sum(1 for o in outcomes if o.true_candidates)
    summary: dict[str, object] = {
        "queries": queries,
        "queries_with_pose": len(outcomes),
        "queries_with_loop": positives,
        "predictions": len(predicted),
        # Without a query that has a loop, recall (and so AP) is undefined, not 0.
        "average_precision": M.average_precision(curve) if positives else None,
        "max_recall_at_100_precision": M.max_recall_at_full_precision(curve) if positives else None,
    }
    for k in ks:
        hits = sum(1 for o in outcomes if o.has_loop and o.first_hit is not None and o.first_hit <= k)
        summary[f"recall_at_{k}"] = hits / positives if positives else None
    summary.update(candidates=n_cand, true_candidates=n_true, detector_precision=n_true / n_cand if n_cand else None,
                   detector_recall=found / positives if positives else None)
    return KindMetrics(summary, curve)


def robot_outcomes(robot: RobotKeyframes, intra: np.ndarray, inter: np.ndarray) -> dict[str, list[QueryOutcome]]:
    """Per kind, the outcomes of the robot's queries that have a position."""
    own = {(robot.robot_id, n): n for n in range(len(robot.keyframes))}
    received = {key: i for i, key in enumerate(robot.received)}
    out: dict[str, list[QueryOutcome]] = {kind: [] for kind in KINDS}
    for q, kf in enumerate(robot.keyframes):
        if np.isnan(kf.position).any():
            continue
        mine = [r for r in kf.matches if r.robot_id == robot.robot_id]
        theirs = [r for r in kf.matches if r.robot_id != robot.robot_id]
        mine_c = [r for r in kf.candidates if r.robot_id == robot.robot_id]
        theirs_c = [r for r in kf.candidates if r.robot_id != robot.robot_id]
        out["intra_robot"].append(outcome(mine, mine_c, intra[q], own))
        out["inter_robot"].append(outcome(theirs, theirs_c, inter[q], received))
    return out


def evaluate_fleet(robots: Sequence[RobotKeyframes], how: TruthSettings,
                   ks: Sequence[int] = (1, 5, 10)) -> FleetEvaluation:
    """Score every robot's queries for both kinds of loop, per robot and pooled."""
    fleet = {r.robot_id: r for r in robots}
    pooled: dict[str, list[QueryOutcome]] = {kind: [] for kind in KINDS}
    per_robot: dict[int, dict[str, KindMetrics]] = {}
    intra: dict[int, np.ndarray] = {}
    inter: dict[int, np.ndarray] = {}
    for r in robots:
        intra[r.robot_id] = intra_truth(r, how)
        inter[r.robot_id] = inter_truth(r, fleet, how)
        outs = robot_outcomes(r, intra[r.robot_id], inter[r.robot_id])
        per_robot[r.robot_id] = {kind: summarise(outs[kind], len(r.keyframes), ks) for kind in KINDS}
        for kind in KINDS:
            pooled[kind].extend(outs[kind])
    total = sum(len(r.keyframes) for r in robots)
    positions = {r.robot_id: np.array([k.position for k in r.keyframes], dtype=np.float64).reshape(-1, 3)
                 for r in robots}
    return FleetEvaluation({kind: summarise(pooled[kind], total, ks) for kind in KINDS}, per_robot, intra, inter,
                           {r.robot_id: {key: i for i, key in enumerate(r.received)} for r in robots}, positions)
