"""Loop-closure metrics against ground-truth poses.

Definitions (every function here works on plain arrays, so the tests can check them by hand):

* **Eligible pair** ``(q, j)``: keyframe ``j`` was inserted before query keyframe ``q`` and is
  outside the detector's exclusion window for ``q`` (:func:`eligible_matrix`, built from
  :func:`salad_ros.exclusions.eligible`, the rule the database applies when it searches).
* **True loop** ``(q, j)``: an eligible pair whose positions are at most ``radius`` metres
  apart and, when ``max_yaw_deg`` is given, whose headings differ by at most that many degrees.
  A query *has a true loop* when any such ``j`` exists. Keyframes without a pose have none.
* **Top-1 prediction**: each query predicts its best raw match (the detector's top-k search
  result before any threshold, consistency check or verification), with that match's score.
  It is *correct* when the match is a true loop of the query.
* **PR curve** over the score threshold ``t``: queries whose top-1 score is ``>= t`` are
  predictions; ``precision = correct / predictions``, ``recall = correct / queries with a true
  loop``. A wrong top-1 on a query that does have a loop is a false positive *and* a miss.
  One point per distinct score, from the highest down (equal scores enter together).
* **Average precision**: area under the step PR curve, ``sum_i (R_i - R_{i-1}) * P_i`` over
  those points with ``R_0 = 0`` (no interpolation; scikit-learn's ``average_precision_score``
  definition). Recall may stop short of 1, so AP <= the best reachable recall.
* **Max recall at 100 % precision**: the largest recall at a threshold with no false positive
  (0 if the highest-scoring prediction is wrong).
* **Recall@k**: over queries with a true loop, the fraction whose top ``k`` raw matches
  include a true loop (k larger than the detector's ``top_k`` sees only ``top_k`` matches).
* **Detector output**: the accepted candidates (after threshold, consistency and verification)
  scored as-is: ``precision`` over candidates, ``recall`` over queries with a true loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from salad_ros.exclusions import SearchExclusions, eligible


@dataclass
class QueryRecord:
    """What the detector said about one query keyframe (ids are keyframe ids = rows of gt)."""

    keyframe_id: int
    #: Raw top-k matches, best first: keyframe ids and scores.
    match_ids: Sequence[int] = field(default_factory=list)
    match_scores: Sequence[float] = field(default_factory=list)
    #: Accepted loop candidates: keyframe ids and scores.
    candidate_ids: Sequence[int] = field(default_factory=list)
    candidate_scores: Sequence[float] = field(default_factory=list)


def eligible_matrix(
    stamps_ns: np.ndarray,
    positions: np.ndarray | None = None,
    *,
    exclude_recent: int = 0,
    exclude_within_ns: int = 0,
    exclude_radius: float = 0.0,
    exclusions: SearchExclusions | None = None,
) -> np.ndarray:
    """``E[q, j]``: may keyframe ``j`` be matched to query keyframe ``q``?

    The keyframe database's search exclusions (:func:`salad_ros.exclusions.eligible`, one rule
    for both) at the moment ``q`` is searched, when only keyframes ``0..q-1`` exist:
    ``j < q - exclude_recent``, ``|stamp_q - stamp_j| >= exclude_within_ns``, and, with
    positions and ``exclude_radius > 0``, the two positions not closer than ``exclude_radius``
    (a missing position never excludes). ``exclusions`` (e.g.
    ``SearchExclusions.from_detector(cfg.detector)``) replaces the three ``exclude_*`` amounts.
    """
    if exclusions is None:
        exclusions = SearchExclusions(int(exclude_recent), int(exclude_within_ns), float(exclude_radius))
    elif exclude_recent or exclude_within_ns or exclude_radius:
        raise TypeError("give either exclusions or the exclude_* amounts, not both")
    stamps = np.asarray(stamps_ns, dtype=np.int64)
    n = len(stamps)
    pos = None if positions is None else np.asarray(positions, dtype=np.float64)
    return eligible(
        exclusions, np.arange(n)[None, :], stamps[None, :], None if pos is None else pos[None, :, :],
        query_count=np.arange(n)[:, None], query_stamp_ns=stamps[:, None],
        query_position=None if pos is None else pos[:, None, :],
    )


def pairwise_distance(positions: np.ndarray) -> np.ndarray:
    """Euclidean distances ``[N, N]`` between rows of ``positions`` (NaN rows give NaN)."""
    p = np.asarray(positions, dtype=np.float64)
    return np.linalg.norm(p[:, None, :] - p[None, :, :], axis=2)


def headings_within(yaws_a: np.ndarray, yaws_b: np.ndarray, max_yaw_deg: float | None) -> np.ndarray:
    """Boolean (broadcast): do headings ``yaws_a`` and ``yaws_b`` [rad] differ by at most
    ``max_yaw_deg`` (wrapped to [0, 180] deg)? All True when ``max_yaw_deg`` is None."""
    a, b = np.asarray(yaws_a, dtype=np.float64), np.asarray(yaws_b, dtype=np.float64)
    if max_yaw_deg is None:
        return np.ones(np.broadcast_shapes(a.shape, b.shape), dtype=bool)
    diff = np.abs(np.angle(np.exp(1j * (a - b))))  # wrapped to [0, pi]
    return np.degrees(diff) <= max_yaw_deg + 1e-9


def ground_truth(
    positions: np.ndarray,
    eligible: np.ndarray,
    radius: float,
    yaws: np.ndarray | None = None,
    max_yaw_deg: float | None = None,
) -> np.ndarray:
    """``T[q, j]``: true loop between query ``q`` and earlier keyframe ``j`` (see module doc)."""
    d = pairwise_distance(positions)
    true = eligible & (d <= radius)  # NaN distances compare False
    if max_yaw_deg is not None:
        if yaws is None:
            raise ValueError("max_yaw_deg needs yaws")
        y = np.asarray(yaws, dtype=np.float64)
        true &= headings_within(y[:, None], y[None, :], max_yaw_deg)
    return true


@dataclass
class PRCurve:
    """Points from the highest threshold down."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    true_positives: np.ndarray
    false_positives: np.ndarray


