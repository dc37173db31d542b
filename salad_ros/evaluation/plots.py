"""PNG plots of a replay: PR curve, trajectory with loop edges, keyframe similarity matrix.

Uses matplotlib's object API with the Agg canvas (no pyplot, no display, no global state).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from .metrics import PRCurve

TRUE_COLOR = "#1a9850"
FALSE_COLOR = "#d73027"
UNKNOWN_COLOR = "#999999"


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
    return path


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def plot_pr_curve(curve: PRCurve, ap: float | None, max_recall: float | None, path: str | Path, title: str = "") -> Path:
    """Precision against recall over the top-1 score threshold (step curve)."""
    fig = Figure(figsize=(5.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    if len(curve.recall) and not np.isnan(curve.recall).any():
        r = np.r_[0.0, curve.recall]
        p = np.r_[curve.precision[0], curve.precision]
        ax.step(r, p, where="post", color="#2c7bb6", lw=2)
        ax.plot(curve.recall, curve.precision, ".", color="#2c7bb6", ms=3)
    else:
        ax.text(0.5, 0.5, "no queries with a true loop:\nprecision-recall undefined", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    ax.set_title((title + "\n" if title else "") + f"AP {_fmt(ap)}   max recall @ 100% precision {_fmt(max_recall)}",
                 fontsize=9)
    return _save(fig, path)


def plot_trajectory(
    trajectory_xy: np.ndarray,
    keyframe_xy: np.ndarray,
    edges: Sequence[tuple[int, int, bool | None]],
    path: str | Path,
    title: str = "",
    trajectory_s: np.ndarray | None = None,
) -> Path:
    """Ground-truth path (x-y) with keyframes and loop edges ``(query, match, correct)`` between
    keyframe indices, in two panels so that hundreds of candidates stay readable: true edges
    (green) on the left, false ones (red) on the right. Per query only its first edge of each
    kind is drawn (its best true and best false accepted candidate: give them best first); the
    titles count all of them. With
    ``trajectory_s`` (seconds from the start, one per path point) the path is coloured by time,
    so laps over the same streets can be told apart."""
    fig = Figure(figsize=(13.0, 4.8), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    counts = {True: 0, False: 0, None: 0}
    drawn: dict[bool | None, list[tuple[int, int]]] = {True: [], False: [], None: []}
    seen: set[tuple[int, bool | None]] = set()
    for q, j, correct in edges:
        unknown = np.isnan(keyframe_xy[q]).any() or np.isnan(keyframe_xy[j]).any()
        kind = None if unknown else correct
        counts[kind] += 1
        if (q, kind) not in seen:  # the query's best candidate of this kind
            seen.add((q, kind))
            drawn[kind].append((q, j))
    ok = ~np.isnan(keyframe_xy).any(axis=1) if len(keyframe_xy) else np.zeros(0, bool)
    colour_bar = None
    for ax, kind, colour, name in ((axes[0], True, TRUE_COLOR, "true"), (axes[1], False, FALSE_COLOR, "false")):
        colour_bar = _path(ax, trajectory_xy, trajectory_s) or colour_bar
        ax.plot(keyframe_xy[ok, 0], keyframe_xy[ok, 1], ".", color="#4d4d4d", ms=2.5, zorder=2,
                label=f"keyframes ({len(keyframe_xy)})")
        lines = [(keyframe_xy[q], keyframe_xy[j]) for q, j in drawn[kind]]
        if lines:
            alpha = 0.9 if len(lines) <= 40 else max(0.2, 0.9 * (40 / len(lines)) ** 0.5)
            ax.add_collection(LineCollection(lines, colors=colour, linewidths=1.3, alpha=alpha, zorder=3))
            starts, ends = np.array([a for a, _ in lines]), np.array([b for _, b in lines])
            # Markers at both ends: a true edge is short (within the loop radius), a line alone hides.
            ax.plot(starts[:, 0], starts[:, 1], ".", color=colour, ms=5, zorder=4)
            ax.plot(ends[:, 0], ends[:, 1], "o", mfc="none", mec=colour, ms=6, mew=1.0, zorder=4)
        ax.plot([], [], "-", color=colour, lw=2, label=f"best {name} candidate of {len(lines)} queries (\u2022 query, o match)")
        if len(trajectory_xy):
            ax.plot(trajectory_xy[0, 0], trajectory_xy[0, 1], "k^", ms=8, zorder=5, label="start")
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel("x [m]")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, frameon=False)
        ax.set_title(f"{counts[kind]} {name} loop candidate{'' if counts[kind] == 1 else 's'} accepted", fontsize=10,
                     color=colour)
    axes[0].set_ylabel("y [m]")
    if colour_bar is not None:
        fig.colorbar(colour_bar, ax=axes, shrink=0.7, label="ground-truth path: time from start [s]")
    suptitle = title + (f"   ({counts[None]} candidates without a pose not drawn)" if counts[None] else "")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return _save(fig, path)


def _path(ax, xy: np.ndarray, seconds: np.ndarray | None):
    """The ground-truth path, coloured by time when ``seconds`` is given (returns the mappable)."""
    if not len(xy):
        return None
    if seconds is None or len(seconds) != len(xy) or len(xy) < 2:
        ax.plot(xy[:, 0], xy[:, 1], "-", color="#bbbbbb", lw=1.2, zorder=1)
        return None
    segments = np.stack([xy[:-1], xy[1:]], axis=1)
    lc = LineCollection(segments, cmap="viridis", linewidths=2.0, alpha=0.55, zorder=1)
    lc.set_array(np.asarray(seconds[:-1], dtype=float))
    ax.add_collection(lc)
    ax.autoscale_view()
    return lc


def plot_similarity(
    similarity: np.ndarray, truth: np.ndarray, path: str | Path, title: str = "", step: int = 1,
    total: int | None = None,
) -> Path:
    """Keyframe-by-keyframe cosine similarity with the ground-truth loop pairs outlined.

    ``similarity`` and ``truth`` may be of every ``step``-th keyframe of ``total``."""
    n = similarity.shape[0]
    total = total if total is not None else n
    gt = truth | truth.T  # loops are stored query-row/earlier-column: show both halves
    fig = Figure(figsize=(6.2, 5.4), layout="constrained")
    ax = fig.add_subplot()
    extent = (-0.5 * step, (n - 0.5) * step, (n - 0.5) * step, -0.5 * step)
    im = ax.imshow(similarity, cmap="viridis", interpolation="nearest", extent=extent)
    fig.colorbar(im, ax=ax, shrink=0.85, label="cosine similarity")
    if gt.any():
        xs = np.arange(n) * step
        ax.contour(xs, xs, gt.astype(float), levels=[0.5], colors="#ff3030", linewidths=1.0)
        ax.plot([], [], "-", color="#ff3030", label="ground-truth loops")
        ax.legend(fontsize=8, loc="upper right")
    ax.set_xlabel("keyframe")
    ax.set_ylabel("keyframe")
    ax.set_title((title + "\n" if title else "") + f"{total} keyframes" + (f" (every {step}th shown)" if step > 1 else ""),
                 fontsize=9)
    return _save(fig, path)


#: Colours of robots' paths in the fleet plot (matplotlib's tab10 without its green and red,
#: which mark true and false loops).
ROBOT_COLORS = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
INTRA_COLOR = "#4d4d4d"


def _best_edges(edges: Sequence[tuple], kind: bool | None) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """Of edges ``(query key, query xy, match xy, correct)`` of one kind, the first per query
    (give them best first) and how many there are in all."""
    seen: set = set()
    lines, count = [], 0
    for key, a, b, ok in edges:
        if ok is not kind:
            continue
        count += 1
        if key not in seen:
            seen.add(key)
            lines.append((a, b))
    return lines, count


def plot_fleet_trajectories(
    paths: Sequence[tuple[int, np.ndarray]],
    keyframes: Sequence[tuple[int, np.ndarray]],
    intra_edges: Sequence[tuple[Any, np.ndarray, np.ndarray, bool | None]],
    inter_edges: Sequence[tuple[Any, np.ndarray, np.ndarray, bool | None]],
    path: str | Path,
    title: str = "",
) -> Path:
    """All robots' ground-truth paths ``(robot_id, xy)`` in the shared world frame with their
    keyframes, accepted loop candidates within a robot (thin grey) and between robots (green:
    true, red: false, grey dashed: no pose to judge). Edges are ``(query key, query xy, match
    xy, correct)``, best first; per query only its best edge of each kind is drawn (the legend
    counts all), so that a random model's hundreds of false candidates stay readable."""
    fig = Figure(figsize=(8.0, 7.0), layout="constrained")
    ax = fig.add_subplot()
    for n, (robot, xy) in enumerate(paths):
        colour = ROBOT_COLORS[n % len(ROBOT_COLORS)]
        if len(xy):
            ax.plot(xy[:, 0], xy[:, 1], "-", color=colour, lw=1.5, alpha=0.7, zorder=1, label=f"robot {robot}")
            ax.plot(xy[0, 0], xy[0, 1], "^", color=colour, ms=8, zorder=5)
        kf = dict(keyframes).get(robot)
        if kf is not None and len(kf):
            ok = ~np.isnan(kf).any(axis=1)
            ax.plot(kf[ok, 0], kf[ok, 1], ".", color=colour, ms=3, zorder=2)
    intra = [(key, a, b, None) for key, a, b, _ in intra_edges]
    lines, count = _best_edges(intra, None)
    if lines:
        ax.add_collection(LineCollection(lines, colors=INTRA_COLOR, linewidths=0.6, alpha=0.35, zorder=2))
    ax.plot([], [], "-", color=INTRA_COLOR, lw=0.8, alpha=0.5, label=f"{count} intra-robot candidates")
    # False first, true last: true edges are short (within the loop radius) and must stay on top.
    for kind, colour, style, name, z in ((None, UNKNOWN_COLOR, "--", "unscored", 3), (False, FALSE_COLOR, "-", "false", 3),
                                         (True, TRUE_COLOR, "-", "true", 4)):
        lines, count = _best_edges(inter_edges, kind)
        if lines:
            alpha = 0.9 if len(lines) <= 40 else max(0.2, 0.9 * (40 / len(lines)) ** 0.5)
            ax.add_collection(LineCollection(lines, colors=colour, linewidths=1.4, linestyles=style, alpha=alpha,
                                             zorder=z))
            ends = np.array([b for _, b in lines])
            ax.plot(ends[:, 0], ends[:, 1], "o", mfc="none", mec=colour, ms=6, mew=1.0, zorder=z)
        if count or kind is not None:
            ax.plot([], [], style, color=colour, lw=2, label=f"{count} {name} inter-robot candidates (o match)")
    ax.autoscale_view()
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x [m]")
    ax.set_ylabel("y [m]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, frameon=False)
    ax.set_title((title + "\n" if title else "") + "ground truth in the world frame (\u25b2 start; per query its best "
                 "candidate of each kind drawn)", fontsize=9)
    return _save(fig, path)
