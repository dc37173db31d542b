"""Exclusions per robot and consistency chains per peer in a database holding several robots' keyframes."""

from __future__ import annotations

import numpy as np

from salad_ros.exclusions import SearchExclusions, eligible
from salad_ros.fleet import ModelIdentity, PeerChains, PeerRegistry, SharedKeyframe, encode, fill_cloud, fleet_eligible

SEC = 1_000_000_000


def interleaved(n: int = 10) -> dict[str, np.ndarray]:
    """Database rows of robots 1 and 2 alternating (db ids 0..2n-1): robot, own sequence id,
    stamp (both robots at the same places at the same times) and position."""
    robots = np.tile([1, 2], n)
    seq = np.repeat(np.arange(n), 2)
    stamps = seq * SEC
    positions = np.stack([seq * 1.0, np.zeros(2 * n), np.zeros(2 * n)], axis=1)
    return {"robots": robots, "seq": seq, "stamps": stamps, "positions": positions}


def test_exclusions_hold_within_the_query_robot_only():
    db = interleaved()
    ex = SearchExclusions(recent=3, within_ns=5 * SEC, radius_m=2.5)
    mask = fleet_eligible(ex, db["robots"], db["seq"], db["stamps"], db["positions"], query_robot_id=1,
                          own_count=10, query_stamp_ns=np.int64(10 * SEC), query_position=np.array([0.5, 0, 0]))
    own = db["robots"] == 1
    assert mask[~own].all()  # robot 2's keyframes: recent, close in time and space, all eligible
    # robot 1's own keyframes: exactly what a robot alone with its 10 keyframes would get
    alone = eligible(ex, np.arange(10), np.arange(10) * SEC, db["positions"][own], query_count=10,
                     query_stamp_ns=np.int64(10 * SEC), query_position=np.array([0.5, 0, 0]))
    np.testing.assert_array_equal(mask[own], alone)
    # excluded: within 2.5 m (seq 0..2), strictly within 5 s (6..9), recent (7..9)
    assert mask[own].tolist() == [False] * 3 + [True] * 3 + [False] * 4
    # with db ids instead of own sequence numbers, robot 2's rows would wrongly count as "recent"
    assert not np.array_equal(eligible(ex, np.arange(20), db["stamps"], None, query_count=20, query_stamp_ns=None,
                                       query_position=None)[own], eligible(ex, np.arange(10), None, None, query_count=10,
                                                                           query_stamp_ns=None, query_position=None))


def test_one_robot_alone_is_unchanged():
    rng = np.random.default_rng(0)
    ids = np.arange(50)
    stamps = np.sort(rng.integers(0, 100 * SEC, 50))
    pos = rng.uniform(-20, 20, (50, 3))
    ex = SearchExclusions(recent=4, within_ns=7 * SEC, radius_m=3.0)
    qs, qp = stamps[-1] + SEC, pos[-1]
    np.testing.assert_array_equal(
        fleet_eligible(ex, np.zeros(50, int), ids, stamps, pos, query_robot_id=0, own_count=50,
                       query_stamp_ns=qs, query_position=qp),
        eligible(ex, ids, stamps, pos, query_count=50, query_stamp_ns=qs, query_position=qp))


def test_mask_broadcasts_over_queries_like_eligible():
    db = interleaved(4)
    ex = SearchExclusions(recent=1)
    cand = np.array([[0, 1, 6, 7], [2, 3, 4, 5]])  # db ids of each query's search results
    mask = fleet_eligible(ex, db["robots"][cand], db["seq"][cand], db["stamps"][cand], None, query_robot_id=2,
                          own_count=np.array([[4], [3]]), query_stamp_ns=None, query_position=None)
    # robot 2 (odd db ids) is the query robot: its newest keyframe (seq 3, resp. 2) is excluded
    assert mask.tolist() == [[True, True, True, False], [True, True, True, False]]


