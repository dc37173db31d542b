"""``relative_pose.png``: cumulative distributions of the relative-pose errors of a replay
(rotation, metric translation, translation direction) per evaluated set, with the targets; a
fleet replay draws one row per kind (intra- and inter-robot).

matplotlib's object API on the Agg canvas, like :mod:`.plots`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .pose_eval import PoseSample

#: (set name, label, colour)
SETS = (("with_depth", "ground-truth pairs, with depth", "#2c7bb6"),
        ("monocular", "ground-truth pairs, monocular", "#fdae61"),
        ("accepted_true_candidates", "accepted true candidates", "#1a9850"))
#: (attribute, axis label, target of the README)
PANELS = (("rotation_error_deg", "rotation error [deg]", None),
          ("translation_error_m", "translation error [m] (metric poses)", 0.10),
          ("direction_error_deg", "direction error [deg] (direction-only poses)", 10.0))


def plot_pose_errors(samples: dict[str, list[PoseSample]], path: str | Path, title: str = "") -> Path:
    """Three panels of error CDFs; each curve reaches the fraction of its set's pairs that got
    such an estimate (the rest failed or did not apply)."""
    return plot_pose_error_rows([("", samples)], path, title)


def plot_pose_error_rows(rows: Sequence[tuple[str, dict[str, list[PoseSample]]]], path: str | Path,
                         title: str = "") -> Path:
    """One row of the three panels per ``(label, samples)`` (e.g. intra- and inter-robot pairs
    of a fleet); the label prefixes the row's axis titles."""
    fig = Figure(figsize=(13.0, 4.2 * len(rows)), layout="constrained")
    axes = np.asarray(fig.subplots(len(rows), 3)).reshape(len(rows), 3)
    for row_axes, (row_label, samples) in zip(axes, rows, strict=True):
        for ax, panel in zip(row_axes, PANELS, strict=True):
            _panel(ax, samples, panel)
            if row_label:
                ax.set_title(row_label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return path


def _panel(ax: Any, samples: dict[str, list[PoseSample]], panel: tuple[str, str, float | None]) -> None:
    attr, label, target = panel
    drawn = False
    for name, set_label, colour in SETS:
        group = samples.get(name) or []
        values = np.sort([v for v in (getattr(s, attr) for s in group) if math.isfinite(v)])
        if not values.size:
            continue
        frac = np.arange(1, values.size + 1) / len(group)
        ax.step(np.r_[0.0, values], np.r_[0.0, frac], where="post", color=colour, lw=1.8,
                label=f"{set_label} ({values.size}/{len(group)}, median {np.median(values):.3g})")
        drawn = True
    if target is not None:
        ax.axvline(target, color="#777777", ls="--", lw=1, label=f"target median {target:g}")
    if not drawn:
        ax.text(0.5, 0.5, "no estimates of this kind", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(label)
    ax.set_ylabel("fraction of pairs")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
