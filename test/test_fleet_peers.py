"""Peer registry (admission, deduplication, counters) and the catch-up protocol, on a fake clock."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pytest

from salad_ros.fleet import (
    KINDS,
    CatchUpRequest,
    FleetMessageError,
    ModelIdentity,
    PeerRegistry,
    ReplayScheduler,
    RequestTimer,
    SharedFeatures,
    SharedKeyframe,
    TokenBucket,
    encode,
    fill_cloud,
)
from salad_ros.fleet.peers import ID_END

D = 64
MODEL = ModelIdentity("test-model", D)
SEC = 1_000_000_000


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def kf(robot: int, kid: int, session: int = 7, stamp_ns: int | None = None, n_features: int = 0) -> SharedKeyframe:
    rng = np.random.default_rng(robot * 100003 + kid)
    feats = None
    if n_features:
        feats = SharedFeatures(rng.uniform(-1, 1, (n_features, 2)).astype(np.float32),
                               rng.integers(0, 256, (n_features, 32), dtype=np.uint8), None, 200.0)
    return SharedKeyframe(robot, session, kid, (100 + kid) * SEC if stamp_ns is None else stamp_ns,
                          rng.normal(size=D), f"robot{robot}/camera", None, feats)


def msg(k: SharedKeyframe, model: ModelIdentity = MODEL) -> tuple[NS, int]:
    """(PointCloud2-like message, its bytes on the wire)."""
    wire = encode(k, model)
    cloud = NS(header=NS(stamp=NS(sec=0, nanosec=0), frame_id=""))
    return fill_cloud(cloud, wire, lambda **f: NS(**f)), wire.encoded_size


def registry(robot: int = 1, session: int = 11, clock: Clock | None = None) -> PeerRegistry:
    return PeerRegistry(robot, session, MODEL, clock=clock or Clock(), rate_window_s=10.0)


def rejected_kind(reg: PeerRegistry, k: SharedKeyframe, model: ModelIdentity = MODEL) -> str:
    with pytest.raises(FleetMessageError) as err:
        reg.receive(*msg(k, model))
    return err.value.kind


def test_accepts_peers_keyframes_and_counts_them():
    clock = Clock()
    reg = registry(clock=clock)
    for i in range(3):
        got = reg.receive(*msg(kf(2, i)))
        assert got is not None and (got.robot_id, got.keyframe_id) == (2, i)
    reg.receive(*msg(kf(3, 0)))
    clock.t += 4.0
    s = reg.stats()
    assert s["peers_seen"] == 2 and s["keyframes_received"] == 4
    assert s["peer.2.keyframes"] == 3 and s["peer.2.last_keyframe_id"] == 2 and s["peer.2.age_s"] == 4.0
    assert s["rejected"] == 0 and all(s[f"rejected.{k}"] == 0 for k in KINDS)
    assert s["bytes_in_per_s"] == pytest.approx(s["bytes_in_total"] / 10.0)
    clock.t += 10.0  # the rate window has passed
    reg.sent(1000)
    s = reg.stats()
    assert s["bytes_in_per_s"] == 0.0 and s["bytes_out_per_s"] == 100.0 and s["bytes_out_total"] == 1000


def test_every_bad_input_kind_is_rejected_counted_and_not_recorded():
    reg = registry(robot=1, session=11)
    reg.receive(*msg(kf(2, 5)))
    cases = {
        "duplicate": kf(2, 5),
        "out_of_order": kf(2, 6, stamp_ns=(100 + 4) * SEC),  # newer id, older stamp than id 5
        "own_robot_id": kf(1, 0, session=12),  # a peer misconfigured with our id
        "other_model": kf(2, 9),
    }
    for kind, k in cases.items():
        assert rejected_kind(reg, k, ModelIdentity("other", D) if kind == "other_model" else MODEL) == kind
    bad, size = msg(kf(2, 10))
    bad.data = bad.data[:-3]
    with pytest.raises(FleetMessageError) as err:
        reg.receive(bad, size)
    assert err.value.kind == "malformed" and err.value.robot_id is None  # unreadable: no peer to blame
    s = reg.stats()
    assert all(s[f"rejected.{k}"] == 1 for k in KINDS) and s["rejected"] == 5
    assert s["peer.2.rejected"] == 3 and s["peer.2.keyframes"] == 1  # own id and malformed not blamed on 2
    assert "peer.1.keyframes" not in s
    assert list(reg.missing()) == [(2, 7, 0, 5), (2, 7, 6, ID_END)]  # only keyframe 5 was recorded
    assert reg.receive(*msg(kf(2, 6))) is not None  # the rejected ids were not recorded


def test_own_messages_coming_back_are_ignored_not_rejected():
    reg = registry(robot=1, session=11)
    assert reg.receive(*msg(kf(1, 0, session=11))) is None
    s = reg.stats()
    assert s["own_echoes"] == 1 and s["rejected"] == 0 and s["keyframes_received"] == 0
    assert s["bytes_in_total"] == 0  # our own traffic is counted once, as bytes out


def test_late_keyframes_fill_gaps_and_stamps_must_fit_between_neighbours():
    reg = registry()
    reg.receive(*msg(kf(2, 10)))
    assert reg.behind()  # ids 0..9 of robot 2 are missing
    reg.receive(*msg(kf(2, 3)))  # a catch-up answer after a newer live keyframe: accepted
    assert reg.stats()["peer.2.late"] == 1
    assert rejected_kind(reg, kf(2, 5, stamp_ns=(100 + 11) * SEC)) == "out_of_order"  # after id 10's stamp
    assert rejected_kind(reg, kf(2, 4, stamp_ns=(100 + 2) * SEC)) == "out_of_order"  # before id 3's stamp
    for i in (0, 1, 2, 4, 5, 6, 7, 8, 9):
        reg.receive(*msg(kf(2, i)))
    assert not reg.behind()
    assert list(reg.missing()) == [(2, 7, 11, ID_END)]


def test_a_peer_that_restarts_with_its_map_is_not_duplicated():
    """Robot 2 stops and restarts with its saved map: same session, ids continue; whatever it
    re-publishes is dropped, nothing is added twice."""
    reg = registry()
    for i in range(10):
        reg.receive(*msg(kf(2, i)))
    for i in range(10):  # a restarted peer that re-publishes its whole map
        assert rejected_kind(reg, kf(2, i)) == "duplicate"
    for i in range(10, 13):
        assert reg.receive(*msg(kf(2, i))) is not None
    s = reg.stats()
    assert s["peer.2.keyframes"] == 13 and s["rejected.duplicate"] == 10 and s["peer.2.sessions"] == 1


def test_a_peer_that_starts_a_new_map_is_a_new_lineage():
    reg = registry()
    for i in range(3):
        reg.receive(*msg(kf(2, i, session=7)))
    got = reg.receive(*msg(kf(2, 0, session=8, stamp_ns=500 * SEC)))  # ids start again in a new session
    assert got is not None and got.session == 8
    assert reg.stats()["peer.2.sessions"] == 2


def test_request_round_trip_and_malformed_requests():
    req = CatchUpRequest.of(1, 11, [(2, 7, 0, 5), (2, 7, 6, ID_END), (3, 9, 4, ID_END)])
    data = req.to_data()
    assert data[:4] == [1, 1, 11, 3] and len(data) == 16
    assert CatchUpRequest.from_data(np.array(data, dtype=np.uint32)) == req
    assert req.wanted(2, 7, 20) == [(0, 5), (6, 20)]
    assert req.wanted(3, 9, 2) == []  # has everything robot 3 made
    assert req.wanted(4, 1, 3) == [(0, 3)]  # an unknown lineage is wholly missing
    for bad in ([], [2, 1, 11, 0], [1, 1, 11, 2, 2, 7, 0, 5], [1, 1, 11, 1, 2, 7, 5, 5], [1, 1, 11, 1, 2, 7, 6, 5]):
        with pytest.raises(FleetMessageError) as err:
            CatchUpRequest.from_data(bad)
        assert err.value.kind == "malformed"
    reg = registry(robot=5)
    reg.note_rejection(err.value, nbytes=24)  # the last one came from robot 1
    assert reg.stats()["rejected.malformed"] == 1 and reg.stats()["peer.1.rejected"] == 1


def test_token_bucket_refills_up_to_the_burst_and_goes_into_debt():
    clock = Clock()
    b = TokenBucket(rate=1000.0, burst=500.0, clock=clock)
    assert b.tokens == 500.0
    b.consume(800)
    assert b.tokens == -300.0
    clock.t += 0.5
    assert b.tokens == pytest.approx(200.0)
    clock.t += 100.0
    assert b.tokens == 500.0
    with pytest.raises(ValueError):
        TokenBucket(0.0, 1.0)


def test_late_joiner_catches_up_at_the_rate_limit_and_gets_everything():
    """Robot 2 has 120 keyframes; robot 1 joins late, asks once, and robot 2 re-publishes them
    through a 10 kB/s bucket while making new (live) keyframes that spend the same budget."""
    clock = Clock()
    joiner = registry(robot=1, session=11, clock=clock)
    peer = ReplayScheduler(2, 7, TokenBucket(rate=10_000.0, burst=4_000.0, clock=clock))
    timer = RequestTimer(first_after_s=2.0, min_interval_s=5.0, idle_interval_s=60.0, clock=clock)
    messages = {i: msg(kf(2, i, n_features=20)) for i in range(130)}
    size = max(n for _, n in messages.values())
    log: list[tuple[float, int, int]] = []  # (time, bytes, live bytes)

    def publish(kid: int) -> int:
        m, n = messages[kid]
        log.append((clock.t, n, 0))
        joiner.receive(m, n)
        return n

    start, own_count, requests = clock.t, 120, 0
    for step in range(2000):  # up to 200 s in steps of 0.1 s
        if timer.due(joiner.behind()):
            peer.on_request(CatchUpRequest.of(1, 11, joiner.missing()), own_count=own_count)
            timer.sent()
            requests += 1
        if step % 20 == 0 and own_count < 130:  # robot 2 goes on mapping: a live keyframe every 2 s
            m, n = messages[own_count]
            joiner.receive(m, n)
            peer.live(n)
            log.append((clock.t, n, n))
            own_count += 1
        peer.run(publish)
        clock.t += 0.1
        if joiner.stats()["keyframes_received"] == 130:
            break
    s = joiner.stats()
    assert s["peer.2.keyframes"] == 130 and s["rejected"] == 0 and not joiner.behind()
    assert s["peer.2.late"] == 120  # live keyframes overtook the answers
    # the joiner asked again every 5 s while behind; queued ids are merged, so each keyframe went out once
    assert requests > 1 and len(log) == 130
    # in every interval [t0, t1] the peer sent at most burst + rate * (t1 - t0) + one message,
    # plus the live keyframes of the interval (never delayed; the re-publishing pays their debt)
    times = np.array([t for t, _, _ in log]) - start
    sent = np.cumsum([n for _, n, _ in log])
    live = np.cumsum([n for _, _, n in log])
    for i in range(len(log)):
        for j in range(i, len(log)):
            window_bytes = sent[j] - (sent[i - 1] if i else 0)
            window_live = live[j] - (live[i - 1] if i else 0)
            assert window_bytes <= 4_000 + 10_000 * (times[j] - times[i]) + size + window_live
    assert 0.9 * sent[-1] / 10_000 <= times[-1] <= sent[-1] / 10_000 + 10.0  # the rate bound binds
    print(f"\ncatch-up: 120 old + 10 live keyframes of {size} B in {times[-1]:.1f} s at 10 kB/s, {requests} requests")


def test_a_restarted_robot_asks_only_for_what_its_map_lacks():
    """Robot 1 saved a map with robot 2's keyframes 0..9; after a restart it restores them and its
    request makes robot 2 re-publish only 10..14: nothing is duplicated at either end."""
    before = registry(robot=1, session=11)
    for i in range(10):
        before.receive(*msg(kf(2, i)))
    after = registry(robot=1, session=11)
    for i in range(10):  # what the loaded map holds (robot_id, session, keyframe_id, stamp)
        after.restore(2, 7, i, (100 + i) * SEC)
    peer = ReplayScheduler(2, 7, TokenBucket(1e9, 1e9, Clock()))
    assert peer.on_request(CatchUpRequest.of(1, 11, after.missing()), own_count=15) == 5
    got = []

    def publish(i: int) -> int:
        got.append(after.receive(*msg(kf(2, i))).keyframe_id)
        return 1

    assert peer.run(publish) == 5 and got == [10, 11, 12, 13, 14]
    assert after.stats()["rejected"] == 0 and after.stats()["peer.2.keyframes"] == 5
    assert peer.on_request(CatchUpRequest.of(2, 7, []), own_count=15) == 0  # its own request echoed back


def test_scheduler_queues_each_keyframe_once_and_live_traffic_spends_the_budget():
    clock = Clock()
    peer = ReplayScheduler(2, 7, TokenBucket(rate=100.0, burst=100.0, clock=clock), max_ranges=2)
    assert peer.on_request(CatchUpRequest.of(1, 11, []), own_count=5) == 5
    assert peer.on_request(CatchUpRequest.of(3, 5, [(2, 7, 3, ID_END)]), own_count=8) == 3  # 3, 4 already queued
    assert len(peer) == 8
    peer.live(250)  # a live keyframe: the bucket is in debt, nothing re-published now
    sent: list[int] = []
    assert peer.run(lambda i: sent.append(i) or 50) == 0 and len(peer) == 8
    clock.t += 2.0  # -150 + 200 = 50 tokens
    assert peer.run(lambda i: sent.append(i) or 50) == 1
    clock.t += 10.0
    assert peer.run(lambda i: sent.append(i) or 50) == 2 and sent == [0, 1, 2]
    # bounded: with max_ranges 2, a third disjoint range is dropped (the requester asks again)
    peer.on_request(CatchUpRequest.of(4, 1, [(2, 7, 20, 21), (2, 7, 30, 31)]), own_count=40)
    assert peer.dropped == 1 and len(peer) == 6


def test_request_timer():
    clock = Clock()
    t = RequestTimer(first_after_s=2.0, min_interval_s=5.0, idle_interval_s=60.0, clock=clock)
    assert not t.due(True)
    clock.t += 2.0
    assert t.due(False)
    t.sent()
    clock.t += 4.9
    assert not t.due(True)
    clock.t += 0.1
    assert t.due(True) and not t.due(False)
    clock.t += 55.0
    assert t.due(False)
