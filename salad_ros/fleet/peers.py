"""Which peers' keyframes a robot has accepted, and why it refused the others (ROS-free).

Keyframes are keyed by their *lineage* ``(robot_id, session)`` and their ``keyframe_id`` in
that lineage (the sender's own sequence 0, 1, 2, ...). A robot that restarts with its saved
map keeps its session and continues its sequence; one that starts a new map gets a new session,
so its ids may start at 0 again without clashing. :meth:`PeerRegistry.receive` admits a
decoded keyframe unless it is

* ``own_robot_id``: our robot id with another session (a peer misconfigured with our id). Our
  own messages coming back over the topic (our id *and* session) are no error: they are
  ignored and counted as ``own_echoes``;
* ``duplicate``: this lineage's keyframe id was accepted before (a re-publish after a restart,
  a repeated catch-up answer); nothing is added;
* ``out_of_order``: its stamp contradicts the order of the lineage's known keyframes (a
  keyframe id above a known one must not be stamped before it, and vice versa).

A keyframe id *below* the newest one known but not seen yet is accepted (catch-up answers
arrive after newer live keyframes) and counted as ``late``. Decoding errors (``malformed``,
``other_model``, see :mod:`.wire`) are counted too. Every rejection raises
:class:`~salad_ros.fleet.wire.FleetMessageError` after counting; nothing is recorded for it.
"""

from __future__ import annotations

import bisect
import collections
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .wire import KINDS, FleetMessageError, ModelIdentity, SharedKeyframe, decode

Lineage = tuple[int, int]  #: (robot_id, session)
#: Upper end of an open keyframe-id interval ("and everything after").
ID_END = (1 << 32) - 1


class RateMeter:
    """Bytes per second over a sliding window of ``window_s`` seconds."""

    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        self.window_s = float(window_s)
        self._clock = clock
        self._events: collections.deque[tuple[float, int]] = collections.deque()
        self._sum = 0
        self.total = 0

    def add(self, nbytes: int) -> None:
        """Count ``nbytes`` now."""
        self._events.append((self._clock(), int(nbytes)))
        self._sum += int(nbytes)
        self.total += int(nbytes)
        self._expire()

    def rate(self) -> float:
        """Bytes per second over the last window."""
        self._expire()
        return self._sum / self.window_s

    def _expire(self) -> None:
        old = self._clock() - self.window_s
        while self._events and self._events[0][0] <= old:
            self._sum -= self._events.popleft()[1]


