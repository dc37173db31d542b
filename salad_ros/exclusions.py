"""The one rule for which keyframes a loop search may return ("I was just here" is no loop).

When a query is searched while ``count`` keyframes exist (ids ``0..count-1``), keyframe ``j`` is
*eligible* unless it is excluded by any of

* **recent**: ``j >= count - recent`` (the ``recent`` newest keyframes);
* **time**: ``|stamp_j - stamp_query| < within_ns`` (only when ``within_ns > 0``);
* **radius**: the distance between the two positions is ``< radius_m`` (only when
  ``radius_m > 0`` and positions are given; a missing (NaN) position never excludes).

The keyframe database applies :func:`eligible` to its search candidates, and the evaluation
builds its all-pairs matrix from it (:func:`salad_ros.evaluation.metrics.eligible_matrix`,
where query ``q`` is searched when ``count = q`` keyframes exist). Only numpy is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SearchExclusions:
    """Exclusion amounts of a search; all 0 excludes nothing."""

    recent: int = 0  #: the newest N keyframes
    within_ns: int = 0  #: keyframes stamped within this many ns of the query
    radius_m: float = 0.0  #: keyframes closer than this to the query's position [m]

    def __post_init__(self) -> None:
        if self.recent < 0 or self.within_ns < 0 or self.radius_m < 0:
            raise ValueError("exclusion amounts must be >= 0")

    @classmethod
    def from_detector(cls, cfg: Any) -> SearchExclusions:
        """The exclusions of a :class:`~salad_ros.detector.DetectorConfig` (``exclude_recent_*``,
        ``exclude_radius_m``); seconds become integer nanoseconds here and nowhere else."""
        return cls(int(cfg.exclude_recent_keyframes), int(round(cfg.exclude_recent_s * 1e9)),
                   float(cfg.exclude_radius_m))


def eligible(
    ex: SearchExclusions,
    ids: np.ndarray,
    stamps_ns: np.ndarray,
    positions: np.ndarray | None,
    *,
    query_count: int | np.ndarray,
    query_stamp_ns: np.ndarray | None,
    query_position: np.ndarray | None,
) -> np.ndarray:
    """Boolean mask: may candidate keyframe ``(ids, stamps_ns, positions)`` be returned for a
    query searched when ``query_count`` keyframes exist, stamped ``query_stamp_ns`` at
    ``query_position``? Arguments broadcast against each other (positions carry a last axis of
    3). ``query_stamp_ns`` None skips the time rule; ``positions`` or ``query_position`` None
    skips the radius rule."""
    ok = np.asarray(ids) < np.asarray(query_count) - ex.recent
    if ex.within_ns > 0 and query_stamp_ns is not None:
        ok = ok & (np.abs(np.asarray(stamps_ns) - query_stamp_ns) >= ex.within_ns)
    if ex.radius_m > 0 and positions is not None and query_position is not None:
        d = np.linalg.norm(np.asarray(positions) - query_position, axis=-1)
        ok = ok & ~(d < ex.radius_m)  # NaN (no position) compares False: never excluded
    return ok


def excluded_upper_bound(
    ex: SearchExclusions,
    stamps_ns: np.ndarray,
    stamps_sorted: bool,
    positions: np.ndarray | None,
    query_stamps_ns: np.ndarray | None,
    query_positions: np.ndarray | None,
    n_queries: int,
) -> np.ndarray:
    """Per query (int64[n_queries]): at most how many of the keyframes (all of them:
    ``stamps_ns`` [N], ``positions`` [N, 3]) the rule excludes, the rules' counts added up; a
    search fetches this many extra results to filter. ``query_stamps_ns`` [Q] and
    ``query_positions`` [Q, 3] as in :func:`eligible` (None: rule skipped); with
    ``stamps_sorted`` the time rule is counted by binary search."""
    extra = np.full(n_queries, min(ex.recent, len(stamps_ns)), dtype=np.int64)
    if ex.within_ns > 0 and query_stamps_ns is not None:
        extra += _count_within(stamps_ns, stamps_sorted, query_stamps_ns, ex.within_ns)
    if ex.radius_m > 0 and positions is not None and query_positions is not None:
        d = np.linalg.norm(positions[None, :, :] - query_positions[:, None, :], axis=2)
        extra += np.sum(d < ex.radius_m, axis=1)  # NaN (no pose) compares False
    return extra


def _count_within(stamps: np.ndarray, is_sorted: bool, ref: np.ndarray, window: int) -> np.ndarray:
    """Per reference stamp: how many ``stamps`` lie strictly within ``window`` ns of it."""
    if is_sorted:
        lo = np.searchsorted(stamps, ref - window, side="right")
        hi = np.searchsorted(stamps, ref + window, side="left")
        return np.maximum(hi - lo, 0)
    return np.array([np.count_nonzero(np.abs(stamps - r) < window) for r in ref], dtype=np.int64)
