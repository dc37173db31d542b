"""Reading a replay's input from a rosbag2: decoded image frames, ground-truth poses, prefetch.

No rclpy: messages come from :class:`salad_ros.io.bags.BagReader`. Damage is recorded in a
:class:`ReadStats` rather than raised, so a replay scores what was read before it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..io.bags import BagReader, BagReadError
from ..io.images import ImageDecodeError, msg_to_rgb
from ..io.messages import pose_from_msg
from ..io.trajectory import Trajectory, read_tum


@dataclass
class Frame:
    index: int  #: position among the image topic's messages
    stamp_ns: int
    rgb: np.ndarray
    frame_id: str
    decode_s: float
    camera: Any = None  #: CameraModel from the frame's camera_info (None: none; see .companions)
    depth: np.ndarray | None = None  #: aligned depth in metres (NaN = none)


@dataclass
class ReadStats:
    messages: int = 0  #: image messages seen
    bad: dict[str, int] = field(default_factory=dict)  #: undecodable images per kind
    first_bad: str | None = None
    error: str | None = None  #: bag read error that stopped the read
    last_good_index: int | None = None


def load_ground_truth(reader: BagReader, topic: str | None, tum: str | None, stats: ReadStats) -> Trajectory | None:
    """Poses from a topic of the bag or a TUM file (None without either)."""
    if tum:
        return read_tum(tum)
    if not topic:
        return None
    stamps: list[int] = []
    poses = []
    try:
        for m in reader.messages([topic]):
            stamps.append(m.stamp_ns)
            poses.append(pose_from_msg(m.msg))
    except BagReadError as exc:  # keep the poses read before the damage
        stats.error = str(exc)
        stats.last_good_index = exc.last_good_index
    return Trajectory.from_poses(stamps, poses, source=f"topic {topic}")


def iter_frames(reader: BagReader, topic: str, every: int, max_frames: int | None, stats: ReadStats) -> Iterator[Frame]:
    """Decoded frames of ``topic``: every ``every``-th message, at most ``max_frames``.
    Undecodable images are counted per kind in ``stats`` and skipped."""
    taken = 0
    try:
        for n, m in enumerate(reader.messages([topic])):
            stats.messages += 1
            if n % every:
                continue
            t0 = time.perf_counter()
            try:
                rgb = msg_to_rgb(m.msg)
            except ImageDecodeError as exc:
                stats.bad[exc.kind] = stats.bad.get(exc.kind, 0) + 1
                stats.first_bad = stats.first_bad or f"image message {n}: {exc}"
                continue
            yield Frame(n, m.stamp_ns, rgb, getattr(getattr(m.msg, "header", None), "frame_id", ""),
                        time.perf_counter() - t0)
            taken += 1
            if max_frames is not None and taken >= max_frames:
                return
    except BagReadError as exc:
        stats.error = str(exc)
        stats.last_good_index = exc.last_good_index


def prefetch(items: Iterator[Frame], depth: int) -> Iterator[Frame]:
    """Decode in a background thread while the model runs (torch releases the GIL)."""
    q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
    done = object()
    failure: list[BaseException] = []
    stop = threading.Event()

    def run() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as exc:  # re-raised in the consumer
            failure.append(exc)
        finally:
            q.put(done)

    thread = threading.Thread(target=run, name="salad_replay_reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                break
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)
    if failure:
        raise failure[0]
