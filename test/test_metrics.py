"""Loop-closure metrics on hand-computed cases, and the one search-exclusion rule
(salad_ros.exclusions) as the ground truth and the keyframe database apply it. No model."""

from __future__ import annotations

import numpy as np
import pytest

from salad_ros.database import KeyframeDatabase
from salad_ros.detector import DetectorConfig
from salad_ros.evaluation import metrics as M
from salad_ros.exclusions import SearchExclusions, eligible
from salad_ros.geometry import Pose

SEC = 1_000_000_000


def test_tiny_case_by_hand():
    """Four keyframes on a line, x = 0, 10, 1, 9.5 m; everything earlier is eligible.

    True loops (radius 2 m): 2~0 (1 m) and 3~1 (0.5 m). Query 1 has none.
    Top-1 raw matches: q1 -> 0 @0.9 (wrong: no loop), q2 -> 1 @0.7 (wrong, 0 is second),
    q3 -> 1 @0.8 (right). Sorted by score: 0.9 F, 0.8 T, 0.7 F, so
    (P, R) = (0, 0), (1/2, 1/2), (1/3, 1/2);  AP = 0.5 * 1/2 = 0.25;  max recall @100% = 0.
    recall@1 = 1/2 (q3 only), recall@2 = 2/2 (q2's second match is 0).
    Accepted candidates: q1 -> 0 (wrong), q2 -> 0 (right), q3 -> 1 (right), q3 -> 2 (wrong):
    precision 2/4, recall 2/2.
    """
    pos = np.array([[0, 0, 0], [10, 0, 0], [1, 0, 0], [9.5, 0, 0]], float)
    stamps = np.arange(4) * 100 * SEC
    eligible = M.eligible_matrix(stamps)
    truth = M.ground_truth(pos, eligible, radius=2.0)
    assert np.argwhere(truth).tolist() == [[2, 0], [3, 1]]

    queries = [
        M.QueryRecord(0),
        M.QueryRecord(1, [0], [0.9], [0], [0.9]),
        M.QueryRecord(2, [1, 0], [0.7, 0.6], [0], [0.6]),
        M.QueryRecord(3, [1, 2, 0], [0.8, 0.5, 0.1], [1, 2], [0.8, 0.5]),
    ]
    m = M.evaluate(queries, truth, np.ones(4, bool), ks=(1, 2, 5))
    assert m.keyframes == 4 and m.queries == 4 and m.queries_with_loop == 2 and m.predictions == 3
    assert m.curve.thresholds.tolist() == [0.9, 0.8, 0.7]
    assert m.curve.precision.tolist() == pytest.approx([0.0, 0.5, 1 / 3])
    assert m.curve.recall.tolist() == pytest.approx([0.0, 0.5, 0.5])
    assert m.average_precision == pytest.approx(0.25)
    assert m.max_recall_at_100_precision == 0.0
    assert m.recall_at_k == pytest.approx({1: 0.5, 2: 1.0, 5: 1.0})
    assert (m.candidates, m.true_candidates) == (4, 2)
    assert m.detector_precision == pytest.approx(0.5) and m.detector_recall == pytest.approx(1.0)
    assert m.top1_correct == {1: False, 2: False, 3: True}
    assert m.has_loop == {0: False, 1: False, 2: True, 3: True}


def test_perfect_ranking_and_ties():
    """Correct top-1 predictions score highest: AP 1 and full recall at 100 % precision. A wrong
    prediction tied with a right one enters at the same threshold (one point, not two)."""
    c = M.pr_curve([0.9, 0.8, 0.3], [True, True, False], positives=2)
    assert M.average_precision(c) == pytest.approx(1.0)
    assert M.max_recall_at_full_precision(c) == pytest.approx(1.0)
    tie = M.pr_curve([0.9, 0.7, 0.7], [True, True, False], positives=3)
    assert tie.thresholds.tolist() == [0.9, 0.7]
    assert tie.precision.tolist() == pytest.approx([1.0, 2 / 3])
    assert tie.recall.tolist() == pytest.approx([1 / 3, 2 / 3])
    assert M.average_precision(tie) == pytest.approx(1 / 3 * 1.0 + 1 / 3 * 2 / 3)
    assert M.max_recall_at_full_precision(tie) == pytest.approx(1 / 3)


