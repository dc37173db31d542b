"""Pairs colour frames with companion messages (camera_info, depth) by header stamp.

A small, bounded stand-in for message_filters' ApproximateTime policy (no pip wheel of
message_filters exists). Frames leave in stamp order. A frame waits until every companion
stream is *resolved*: a message within ``tolerance_ns`` of its stamp arrived (the nearest one
is taken), or the stream has moved past it (a message newer than stamp + tolerance arrived:
each topic is assumed in order), or waiting is over, decided by stamps only so replay is
deterministic: a frame newer by ``max_wait_ns``, or more than ``max_pending`` frames queued.
An unresolved companion is then missing (``None``) and counted: the frame still goes out.

Counters (``counts``): ``matched_<stream>``, ``missing_<stream>``, ``late_<stream>`` (arrived
after its frame left, dropped) and ``evicted_<stream>`` (pushed out of the bounded buffer
before any frame used it). Not thread-safe: call from one callback group.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SyncedFrame:
    """A colour frame and its companions (``None`` where missing), keyed by stream name."""

    stamp_ns: int
    frame: Any
    companions: dict[str, Any] = field(default_factory=dict)

    def get(self, stream: str) -> Any:
        """The companion of ``stream``, or None when it was missing."""
        return self.companions.get(stream)


@dataclass
class _Companion:
    stamp_ns: int
    msg: Any
    used: bool = False


class StampMatcher:
    """Bounded stamp matcher of frames against companion streams (see the module docstring)."""

    def __init__(self, streams: Sequence[str], tolerance_ns: int = 0, max_wait_ns: int = 500_000_000,
                 max_pending: int = 10, max_buffer: int = 30) -> None:
        if tolerance_ns < 0 or max_wait_ns < 0 or max_pending < 1 or max_buffer < 1:
            raise ValueError("StampMatcher needs tolerance_ns >= 0, max_wait_ns >= 0, max_pending >= 1 "
                             "and max_buffer >= 1")
        if len(set(streams)) != len(streams):
            raise ValueError(f"duplicate stream names in {list(streams)}")
        self.streams = tuple(streams)
        self.tolerance_ns = int(tolerance_ns)
        self.max_wait_ns = int(max_wait_ns)
        self.max_pending = int(max_pending)
        self.max_buffer = int(max_buffer)
        self._buffers: dict[str, collections.deque[_Companion]] = {s: collections.deque() for s in self.streams}
        self._pending: collections.deque[tuple[int, Any]] = collections.deque()
        self._last_emitted_ns: int | None = None
        self.counts: collections.Counter[str] = collections.Counter()

    def add_companion(self, stream: str, stamp_ns: int, msg: Any) -> list[SyncedFrame]:
        """Buffer a companion message; returns the frames this resolves, oldest first."""
        if stream not in self._buffers:
            raise KeyError(f"unknown stream {stream!r} (streams: {', '.join(self.streams)})")
        if self._last_emitted_ns is not None and stamp_ns + self.tolerance_ns < self._last_emitted_ns \
                and not any(s <= stamp_ns + self.tolerance_ns for s, _ in self._pending):
            self.counts[f"late_{stream}"] += 1
            return []
        buf = self._buffers[stream]
        buf.append(_Companion(int(stamp_ns), msg))
        while len(buf) > self.max_buffer:
            if not buf.popleft().used:
                self.counts[f"evicted_{stream}"] += 1
        return self._drain(force=False)

    def add_frame(self, stamp_ns: int, frame: Any) -> list[SyncedFrame]:
        """Queue a colour frame; returns the frames ready to process, oldest first."""
        self._pending.append((int(stamp_ns), frame))
        return self._drain(force=False)

    def flush(self) -> list[SyncedFrame]:
        """Emit every queued frame now (end of a bag, shutdown); unresolved companions are missing."""
        return self._drain(force=True)

    def flush_until(self, stamp_ns: int) -> list[SyncedFrame]:
        """Emit now every queued frame stamped at or before ``stamp_ns`` (the caller decided they
        waited long enough, e.g. by wall clock); later frames keep waiting. Unresolved
        companions of the emitted frames are missing."""
        out: list[SyncedFrame] = []
        while self._pending and self._pending[0][0] <= stamp_ns:
            stamp, frame = self._pending.popleft()
            found = {s: c for s in self.streams if (c := self._lookup(s, stamp)[0]) is not None}
            out.append(self._emit(stamp, frame, found))
        return out + self._drain(force=False)

    @property
    def pending(self) -> int:
        """Frames waiting for companions."""
        return len(self._pending)

    def _drain(self, force: bool) -> list[SyncedFrame]:
        out: list[SyncedFrame] = []
        while self._pending:
            stamp, frame = self._pending[0]
            newest = max(s for s, _ in self._pending)
            give_up = force or len(self._pending) > self.max_pending or newest - stamp >= self.max_wait_ns
            found: dict[str, Any] = {}
            resolved = True
            for stream in self.streams:
                comp, passed = self._lookup(stream, stamp)
                if comp is not None:
                    found[stream] = comp
                elif not passed:
                    resolved = False
            if not (resolved or give_up):
                break
            self._pending.popleft()
            out.append(self._emit(stamp, frame, found))
        return out

    def _lookup(self, stream: str, stamp: int) -> tuple[_Companion | None, bool]:
        """(nearest companion within tolerance or None, whether the stream has moved past ``stamp``)."""
        best: _Companion | None = None
        passed = False
        for comp in self._buffers[stream]:
            gap = abs(comp.stamp_ns - stamp)
            if gap <= self.tolerance_ns and (best is None or gap < abs(best.stamp_ns - stamp)):
                best = comp
            if comp.stamp_ns > stamp + self.tolerance_ns:
                passed = True
        return best, passed

    def _emit(self, stamp: int, frame: Any, found: dict[str, _Companion]) -> SyncedFrame:
        companions: dict[str, Any] = {}
        for stream in self.streams:
            comp = found.get(stream)
            if comp is None:
                self.counts[f"missing_{stream}"] += 1
                companions[stream] = None
            else:
                comp.used = True
                self.counts[f"matched_{stream}"] += 1
                companions[stream] = comp.msg
        self._last_emitted_ns = stamp
        self._prune(stamp)
        return SyncedFrame(stamp, frame, companions)

    def _prune(self, stamp: int) -> None:
        """Drop companions too old for any frame still to come (frames leave in stamp order)."""
        horizon = min([s for s, _ in self._pending] + [stamp]) - self.tolerance_ns
        for buf in self._buffers.values():
            while buf and buf[0].stamp_ns < horizon:
                buf.popleft()