def _single_robot_streaks(window: int, sequence: list[list[int]]) -> list[dict[int, int]]:
    """The single-robot consistency rule, written out: a match continues the longest chain of the
    previous query keyframe that ended within ``window`` ids of it; no passing match ends all."""
    prev: dict[int, int] = {}
    out = []
    for ids in sequence:
        cur = {i: 1 + max((s for j, s in prev.items() if abs(j - i) <= window), default=0) for i in ids}
        out.append(cur)
        prev = cur
    return out


def test_peer_chains_match_the_single_robot_rule():
    rng = np.random.default_rng(1)
    sequence = [sorted(set(rng.integers(0, 40, rng.integers(0, 4)).tolist())) for _ in range(200)]
    chains = PeerChains(window=3)
    ours = [chains.update((7, i) for i in ids) for ids in sequence]
    theirs = _single_robot_streaks(3, sequence)
    assert [{k: s for (_, k), s in d.items()} for d in ours] == theirs
    assert max(max(d.values(), default=0) for d in theirs) >= 3  # the sequence does build chains


def test_peer_chains_are_kept_per_robot():
    chains = PeerChains(window=2)
    assert chains.update([(2, 10), (3, 11)]) == {(2, 10): 1, (3, 11): 1}
    # robot 3's keyframe 11 is within the id window of robot 2's 10, but another robot's: no chain
    assert chains.update([(2, 11), (3, 10)]) == {(2, 11): 2, (3, 10): 2}
    assert chains.update([(3, 12)]) == {(3, 12): 3}  # no robot-2 match: robot 2's chain ends
    assert chains.update([(2, 12), (3, 13)]) == {(2, 12): 1, (3, 13): 4}
    chains.reset()
    assert chains.update([(3, 13)]) == {(3, 13): 1}


def test_a_received_peer_keyframe_is_found_at_once_by_a_database_search():
    """Robot 1 receives robot 2's keyframe, inserts it with its origin, and its next query finds it
    although it is the newest row and stamped within the time exclusion; robot 1's own recent
    keyframes stay excluded."""
    from types import SimpleNamespace as NS

    from salad_ros.database import KeyframeDatabase, Origin

    dim, rng = 256, np.random.default_rng(2)
    model = ModelIdentity("m", dim)
    db = KeyframeDatabase(dim, model_name=model.name, robot_id=1, session=11)
    own = rng.normal(size=(5, dim)).astype(np.float32)
    db.add(own, np.arange(5) * SEC)
    place = rng.normal(size=dim).astype(np.float32)
    reg = PeerRegistry(1, 11, model)
    wire = encode(SharedKeyframe(2, 7, 0, 4 * SEC, place, "robot2/cam"), model)
    kf = reg.receive(fill_cloud(NS(header=NS(stamp=NS())), wire, lambda **f: NS(**f)), wire.encoded_size)
    peer_id = int(db.add(kf.descriptor, [kf.stamp_ns], origin=Origin(kf.robot_id, kf.session, [kf.keyframe_id]))[0])
    assert db.get(peer_id).robot_id == 2 and db.get(peer_id).robot_keyframe_id == 0 and db.own_count == 5

    query = place + 0.3 * rng.normal(size=dim).astype(np.float32)
    ids, _, scores = db.search(query[None], k=len(db), exclude_recent=2, exclude_within_ns=3 * SEC,
                               query_stamps_ns=[5 * SEC])
    found = ids[0][ids[0] >= 0]
    assert found[0] == peer_id and scores[0, 0] > 0.9
    assert sorted(found.tolist()) == [0, 1, 2, peer_id]  # own 3, 4: the 2 newest and within 3 s
    # the same rule through the mask on the database's origin columns
    o = db.origins()
    ok = fleet_eligible(SearchExclusions(recent=2, within_ns=3 * SEC), o[:, 0], o[:, 2], db.stamps_ns(), None,
                        query_robot_id=1, own_count=5, query_stamp_ns=np.int64(5 * SEC), query_position=None)
    assert np.flatnonzero(ok).tolist() == sorted(found.tolist())
