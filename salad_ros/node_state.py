"""ROS-free state of the loop-closure node: the latest-frame hand-over and the counters behind
``/diagnostics``. Kept out of :mod:`salad_ros.node` so they are unit-tested without rclpy."""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from .cpuinfo import cpu_model
from .io.images import ERROR_KINDS

# Window of recent frames for the latency statistics in /diagnostics.
LATENCY_WINDOW = 200


class LatestFrameSlot:
    """One-slot hand-over from the executor to the worker: a new frame replaces an untaken one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._closed = False

    def put(self, item: Any) -> bool:
        """Store ``item``; True when it replaced a frame the worker never took (a drop)."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> Any:
        """The newest frame, waiting for one; None once closed (or on timeout)."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            if self._closed:
                return None
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass
class NodeStats:
    """Counters behind /diagnostics. ``received = processed + dropped + bad + failed + pending``;
    ``lost_in_transport`` frames never reached the node (the middleware reported them lost: the
    subscription's message_lost event), so they are not in ``received``."""

    received: int = 0
    lost_in_transport: int = 0
    processed: int = 0
    dropped: int = 0
    failed: int = 0
    bad: dict[str, int] = field(default_factory=lambda: {k: 0 for k in ERROR_KINDS})
    keyframes_published: int = 0
    candidate_messages: int = 0
    candidates: int = 0
    latencies: collections.deque = field(default_factory=lambda: collections.deque(maxlen=LATENCY_WINDOW))

    def snapshot(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["latencies"] = list(self.latencies)
        return d


def rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0




def hardware_id(device: str) -> str:
    """The /diagnostics hardware id: the inference device and what it is, e.g.
    ``cpu: AMD Ryzen 9 7950X`` or ``cuda:0: NVIDIA GeForce RTX 3090`` (``device`` as the
    backend reports it; unchanged when its model can't be found)."""
    if device == "cpu":
        return f"cpu: {cpu_model()}"
    cuda = re.match(r"cuda:(\d+)", device)
    torch = sys.modules.get("torch")  # only when a backend loaded it: never import it for this
    if cuda and torch is not None:
        try:
            if torch.cuda.is_available():
                return f"cuda:{cuda.group(1)}: {torch.cuda.get_device_name(int(cuda.group(1)))}"
        except Exception:  # noqa: BLE001 - a name is nice to have, never a reason to fail
            pass
    return device
