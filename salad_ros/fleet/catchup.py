"""Late joiners: asking peers for the keyframes one lacks, and answering at a bounded rate.

**Request** (``fleet.request_topic``, std_msgs/UInt32MultiArray, only ``data`` is used)::

    data = [version (1), robot_id, session, n,
            robot_id_1, session_1, start_1, end_1,  ...  robot_id_n, session_n, start_n, end_n]

Each quadruple says "of lineage (robot_id, session) I lack the keyframe ids in [start, end)";
``end = 2**32 - 1`` means "and every later one" (:meth:`PeerRegistry.missing` lists them). A
lineage that is not listed is wholly missing. Every robot answers for its **own** current
lineage only, re-publishing on the fleet topic (a broadcast: one answer serves every requester)
the ids the requester lacks, oldest first, through a token bucket shared with its live
keyframes (requests are merged: an id asked for by several robots goes out once; live
keyframes are never delayed, they put the bucket into debt). A requester asks once
``first_after_s`` after start (discovery), again at most every ``min_interval_s`` while
:meth:`PeerRegistry.behind`, and every ``idle_interval_s`` otherwise (keyframes of a peer it
has never heard from). Receivers drop what they already have (``duplicate``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .peers import ID_END
from .wire import FleetMessageError

REQUEST_VERSION = 1
#: Most intervals one request carries (4 kB of data).
MAX_INTERVALS = 256

Interval = tuple[int, int, int, int]  #: (robot_id, session, start, end)


@dataclass(frozen=True)
class CatchUpRequest:
    """What robot ``(robot_id, session)`` lacks: ``missing`` intervals per lineage."""

    robot_id: int
    session: int
    missing: tuple[Interval, ...] = ()

    @classmethod
    def of(cls, robot_id: int, session: int, missing: Iterable[Interval]) -> CatchUpRequest:
        """A request of at most :data:`MAX_INTERVALS` intervals (the others are asked next time)."""
        return cls(int(robot_id), int(session), tuple(missing)[:MAX_INTERVALS])

    def to_data(self) -> list[int]:
        """The UInt32MultiArray ``data``."""
        flat = [int(v) for quad in self.missing for v in quad]
        return [REQUEST_VERSION, self.robot_id, self.session, len(self.missing), *flat]

    @classmethod
    def from_data(cls, data: Iterable[int]) -> CatchUpRequest:
        """Parse and check a UInt32MultiArray ``data``; :class:`FleetMessageError` ``malformed``."""
        d = [int(v) for v in data]
        if len(d) < 4 or d[0] != REQUEST_VERSION:
            raise FleetMessageError("malformed", f"catch-up request of version {d[0] if d else '?'} "
                                    f"(this node reads {REQUEST_VERSION}) or shorter than 4 values")
        n = d[3]
        if n > MAX_INTERVALS or len(d) != 4 + 4 * n:
            raise FleetMessageError("malformed", f"catch-up request announces {n} intervals in {len(d)} values", d[1])
        quads = tuple(tuple(d[4 + 4 * i: 8 + 4 * i]) for i in range(n))
        if any(not 0 <= s < e <= ID_END for _, _, s, e in quads) or any(v < 0 or v > ID_END for v in d):
            raise FleetMessageError("malformed", "catch-up request with an empty or reversed interval", d[1])
        return cls(d[1], d[2], quads)  # type: ignore[arg-type]

    def wanted(self, robot_id: int, session: int, count: int) -> list[tuple[int, int]]:
        """Id ranges ``[start, end)`` of lineage (robot_id, session), of which ids ``0..count-1``
        exist, that the requester lacks."""
        mine = [(s, e) for r, ss, s, e in self.missing if (r, ss) == (robot_id, session)]
        if not mine:
            return [(0, count)] if count > 0 else []
        return [(s, min(e, count)) for s, e in sorted(mine) if s < count]


class TokenBucket:
    """Byte budget refilled at ``rate`` bytes/s up to ``burst``; it may go into debt, so a
    message larger than the burst still goes out, and the debt is paid before the next one."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not (rate > 0 and burst > 0 and math.isfinite(rate) and math.isfinite(burst)):
            raise ValueError("token bucket needs a finite rate > 0 and burst > 0")
        self.rate, self.burst, self._clock = float(rate), float(burst), clock
        self._tokens, self._t = float(burst), clock()

    @property
    def tokens(self) -> float:
        """Bytes that may be sent now (negative while in debt)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
        self._t = now
        return self._tokens

    def consume(self, nbytes: int) -> None:
        """Spend ``nbytes`` (sent now)."""
        self._tokens = self.tokens - nbytes


class ReplayScheduler:
    """A robot's answers to catch-up requests: the own keyframe ids still to re-publish, kept
    as merged ``[start, end)`` ranges (bounded memory however many keyframes are asked for)."""

    def __init__(self, robot_id: int, session: int, bucket: TokenBucket, max_ranges: int = 4096) -> None:
        self.robot_id, self.session, self.bucket = int(robot_id), int(session), bucket
        self.max_ranges = int(max_ranges)
        self._pending: list[list[int]] = []  # sorted, disjoint, non-adjacent [start, end)
        self.dropped = 0  #: ranges not kept because there were too many (asked for again later)
        self.republished = 0

    def __len__(self) -> int:
        return sum(e - s for s, e in self._pending)

    def on_request(self, request: CatchUpRequest, own_count: int) -> int:
        """Queue the own keyframes (ids ``0..own_count-1``) ``request`` lacks; returns how many
        were not queued before. Our own request coming back over the topic is ignored."""
        if (request.robot_id, request.session) == (self.robot_id, self.session):
            return 0
        before = len(self)
        for start, end in request.wanted(self.robot_id, self.session, own_count):
            self._add(start, end)
        return len(self) - before

    def _add(self, start: int, end: int) -> None:
        merged, out = [start, end], []
        for r in self._pending:
            if r[1] < merged[0] or r[0] > merged[1]:
                out.append(r)
            else:
                merged = [min(r[0], merged[0]), max(r[1], merged[1])]
        out.append(merged)
        out.sort()
        if len(out) > self.max_ranges:
            self.dropped += len(out) - self.max_ranges
            out = out[: self.max_ranges]
        self._pending = out

    def run(self, publish: Callable[[int], int]) -> int:
        """Re-publish queued keyframes, oldest first, while the bucket has tokens;
        ``publish(keyframe_id)`` sends one and returns its bytes (0 when it can no longer be
        sent). Returns how many were sent."""
        sent = 0
        while self._pending and self.bucket.tokens > 0:
            first = self._pending[0]
            kf = first[0]
            first[0] += 1
            if first[0] == first[1]:
                self._pending.pop(0)
            nbytes = publish(kf)
            self.bucket.consume(nbytes)
            sent += nbytes > 0
        self.republished += sent
        return sent

    def live(self, nbytes: int) -> None:
        """A live keyframe of ``nbytes`` was published: it spends the same budget."""
        self.bucket.consume(nbytes)


class RequestTimer:
    """When a robot sends a :class:`CatchUpRequest` (see the module docstring)."""

    def __init__(self, first_after_s: float = 2.0, min_interval_s: float = 5.0, idle_interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.first_after_s, self.min_interval_s, self.idle_interval_s = first_after_s, min_interval_s, idle_interval_s
        self._clock = clock
        self._start = clock()
        self._last: float | None = None

    def due(self, behind: bool) -> bool:
        """True when a request should go out now; the caller then sends it and calls :meth:`sent`."""
        now = self._clock()
        if self._last is None:
            return now - self._start >= self.first_after_s
        since = now - self._last
        if behind:
            return since >= self.min_interval_s
        return self.idle_interval_s > 0 and since >= self.idle_interval_s

    def sent(self) -> None:
        """A request went out now."""
        self._last = self._clock()
