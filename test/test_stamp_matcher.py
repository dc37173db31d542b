"""StampMatcher: pairing colour frames with camera_info and depth by stamp, bounded, counting misses."""

from __future__ import annotations

import pytest

from salad_ros.io.stamp_matcher import StampMatcher

MS = 1_000_000


def test_exact_stamps_pair_whatever_the_arrival_order() -> None:
    m = StampMatcher(("camera_info", "depth"))
    assert m.add_frame(100 * MS, "rgb100") == []  # waits for both companions
    assert m.add_companion("depth", 100 * MS, "d100") == []
    out = m.add_companion("camera_info", 100 * MS, "i100")
    assert [(f.stamp_ns, f.frame, f.get("camera_info"), f.get("depth")) for f in out] == \
        [(100 * MS, "rgb100", "i100", "d100")]
    # companions first, then the frame: paired at once
    m.add_companion("camera_info", 200 * MS, "i200")
    m.add_companion("depth", 200 * MS, "d200")
    out = m.add_frame(200 * MS, "rgb200")
    assert [(f.frame, f.get("depth")) for f in out] == [("rgb200", "d200")]
    assert m.counts["matched_depth"] == 2 and m.counts["missing_depth"] == 0 and m.pending == 0


def test_tolerance_takes_the_nearest_companion() -> None:
    m = StampMatcher(("depth",), tolerance_ns=10 * MS)
    m.add_companion("depth", 95 * MS, "d95")
    m.add_companion("depth", 103 * MS, "d103")
    m.add_companion("depth", 140 * MS, "d140")
    out = m.add_frame(100 * MS, "rgb")
    assert [f.get("depth") for f in out] == ["d103"]
    # outside the tolerance: not paired, even though it is the nearest one
    m2 = StampMatcher(("depth",), tolerance_ns=2 * MS)
    m2.add_companion("depth", 95 * MS, "d95")
    m2.add_companion("depth", 140 * MS, "d140")  # the stream moved past 100 ms: depth for it is missing
    out = m2.add_frame(100 * MS, "rgb")
    assert [f.get("depth") for f in out] == [None]
    assert m2.counts["missing_depth"] == 1


def test_missing_stream_does_not_stall_frames() -> None:
    m = StampMatcher(("camera_info", "depth"), max_wait_ns=250 * MS, max_pending=100)
    emitted = []
    for i in range(10):  # camera_info for every frame, depth never arrives
        m.add_companion("camera_info", i * 100 * MS, f"i{i}")
        emitted += m.add_frame(i * 100 * MS, f"rgb{i}")
    # a frame is given up once a frame 250 ms newer exists: at most 3 frames wait
    assert m.pending <= 3
    assert [f.frame for f in emitted] == [f"rgb{i}" for i in range(len(emitted))]
    assert all(f.get("depth") is None and f.get("camera_info") == f"i{int(f.frame[3:])}" for f in emitted)
    emitted += m.flush()
    assert len(emitted) == 10 and m.pending == 0
    assert m.counts["missing_depth"] == 10 and m.counts["matched_camera_info"] == 10


def test_pending_frames_are_bounded_by_count() -> None:
    m = StampMatcher(("depth",), max_wait_ns=10**15, max_pending=4)
    out = []
    for i in range(20):
        out += m.add_frame(i * MS, i)
        assert m.pending <= 4
    assert [f.frame for f in out] == list(range(16))  # oldest first, in order


def test_companion_buffer_is_bounded_and_counts_evictions() -> None:
    m = StampMatcher(("depth",), max_buffer=5)
    for i in range(12):
        m.add_companion("depth", i * MS, i)
    assert len(m._buffers["depth"]) == 5
    assert m.counts["evicted_depth"] == 7


def test_late_companion_is_counted_and_dropped() -> None:
    m = StampMatcher(("depth",), max_wait_ns=0)  # give up at once: frames never wait
    out = m.add_frame(100 * MS, "rgb")
    assert [f.get("depth") for f in out] == [None]
    assert m.add_companion("depth", 100 * MS - 1, "too late") == []
    assert m.counts["late_depth"] == 1 and len(m._buffers["depth"]) == 0


def test_no_companion_streams_passes_frames_through() -> None:
    m = StampMatcher(())
    assert [f.frame for f in m.add_frame(5, "a")] == ["a"]


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        StampMatcher(("depth",), tolerance_ns=-1)
    with pytest.raises(ValueError):
        StampMatcher(("depth", "depth"))
    with pytest.raises(KeyError, match="unknown stream"):
        StampMatcher(("depth",)).add_companion("camera_info", 0, None)


def test_flush_until_emits_only_the_frames_up_to_a_stamp() -> None:
    m = StampMatcher(("camera_info", "depth"), max_wait_ns=10_000 * MS)
    m.add_frame(100 * MS, "a")
    m.add_frame(200 * MS, "b")
    assert m.add_companion("depth", 200 * MS, "d200") == []  # both still wait for camera_info
    out = m.flush_until(150 * MS)  # a waited long enough (by the caller's clock): out without companions
    assert [(f.frame, f.get("depth")) for f in out] == [("a", None)] and m.pending == 1
    out = m.flush_until(200 * MS)
    assert [(f.frame, f.get("depth"), f.get("camera_info")) for f in out] == [("b", "d200", None)]
    assert m.pending == 0 and m.counts["missing_camera_info"] == 2 and m.flush_until(10_000 * MS) == []
