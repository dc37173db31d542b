"""Search exclusions and consistency chains in a database that holds several robots' keyframes.

Keyframes are named ``(robot_id, keyframe_id)``, ``keyframe_id`` being the robot's own
sequence number (for the node's own keyframes: 0, 1, 2, ... in its own order, whatever peers'
keyframes were inserted in between).

* **Exclusions** ("I was just here" is no loop) hold only *within* a robot: the recent-keyframes,
  seconds and radius rules of :func:`salad_ros.exclusions.eligible` apply to the query robot's
  own keyframes, with its own sequence numbers and own keyframe count, so peers' keyframes
  interleaved in the database neither count as "recent" nor are excluded by time (two robots
  at one place at one time is exactly the rendezvous to find) or by a position in another
  robot's map frame. :func:`fleet_eligible` is that mask; the database's over-fetch bound
  (:func:`salad_ros.exclusions.excluded_upper_bound` over all keyframes) stays an upper bound.
* **Consistency** is kept per peer: a match continues a chain only of matches of the *same*
  robot within ``consistency_id_window`` of that robot's keyframe ids (:class:`PeerChains`).
  With one robot this is exactly :meth:`LoopDetector._update_chains`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from salad_ros.exclusions import SearchExclusions, eligible

Key = tuple[int, int]  #: (robot_id, keyframe_id in that robot's sequence)


def fleet_eligible(
    ex: SearchExclusions,
    robot_ids: np.ndarray,
    keyframe_ids: np.ndarray,
    stamps_ns: np.ndarray,
    positions: np.ndarray | None,
    *,
    query_robot_id: int,
    own_count: int | np.ndarray,
    query_stamp_ns: np.ndarray | None,
    query_position: np.ndarray | None,
) -> np.ndarray:
    """Boolean mask: may candidate keyframes ``(robot_ids, keyframe_ids, stamps_ns, positions)``
    be returned for a query of robot ``query_robot_id``, searched when it had ``own_count``
    keyframes of its own? Other robots' keyframes always may; the query robot's own ones as
    :func:`~salad_ros.exclusions.eligible` rules with ``ids`` = ``keyframe_ids`` and
    ``query_count`` = ``own_count``. Arguments broadcast as in ``eligible``."""
    own = np.asarray(robot_ids) == int(query_robot_id)
    rule = eligible(ex, keyframe_ids, stamps_ns, positions, query_count=own_count,
                    query_stamp_ns=query_stamp_ns, query_position=query_position)
    return ~own | rule


class PeerChains:
    """Temporal consistency chains keyed by robot (the detector's rule, per peer).

    :meth:`update` takes the passing matches of one query keyframe: a match ``(r, k)`` extends
    the longest chain of the previous query keyframe that ended at a match ``(r, k')`` with
    ``|k - k'| <= window``; the chains are then replaced by this query's matches, so a query
    without a passing match of robot ``r`` ends ``r``'s chains (and only those are affected).
    """

    def __init__(self, window: int) -> None:
        self.window = int(window)
        self._chains: dict[Key, int] = {}

    def update(self, passing: Iterable[Key]) -> dict[Key, int]:
        """Streak (consecutive consistent query keyframes, this one included) per match."""
        streaks: dict[Key, int] = {}
        for robot, kf in passing:
            prev = max((s for (r, k), s in self._chains.items() if r == robot and abs(k - kf) <= self.window),
                       default=0)
            streaks[(robot, kf)] = prev + 1
        self._chains = streaks
        return streaks

    def reset(self) -> None:
        """Forget every chain."""
        self._chains = {}