def test_no_true_loops_and_missing_poses():
    """Without any true loop recall is undefined (None), not 0; a query without a pose is not
    scored and a keyframe without a pose is never a true match."""
    pos = np.array([[0, 0, 0], [np.nan] * 3, [0.5, 0, 0]], float)
    truth = M.ground_truth(pos, M.eligible_matrix(np.arange(3) * 100 * SEC), radius=2.0)
    assert np.argwhere(truth).tolist() == [[2, 0]]
    qs = [M.QueryRecord(0), M.QueryRecord(1, [0], [0.9]), M.QueryRecord(2, [1, 0], [0.8, 0.7])]
    m = M.evaluate(qs, truth, ~np.isnan(pos).any(axis=1))
    assert m.queries_with_pose == 2 and m.queries_with_loop == 1
    assert m.top1_correct == {2: False}  # its best match (keyframe 1) has no pose
    assert m.recall_at_k[1] == 0.0 and m.recall_at_k[5] == 1.0
    empty = M.evaluate(qs[:2], np.zeros((2, 2), bool), np.ones(2, bool))
    assert empty.average_precision is None and empty.recall_at_k[1] is None
    assert empty.max_recall_at_100_precision is None and empty.detector_recall is None
    none_predicted = M.evaluate([M.QueryRecord(0), M.QueryRecord(1)], truth[:2, :2] | np.array([[0, 0], [1, 0]], bool),
                                np.ones(2, bool))
    assert none_predicted.predictions == 0 and none_predicted.average_precision == 0.0
    assert none_predicted.max_recall_at_100_precision == 0.0 and none_predicted.recall_at_k[1] == 0.0
    nothing = M.evaluate([M.QueryRecord(0)], np.zeros((1, 1), bool), np.ones(1, bool))
    assert nothing.average_precision is None and nothing.max_recall_at_100_precision is None


def test_yaw_condition_wraps_around():
    pos = np.zeros((3, 3))
    yaws = np.radians([179.0, -179.0, 90.0])  # 0 and 1 are 2 degrees apart across +-180
    truth = M.ground_truth(pos, M.eligible_matrix(np.arange(3) * 100 * SEC), 5.0, yaws, max_yaw_deg=10.0)
    assert np.argwhere(truth).tolist() == [[1, 0]]


@pytest.mark.parametrize("recent,window_s,radius", [(0, 0.0, 0.0), (3, 0.0, 0.0), (0, 25.0, 0.0), (2, 12.0, 3.0),
                                                    (0, 0.0, 6.0)])
def test_eligibility_is_the_databases_exclusion_rule(recent, window_s, radius):
    """For every query, the keyframes the database search may return (k = all) are exactly the
    row of eligible_matrix: both apply salad_ros.exclusions.eligible, and the ground truth uses
    the detector's own exclusion window. Every fifth keyframe has no pose (never excluded)."""
    rng = np.random.default_rng(7)
    n, dim = 30, 16
    desc = rng.normal(size=(n, dim)).astype(np.float32)
    stamps = np.cumsum(rng.integers(1, 10, n)) * SEC
    xy = rng.uniform(0, 20, (n, 2))
    poses = [None if i % 5 == 4 else Pose(float(x), float(y), 0.0) for i, (x, y) in enumerate(xy)]
    pos = np.array([[np.nan] * 3 if p is None else [p.x, p.y, p.z] for p in poses])
    ex = SearchExclusions(recent, int(window_s * SEC), radius)
    eligible = M.eligible_matrix(stamps, pos, exclude_recent=recent, exclude_within_ns=int(window_s * SEC),
                                 exclude_radius=radius)
    np.testing.assert_array_equal(M.eligible_matrix(stamps, pos, exclusions=ex), eligible)
    db = KeyframeDatabase(dim)
    for q in range(n):
        ids, _, _ = db.search(desc[q][None], max(1, q), exclude_recent=ex.recent, exclude_within_ns=ex.within_ns,
                              query_stamps_ns=[int(stamps[q])], query_poses=[poses[q]], exclude_radius=ex.radius_m)
        found = sorted(int(i) for i in ids[0] if i >= 0)
        assert found == np.flatnonzero(eligible[q]).tolist(), f"query {q}"
        db.add(desc[q][None], [int(stamps[q])], poses=[poses[q]])


def test_exclusion_rule_by_hand():
    """Query searched when 10 keyframes exist, at t = 100 s and x = 0: ``j < 10 - recent``,
    ``|dt| >= within`` (equality is eligible), distance ``< radius`` excluded (equality is
    eligible, a NaN position never excluded)."""
    ids = np.array([0, 1, 2, 3, 7, 8])
    stamps = np.array([0, 95, 90, 80, 50, 0]) * SEC
    pos = np.array([[50, 0, 0], [50, 0, 0], [50, 0, 0], [2, 0, 0], [np.nan] * 3, [50, 0, 0]], float)
    ex = SearchExclusions(recent=2, within_ns=10 * SEC, radius_m=2.0)
    ok = eligible(ex, ids, stamps, pos, query_count=10, query_stamp_ns=100 * SEC, query_position=np.zeros(3))
    assert ok.tolist() == [True, False, True, True, True, False]
    assert eligible(ex, ids, stamps, pos, query_count=10, query_stamp_ns=None, query_position=None).tolist() == [
        True, True, True, True, True, False]
    none = eligible(SearchExclusions(), ids, stamps, pos, query_count=8, query_stamp_ns=0, query_position=np.zeros(3))
    assert none.tolist() == [True, True, True, True, True, False]  # only "inserted before the query"
    with pytest.raises(ValueError, match=">= 0"):
        SearchExclusions(recent=-1)
    with pytest.raises(TypeError, match="either"):
        M.eligible_matrix(stamps, exclude_recent=1, exclusions=ex)
    cfg = DetectorConfig(exclude_recent_keyframes=4, exclude_recent_s=2.5, exclude_radius_m=1.5)
    assert SearchExclusions.from_detector(cfg) == SearchExclusions(4, 2_500_000_000, 1.5)
