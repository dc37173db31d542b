"""The node's ROS-free parts: the latest-frame hand-over, the statistics, the debug view."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
from _scenes import scene

from salad_ros import debug_image
from salad_ros.io.images import ERROR_KINDS
from salad_ros.node_state import LATENCY_WINDOW, LatestFrameSlot, NodeStats, hardware_id


def test_slot_keeps_only_the_newest_frame_and_reports_replacements():
    slot = LatestFrameSlot()
    assert slot.put("a") is False  # the slot was empty: nothing dropped
    assert slot.put("b") is True  # "a" was never taken: a drop
    assert slot.put("c") is True
    assert slot.take(timeout=0) == "c"
    assert slot.take(timeout=0.01) is None  # empty again: waits, then gives nothing
    assert slot.put("d") is False  # a taken frame is not a drop


def test_slot_wakes_a_waiting_worker_and_close_ends_it():
    slot = LatestFrameSlot()
    got: list = []

    def worker() -> None:
        while (item := slot.take()) is not None:
            got.append(item)

    t = threading.Thread(target=worker)
    t.start()
    slot.put(1)
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.005)
    assert got == [1]
    slot.close()
    t.join(timeout=5)
    assert not t.is_alive()
    assert slot.take(timeout=0) is None  # closed stays closed, even with a frame put later
    slot.put(2)
    assert slot.take(timeout=0) is None


def test_slot_under_a_fast_producer_accounts_for_every_frame():
    """What the node promises in /diagnostics: received = taken + dropped (+ one pending)."""
    slot = LatestFrameSlot()
    taken, dropped = [], 0
    stop = threading.Event()

    def worker() -> None:
        while (item := slot.take(timeout=0.05)) is not None or not stop.is_set():
            if item is not None:
                taken.append(item)
                time.sleep(0.0005)  # slower than the producer

    t = threading.Thread(target=worker)
    t.start()
    for i in range(2000):
        dropped += slot.put(i)
    stop.set()
    t.join(timeout=10)
    pending = slot.take(timeout=0)
    assert len(taken) + dropped + (pending is not None) == 2000
    assert dropped > 0 and taken == sorted(taken)  # newest wins, order kept


def test_stats_snapshot_is_a_plain_copy():
    stats = NodeStats()
    assert set(stats.bad) == set(ERROR_KINDS) and all(v == 0 for v in stats.bad.values())
    for i in range(LATENCY_WINDOW + 50):
        stats.latencies.append(float(i))
    stats.received, stats.processed, stats.dropped = 10, 7, 2
    stats.bad["empty"] = 1
    snap = stats.snapshot()
    assert len(snap["latencies"]) == LATENCY_WINDOW and snap["latencies"][0] == 50.0  # bounded window
    assert (snap["received"], snap["processed"], snap["dropped"], snap["bad"]["empty"]) == (10, 7, 2, 1)
    stats.bad["empty"] = 5
    stats.latencies.append(-1.0)
    assert snap["bad"]["empty"] == 1 and snap["latencies"][-1] != -1.0  # a copy, not a view


def test_rss_is_this_process():
    # a fresh process: in this one the allocator may hand back pages it already holds
    code = ("import numpy as np; from salad_ros.node_state import rss_bytes; b = rss_bytes(); "
            "x = np.ones(64 << 20, np.uint8); print(b, rss_bytes())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    before, after = (int(v) for v in out.stdout.split())
    assert before > 10 << 20 and after - before > 32 << 20


def test_debug_view_layout():
    q, m = scene(0), scene(1)[:120]  # match of a different size and aspect
    mass = np.zeros((16, 16), np.float32)
    mass[4:8, 4:8] = 1.0
    out = debug_image.compose(q, match=m, mass=mass, query_id=5, match_id=1, score=0.93, height=120)
    assert out.dtype == np.uint8 and out.shape[0] == 120 + 22 and out.shape[2] == 3
    assert out.shape[1] == 160 + 160 + 320  # 4:3 query twice, 8:3 match
    heat = out[22:, 160:320].astype(int)
    # the hot block (rows/cols 4-8 of 16) is redder than a cold corner
    assert heat[40, 40, 0] - heat[40, 40, 2] > heat[5, 5, 0] - heat[5, 5, 2]
    blank = debug_image.compose(q, height=60)  # no candidate, no heat map: same layout
    assert blank.shape[0] == 82 and blank.shape[1] == 80 * 3


def test_debug_view_names_a_peers_keyframe(monkeypatch):
    """A match of another robot is named by robot and its keyframe number; peers send no image."""
    texts: list[str] = []
    real = debug_image.cv2.putText
    monkeypatch.setattr(debug_image.cv2, "putText", lambda img, text, *a, **k: texts.append(text) or real(img, text, *a, **k))
    debug_image.compose(scene(0), query_id=5, match_id=17, match_robot_id=2, score=0.8, height=60)
    assert texts == ["no heat map", "robot 2 #17: no image", "query #5   best match robot 2 #17   score 0.800"]




def test_hardware_id_names_the_device_and_its_model():
    cpu = hardware_id("cpu")
    assert cpu.startswith("cpu: ") and len(cpu) > len("cpu: ") and "\n" not in cpu
    # no torch CUDA here: the device string is kept as it is
    assert hardware_id("cuda:3 (CUDAExecutionProvider)").startswith("cuda:3")
