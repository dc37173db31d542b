"""The node's debug view, without ROS: query | SALAD heat map over the query | best match.

The heat map is the per-patch mass SALAD assigns to real clusters rather than the dustbin
(the paper's Fig. 3): bright patches are the ones that shape the descriptor.
"""

from __future__ import annotations

import cv2
import numpy as np

_BANNER = 22  # pixels of text above the panels
_WHITE, _GREEN, _ORANGE, _GREY = (255, 255, 255), (80, 220, 80), (255, 170, 40), (70, 70, 70)


def fit_height(rgb: np.ndarray, height: int) -> np.ndarray:
    """``rgb`` scaled to ``height`` rows, aspect kept (INTER_AREA: these are downscales)."""
    h, w = rgb.shape[:2]
    width = max(1, round(w * height / h))
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA if h > height else cv2.INTER_LINEAR)


def heat_overlay(rgb: np.ndarray, mass: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Per-patch ``mass [rows, cols]`` as a colour map blended over ``rgb`` (max-normalised).

    The network sees a square resize of the image, so stretching the patch grid over the
    full image puts each patch back over the pixels it came from.
    """
    mass = np.asarray(mass, dtype=np.float32)
    lo, hi = float(mass.min()), float(mass.max())
    norm = (mass - lo) / (hi - lo) if hi > lo else np.zeros_like(mass)
    h, w = rgb.shape[:2]
    up = cv2.resize(norm, (w, h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.clip(up * 255.0, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(rgb, 1.0 - alpha, colour, alpha, 0.0)


def _placeholder(height: int, text: str) -> np.ndarray:
    panel = np.full((height, max(height * 4 // 3, 1), 3), _GREY, np.uint8)
    cv2.putText(panel, text, (8, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, _WHITE, 1, cv2.LINE_AA)
    return panel


def compose(
    query: np.ndarray,
    *,
    match: np.ndarray | None = None,
    mass: np.ndarray | None = None,
    query_id: int | None = None,
    match_id: int | None = None,
    score: float | None = None,
    verified: bool | None = None,
    height: int = 240,
    match_robot_id: int | None = None,
) -> np.ndarray:
    """The debug image (RGB uint8): query, heat map over the query, best match, and a banner.

    ``match`` None draws a "no candidate" panel; ``mass`` None (backend without heat maps) a
    "no heat map" panel, so the layout is always the same three panels. ``match_robot_id``
    names another robot's keyframe (``robot 2 #17``; peers send no images).
    """
    match_name = f"#{match_id}" if match_robot_id is None else f"robot {match_robot_id} #{match_id}"
    q = fit_height(query, height)
    heat = heat_overlay(q, mass) if mass is not None else _placeholder(height, "no heat map")
    m = fit_height(match, height) if match is not None else _placeholder(
        height, "no candidate" if match_id is None else f"{match_name}: no image")
    panels = np.concatenate([q, heat, m], axis=1)
    out = np.zeros((height + _BANNER, panels.shape[1], 3), np.uint8)
    out[_BANNER:] = panels
    text = f"query #{query_id}" if query_id is not None else "query (not a keyframe)"
    colour = _WHITE
    if match_id is not None:
        text += f"   best match {match_name}"
        if score is not None:
            text += f"   score {score:.3f}"
        if verified is not None:
            text += "   verified" if verified else "   rejected"
            colour = _GREEN if verified else _ORANGE
    cv2.putText(out, text, (6, _BANNER - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
    return out