def pr_curve(scores: Sequence[float], correct: Sequence[bool], positives: int) -> PRCurve:
    """PR curve of predictions ``scores`` (one per query) with correctness ``correct``;
    ``positives`` = number of queries with a true loop (recall's denominator)."""
    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(correct, dtype=bool)
    order = np.argsort(-s, kind="stable")
    s, c = s[order], c[order]
    tp = np.cumsum(c)
    fp = np.cumsum(~c)
    # Keep the last index of each run of equal scores: a threshold admits all of them at once.
    last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, dtype=bool)
    tp, fp, thr = tp[last], fp[last], s[last]
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / positives if positives > 0 else np.full(len(tp), np.nan)
    return PRCurve(thr, precision, recall, tp, fp)


def average_precision(curve: PRCurve) -> float | None:
    """Area under the step PR curve: ``sum (R_i - R_{i-1}) P_i`` with ``R_0 = 0``."""
    if len(curve.recall) == 0:
        return 0.0
    if np.isnan(curve.recall).any():
        return None
    dr = np.diff(np.r_[0.0, curve.recall])
    return float(np.sum(dr * curve.precision))


def max_recall_at_full_precision(curve: PRCurve) -> float | None:
    """Largest recall over thresholds that admit no false positive."""
    if len(curve.recall) and np.isnan(curve.recall).any():
        return None
    clean = curve.false_positives == 0
    return float(curve.recall[clean].max()) if clean.any() else 0.0


@dataclass
class LoopMetrics:
    """Everything :func:`evaluate` computes; :meth:`summary` is the report's flat part."""

    keyframes: int
    queries: int
    queries_with_pose: int
    queries_with_loop: int
    predictions: int
    average_precision: float | None
    max_recall_at_100_precision: float | None
    recall_at_k: dict[int, float | None]
    curve: PRCurve
    candidates: int
    true_candidates: int
    detector_precision: float | None
    detector_recall: float | None
    #: Per query (in ``queries`` order): top-1 correct?, has a true loop?
    top1_correct: dict[int, bool]
    has_loop: dict[int, bool]

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {
            "keyframes": self.keyframes,
            "queries": self.queries,
            "queries_with_pose": self.queries_with_pose,
            "queries_with_loop": self.queries_with_loop,
            "predictions": self.predictions,
            "average_precision": self.average_precision,
            "max_recall_at_100_precision": self.max_recall_at_100_precision,
        }
        for k, v in self.recall_at_k.items():
            out[f"recall_at_{k}"] = v
        out.update(
            candidates=self.candidates,
            true_candidates=self.true_candidates,
            detector_precision=self.detector_precision,
            detector_recall=self.detector_recall,
        )
        return out


def evaluate(
    queries: Sequence[QueryRecord],
    truth: np.ndarray,
    has_pose: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
) -> LoopMetrics:
    """Score the detector's output for ``queries`` against the true-loop matrix ``truth``
    (``[N, N]`` over keyframe ids; ``has_pose[N]``). Queries without a pose are left out."""
    truth = np.asarray(truth, dtype=bool)
    has_pose = np.asarray(has_pose, dtype=bool)
    n = truth.shape[0]
    scored = [q for q in queries if has_pose[q.keyframe_id]]
    has_loop = {q.keyframe_id: bool(truth[q.keyframe_id].any()) for q in scored}
    positives = sum(has_loop.values())

    def is_true(q: int, j: int) -> bool:
        return 0 <= j < n and bool(truth[q, j])

    scores, correct = [], []
    top1: dict[int, bool] = {}
    for q in scored:
        if len(q.match_ids):
            ok = is_true(q.keyframe_id, int(q.match_ids[0]))
            scores.append(float(q.match_scores[0]))
            correct.append(ok)
            top1[q.keyframe_id] = ok
    curve = pr_curve(scores, correct, positives)

    recall_at_k: dict[int, float | None] = {}
    for k in ks:
        if positives == 0:
            recall_at_k[k] = None
            continue
        hits = sum(
            1 for q in scored if has_loop[q.keyframe_id] and any(is_true(q.keyframe_id, int(j)) for j in q.match_ids[:k])
        )
        recall_at_k[k] = hits / positives

    n_cand = sum(len(q.candidate_ids) for q in scored)
    n_true = sum(1 for q in scored for j in q.candidate_ids if is_true(q.keyframe_id, int(j)))
    found = sum(1 for q in scored if any(is_true(q.keyframe_id, int(j)) for j in q.candidate_ids))
    return LoopMetrics(
        keyframes=n,
        queries=len(queries),
        queries_with_pose=len(scored),
        queries_with_loop=positives,
        predictions=len(scores),
        # Without a query that has a loop, recall (and so AP) is undefined, not 0.
        average_precision=average_precision(curve) if positives else None,
        max_recall_at_100_precision=max_recall_at_full_precision(curve) if positives else None,
        recall_at_k=recall_at_k,
        curve=curve,
        candidates=n_cand,
        true_candidates=n_true,
        detector_precision=n_true / n_cand if n_cand else None,
        detector_recall=found / positives if positives else None,
        top1_correct=top1,
        has_loop=has_loop,
    )
