"""Why a replay's numbers are thin: which keyframe rule cut how many frames, and the likely
reason when no query keyframe has a true loop. Words for the summary and ``report.json``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import metrics as M

#: A revisit: back within the true-loop radius of a keyframe after travelling this many radii away.
REVISIT_TRAVEL_RADII = 3.0


def keyframe_cuts(results: Sequence[Any]) -> dict[str, int]:
    """Frames the keyframe rules cut, by rule (``FrameResult.rule``), most first."""
    counts = Counter(r.rule or "other" for r in results if not r.is_keyframe)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def describe_cuts(keyframes: int, frames: int, cuts: dict[str, int]) -> str:
    """E.g. ``12 of 160 frames (148 cut: 120 by keyframe_max_similarity, 28 by keyframe_min_interval_s)``."""
    text = f"{keyframes} of {frames} frames"
    if cuts:
        text += f" ({sum(cuts.values())} cut: " + ", ".join(f"{n} by {rule}" for rule, n in cuts.items()) + ")"
    return text


def few_keyframes(keyframes: int, frames: int) -> bool:
    """True when the keyframe rules left too few keyframes for the metrics to mean much."""
    return frames > 0 and (keyframes < 10 or keyframes < 0.1 * frames)


def no_loop_cause(positions: np.ndarray, eligible: np.ndarray, radius: float, yaws: np.ndarray,
                  max_yaw: float | None, detector: Any, frames: int, cuts: dict[str, int]) -> str:
    """The likely reason why no query keyframe has a true loop (see :mod:`.metrics`): too few
    keyframes (naming the rule that cut most), no poses, revisits all inside the detector's
    exclusion window or beyond ``max_yaw``, or a route that never comes back within ``radius``."""
    k = len(positions)
    if few_keyframes(k, frames) and cuts:
        top = next(iter(cuts))
        knob = "stamps going backwards" if top == "time_jump" else f"loosen detector.{top}"
        return f"the keyframe rules left only {describe_cuts(k, frames, cuts)}; {knob}"
    return _geometric_cause(positions, eligible, radius, max_yaw, detector) or f"no revisit within {radius} m qualifies"


def _geometric_cause(positions: np.ndarray, eligible: np.ndarray, radius: float, max_yaw: float | None,
                     detector: Any) -> str:
    k = len(positions)
    has_pose = ~np.isnan(positions).any(axis=1)
    if k < 2:
        return f"there {'is' if k == 1 else 'are'} only {k} keyframe{'' if k == 1 else 's'}"
    if has_pose.sum() < 2:
        return f"only {int(has_pose.sum())} of {k} keyframes have a ground-truth pose"
    d = M.pairwise_distance(positions)
    steps = np.linalg.norm(np.diff(np.where(has_pose[:, None], positions, np.nan), axis=0), axis=1)
    travelled = np.concatenate([[0.0], np.cumsum(np.nan_to_num(steps))])
    earlier = np.tril(np.ones((k, k), dtype=bool), -1)
    away = (travelled[:, None] - travelled[None, :]) > REVISIT_TRAVEL_RADII * radius
    revisits = earlier & away & (d <= radius)
    if not revisits.any():
        returns = d[earlier & away]
        returns = returns[np.isfinite(returns)]
        if not len(returns):
            return (f"the route never comes back: its {travelled[-1]:.1f} m between keyframes are too short to "
                    f"leave and revisit a place (a larger --radius than {radius} m, or a longer run)")
        return (f"the route never comes back within {radius} m of an earlier keyframe (closest return "
                f"{returns.min():.1f} m; a larger --radius, or a run that revisits places)")
    if not (revisits & eligible).any():
        return (f"all {int(revisits.sum())} revisits of an earlier keyframe within {radius} m fall inside the "
                f"detector's exclusion window (exclude_recent_keyframes={detector.exclude_recent_keyframes}, "
                f"exclude_recent_s={detector.exclude_recent_s}, exclude_radius_m={detector.exclude_radius_m})")
    if max_yaw is not None:
        return f"the revisits within {radius} m face more than --max-yaw {max_yaw} degrees away from the earlier view"
    return ""
