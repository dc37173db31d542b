"""PNG plots of a replay: PR curve, trajectory with loop edges, keyframe similarity matrix.

Uses matplotlib's object API with the Agg canvas (no pyplot, no display, no global state).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
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
) -> Path:
    """Ground-truth path (x-y) with keyframes and loop edges ``(query, match, correct)``
    between keyframe indices: correct green, wrong red, unknown (no pose) grey."""
    fig = Figure(figsize=(6.4, 6.2), layout="constrained")
    ax = fig.add_subplot()
    if len(trajectory_xy):
        ax.plot(trajectory_xy[:, 0], trajectory_xy[:, 1], "-", color="#bbbbbb", lw=1, label="ground truth", zorder=1)
        ax.plot(trajectory_xy[0, 0], trajectory_xy[0, 1], "k^", ms=7, label="start", zorder=4)
    ok = ~np.isnan(keyframe_xy).any(axis=1) if len(keyframe_xy) else np.zeros(0, bool)
    ax.plot(keyframe_xy[ok, 0], keyframe_xy[ok, 1], ".", color="#4575b4", ms=3, label=f"keyframes ({len(keyframe_xy)})",
            zorder=2)
    counts = {True: 0, False: 0, None: 0}
    # Fainter lines when there are many, so the path and the true edges stay visible.
    alpha = 0.85 if len(edges) <= 100 else max(0.15, 0.85 * (100 / len(edges)) ** 0.5)
    for q, j, correct in edges:
        a, b = keyframe_xy[q], keyframe_xy[j]
        if np.isnan(a).any() or np.isnan(b).any():
            counts[None] += 1
            continue
        counts[correct] += 1
        color = TRUE_COLOR if correct else FALSE_COLOR if correct is False else UNKNOWN_COLOR
        # True edges on top: they are usually the fewer and the ones worth seeing.
        ax.plot([a[0], b[0]], [a[1], b[1]], "-", color=color, lw=1.4, alpha=0.85 if correct else alpha,
                zorder=4 if correct else 3)
    # Legend entries for the edge colours even when a kind is absent, so the reader knows.
    ax.plot([], [], "-", color=TRUE_COLOR, lw=2, label=f"true loop candidates ({counts[True]})")
    ax.plot([], [], "-", color=FALSE_COLOR, lw=2, label=f"false loop candidates ({counts[False]})")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x [m]")
    ax.set_ylabel("y [m]")
    ax.grid(alpha=0.3)
    # Below the axes: the path fills the plot, a legend inside would hide part of it.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


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
