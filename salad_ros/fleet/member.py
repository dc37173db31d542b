"""One robot's side of keyframe sharing, without ROS: what to publish, what to accept, when to ask.

:class:`FleetMember` joins a :class:`~salad_ros.pipeline.LoopClosurePipeline` to the fleet. The
node drives it from ROS callbacks and timers; offline replay drives one per robot and hands the
messages over in memory, so both behave the same:

* :meth:`FleetMember.on_keyframe` - a new own keyframe -> the :class:`~.wire.WireMessage` to
  publish (descriptor int8, local features trimmed to ``fleet.max_features`` and to
  ``fleet.max_message_bytes``);
* :meth:`FleetMember.receive` - a message from the fleet topic -> admitted by the
  :class:`~.peers.PeerRegistry` and inserted into the map (searchable at once), or refused and
  counted (:class:`~.wire.FleetMessageError`);
* :meth:`FleetMember.request` / :meth:`on_request` / :meth:`answer` - catch-up
  (:mod:`.catchup`): ask for what is missing, queue what peers lack, re-publish it within
  ``fleet.max_bytes_per_s``.

A restarted robot with its saved map keeps its session: its keyframes keep their ids, so
peers that hold them refuse re-sent ones as duplicates, and it marks the peers' keyframes its
map holds as known (it does not ask for them again).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from salad_ros.params import ConfigError

from .catchup import CatchUpRequest, ReplayScheduler, RequestTimer, TokenBucket
from .config import PREFIX, FleetConfig
from .peers import PeerRegistry
from .wire import FleetMessageError, ModelIdentity, WireMessage, encode, max_features_within

#: Longest frame id assumed when sizing features into the message budget (ROS frame ids are short).
_FRAME_ID_BUDGET = 128


class FleetMember:
    """Keyframe sharing of one robot's pipeline (module docstring). Thread-safe where the node
    needs it: :meth:`receive` may run beside the pipeline's frame processing."""

    def __init__(self, pipeline: Any, cfg: FleetConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.pipeline = pipeline
        self.cfg = cfg
        self.model = ModelIdentity(pipeline.model_name, pipeline.dim)
        self._clock = clock
        fit = max_features_within(cfg.max_message_bytes, self.model.dim, True, "x" * _FRAME_ID_BUDGET)
        if fit < 0:
            raise ConfigError(f"parameter '{PREFIX}max_message_bytes': {cfg.max_message_bytes} bytes cannot hold "
                              f"a {self.model.dim}-D descriptor")
        #: features sent per keyframe at most (``fleet.max_features``, or fewer to fit the budget)
        self.max_features = min(cfg.max_features, fit) if cfg.share_features else 0
        self.sent_keyframes = 0  #: own keyframes published live
        self.sent_bytes = 0  #: their bytes
        self._lock = threading.Lock()  # scheduler, timer and counters: worker, timers and callbacks share them
        self._start_session()

    def _start_session(self) -> None:
        robot, session = self.pipeline.robot_id, self.pipeline.session
        self.registry = PeerRegistry(robot, session, self.model, clock=self._clock)
        origins, stamps = self.pipeline.keyframe_origins()
        for (r, s, k), st in zip(origins.tolist(), stamps.tolist(), strict=True):
            if (r, s) != (robot, session):
                self.registry.restore(r, s, k, st)
        burst = max(4.0 * self.cfg.max_message_bytes, self.cfg.max_bytes_per_s)
        self.scheduler = ReplayScheduler(robot, session, TokenBucket(self.cfg.max_bytes_per_s, burst, self._clock))
        self.timer = RequestTimer(self.cfg.first_request_s, self.cfg.request_interval_s, self.cfg.idle_request_s,
                                  self._clock)

    def map_reset(self) -> None:
        """The pipeline's map was reset (a new session): forget peers and pending answers."""
        with self._lock:
            self._start_session()

    # -- publishing

    def message(self, robot_keyframe_id: int) -> WireMessage | None:
        """The wire form of own keyframe ``robot_keyframe_id`` (None when the map has none)."""
        kf = self.pipeline.shared_keyframe(robot_keyframe_id)
        if kf is None:
            return None
        return encode(kf, self.model, self.max_features)

    def on_keyframe(self, robot_keyframe_id: int) -> WireMessage | None:
        """A new own keyframe: its message, counted as sent (it spends the catch-up budget too)."""
        wire = self.message(robot_keyframe_id)
        if wire is not None:
            self.sent(wire)
            with self._lock:
                self.sent_keyframes += 1
                self.sent_bytes += wire.encoded_size
                self.scheduler.live(wire.encoded_size)
        return wire

    def sent(self, wire: WireMessage) -> None:
        """Count a published message's bytes."""
        self.registry.sent(wire.encoded_size)

    # -- receiving

    def receive(self, msg: Any, nbytes: int) -> int | None:
        """Admit a fleet message of ``nbytes`` and insert its keyframe; returns its id in this
        map, None for our own message coming back. Raises :class:`FleetMessageError` (counted)
        when refused; nothing is added then."""
        kf = self.registry.receive(msg, nbytes)
        if kf is None:
            return None
        try:
            return self.pipeline.add_peer_keyframe(kf)
        except ValueError as exc:  # the map holds it already (e.g. restored after a restart)
            err = FleetMessageError("duplicate", f"robot {kf.robot_id} keyframe {kf.keyframe_id}: {exc}", kf.robot_id)
            self.registry.note_rejection(err)
            raise err from exc

    # -- catch-up

    def request(self) -> CatchUpRequest | None:
        """The catch-up request to publish now, or None (off, or not due yet)."""
        with self._lock:
            if not self.cfg.catch_up or not self.timer.due(self.registry.behind()):
                return None
            self.timer.sent()
            return CatchUpRequest.of(self.registry.robot_id, self.registry.session, self.registry.missing())

    def on_request(self, data: Iterable[int], nbytes: int = 0) -> int:
        """A peer's request (UInt32MultiArray ``data``): queue the own keyframes it lacks; returns
        how many were queued. A malformed request is counted and refused (FleetMessageError)."""
        try:
            req = CatchUpRequest.from_data(data)
        except FleetMessageError as exc:
            self.registry.note_rejection(exc, nbytes)
            raise
        if not self.cfg.catch_up:
            return 0
        with self._lock:
            return self.scheduler.on_request(req, self.pipeline.own_keyframe_count)

    def answer(self, publish: Callable[[WireMessage], None]) -> int:
        """Re-publish queued keyframes within the bandwidth budget; returns how many went out."""
        def one(robot_keyframe_id: int) -> int:
            wire = self.message(robot_keyframe_id)
            if wire is None:
                return 0
            publish(wire)
            self.sent(wire)
            return wire.encoded_size

        with self._lock:
            return self.scheduler.run(one)

    # -- diagnostics

    def stats(self) -> dict[str, float]:
        """The registry's values (peers, keyframes and bytes per peer, rejections) plus own
        keyframes sent, their mean bytes, catch-up keyframes re-published and still queued."""
        out = self.registry.stats()
        with self._lock:
            out.update({"keyframes_sent": self.sent_keyframes, "republished": self.scheduler.republished,
                        "republish_pending": len(self.scheduler),
                        "bytes_per_keyframe": round(self.sent_bytes / self.sent_keyframes, 1) if self.sent_keyframes
                        else 0.0, "max_features": self.max_features})
        return out