class KnownIds:
    """Keyframe ids (sorted) and their stamps of one lineage."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.stamps: list[int] = []

    def __contains__(self, keyframe_id: int) -> bool:
        i = bisect.bisect_left(self.ids, keyframe_id)
        return i < len(self.ids) and self.ids[i] == keyframe_id

    def __len__(self) -> int:
        return len(self.ids)

    def order_problem(self, keyframe_id: int, stamp_ns: int) -> str:
        """'' when ``stamp_ns`` fits between the stamps of the neighbouring known ids."""
        i = bisect.bisect_left(self.ids, keyframe_id)
        if i > 0 and self.stamps[i - 1] > stamp_ns:
            return f"keyframe {keyframe_id} is stamped before keyframe {self.ids[i - 1]}"
        if i < len(self.ids) and self.stamps[i] < stamp_ns:
            return f"keyframe {keyframe_id} is stamped after keyframe {self.ids[i]}"
        return ""

    def add(self, keyframe_id: int, stamp_ns: int) -> None:
        """Record an id (callers check it is new)."""
        i = bisect.bisect_left(self.ids, keyframe_id)
        self.ids.insert(i, keyframe_id)
        self.stamps.insert(i, stamp_ns)

    def missing(self, max_intervals: int) -> list[tuple[int, int]]:
        """Half-open id intervals ``[start, end)`` not known: the gaps, then ``[newest + 1, ID_END)``.
        With more gaps than ``max_intervals`` the last interval is left open from the first
        gap that did not fit (some known ids are then re-sent)."""
        ids = np.asarray(self.ids, dtype=np.int64)
        starts = np.concatenate([[0], ids + 1])
        ends = np.concatenate([ids, [ID_END]])
        gaps = [(int(s), int(e)) for s, e in zip(starts, ends) if e > s]
        if len(gaps) > max_intervals:
            gaps = gaps[: max_intervals - 1] + [(gaps[max_intervals - 1][0], ID_END)]
        return gaps


@dataclass
class PeerCounters:
    """Counters of one peer robot (all its sessions)."""

    keyframes: int = 0  #: accepted keyframes
    late: int = 0  #: accepted below the lineage's newest id (catch-up answers)
    bytes_in: int = 0  #: bytes of every message received from it, accepted or not
    rejected: collections.Counter = field(default_factory=collections.Counter)  #: per kind
    sessions: set[int] = field(default_factory=set)
    last_keyframe_id: int = -1  #: newest accepted keyframe id (of its latest session)
    last_seen: float = float("nan")  #: clock time of its last message


class PeerRegistry:
    """Admission, deduplication and counters of peers' keyframes; thread-safe."""

    def __init__(self, robot_id: int, session: int, model: ModelIdentity, *,
                 clock: Callable[[], float] = time.monotonic, rate_window_s: float = 10.0) -> None:
        self.robot_id, self.session, self.model = int(robot_id), int(session), model
        self._clock = clock
        self._lock = threading.Lock()
        self._known: dict[Lineage, KnownIds] = {}
        self._peers: dict[int, PeerCounters] = {}
        self._rejected: collections.Counter = collections.Counter(dict.fromkeys(KINDS, 0))
        self.own_echoes = 0
        self.bytes_in = RateMeter(rate_window_s, clock)
        self.bytes_out = RateMeter(rate_window_s, clock)

    def receive(self, msg: Any, nbytes: int = 0) -> SharedKeyframe | None:
        """Decode and admit one fleet message of ``nbytes`` bytes on the wire. Returns the
        keyframe to insert into the database, or None for our own message coming back.
        Raises :class:`FleetMessageError` (after counting it) when refused."""
        with self._lock:
            try:
                kf = decode(msg, self.model)
            except FleetMessageError as exc:
                self.bytes_in.add(nbytes)
                self._count_rejection(exc, exc.robot_id, nbytes)
                raise
            if (kf.robot_id, kf.session) == (self.robot_id, self.session):
                self.own_echoes += 1  # our own publication: neither traffic in nor an error
                return None
            self.bytes_in.add(nbytes)
            try:
                return self._admit(kf, nbytes)
            except FleetMessageError as exc:
                self._count_rejection(exc, kf.robot_id, nbytes)
                raise

    def _admit(self, kf: SharedKeyframe, nbytes: int) -> SharedKeyframe:
        if kf.robot_id == self.robot_id:
            raise FleetMessageError("own_robot_id", f"a peer uses our robot id {self.robot_id} "
                                    f"(session {kf.session:08x}, ours {self.session:08x})", kf.robot_id)
        known = self._known.setdefault((kf.robot_id, kf.session), KnownIds())
        if kf.keyframe_id in known:
            raise FleetMessageError("duplicate", f"robot {kf.robot_id} keyframe {kf.keyframe_id} "
                                    "was received before", kf.robot_id)
        problem = known.order_problem(kf.keyframe_id, kf.stamp_ns)
        if problem:
            raise FleetMessageError("out_of_order", f"robot {kf.robot_id}: {problem}", kf.robot_id)
        late = bool(known.ids) and kf.keyframe_id < known.ids[-1]
        known.add(kf.keyframe_id, kf.stamp_ns)
        peer = self._peer(kf.robot_id, nbytes)
        peer.keyframes += 1
        peer.late += late
        peer.sessions.add(kf.session)
        peer.last_keyframe_id = known.ids[-1]
        return kf

    def _peer(self, robot_id: int, nbytes: int) -> PeerCounters:
        peer = self._peers.setdefault(robot_id, PeerCounters())
        peer.bytes_in += nbytes
        peer.last_seen = self._clock()
        return peer

    def note_rejection(self, exc: FleetMessageError, nbytes: int = 0) -> None:
        """Count a refused message that did not go through :meth:`receive` (a malformed
        catch-up request, see :meth:`CatchUpRequest.from_data`)."""
        with self._lock:
            self.bytes_in.add(nbytes)
            self._count_rejection(exc, exc.robot_id, nbytes)

    def _count_rejection(self, exc: FleetMessageError, robot_id: int | None, nbytes: int) -> None:
        self._rejected[exc.kind] += 1
        if robot_id is not None and robot_id != self.robot_id:
            self._peer(robot_id, nbytes).rejected[exc.kind] += 1

    def restore(self, robot_id: int, session: int, keyframe_id: int, stamp_ns: int) -> None:
        """Mark a peer keyframe of a loaded map as known (not counted as received)."""
        with self._lock:
            known = self._known.setdefault((int(robot_id), int(session)), KnownIds())
            if keyframe_id not in known:
                known.add(int(keyframe_id), int(stamp_ns))

    def sent(self, nbytes: int) -> None:
        """Count ``nbytes`` published on the fleet topic."""
        with self._lock:
            self.bytes_out.add(nbytes)

    def missing(self, max_intervals: int = 64) -> Iterator[tuple[int, int, int, int]]:
        """``(robot_id, session, start, end)``: the keyframe-id intervals this robot lacks
        of every lineage it knows (see :meth:`KnownIds.missing`)."""
        with self._lock:
            lineages = {lin: known.missing(max_intervals) for lin, known in self._known.items()}
        for (robot, session), gaps in sorted(lineages.items()):
            for start, end in gaps:
                yield robot, session, start, end

    def behind(self) -> bool:
        """True when some known lineage has a gap below its newest keyframe id."""
        with self._lock:
            return any(len(k) and k.ids[-1] + 1 != len(k) for k in self._known.values())

    def stats(self) -> dict[str, float]:
        """Diagnostics values: ``peers_seen``, ``keyframes_received``, ``bytes_in_per_s``,
        ``bytes_out_per_s``, ``rejected.<kind>`` and per peer ``peer.<id>.keyframes``,
        ``.late``, ``.rejected``, ``.sessions``, ``.last_keyframe_id``, ``.age_s``."""
        with self._lock:
            now = self._clock()
            accepted = {r: p for r, p in self._peers.items() if p.keyframes}
            out: dict[str, float] = {
                "peers_seen": len(accepted), "keyframes_received": sum(p.keyframes for p in accepted.values()),
                "bytes_in_per_s": round(self.bytes_in.rate(), 1), "bytes_out_per_s": round(self.bytes_out.rate(), 1),
                "bytes_in_total": self.bytes_in.total, "bytes_out_total": self.bytes_out.total,
                "own_echoes": self.own_echoes, "rejected": sum(self._rejected.values()),
            }
            out.update({f"rejected.{k}": n for k, n in sorted(self._rejected.items())})
            for r, p in sorted(self._peers.items()):
                out.update({f"peer.{r}.keyframes": p.keyframes, f"peer.{r}.late": p.late,
                            f"peer.{r}.rejected": sum(p.rejected.values()), f"peer.{r}.sessions": len(p.sessions),
                            f"peer.{r}.last_keyframe_id": p.last_keyframe_id,
                            f"peer.{r}.age_s": round(now - p.last_seen, 2)})
            return out
