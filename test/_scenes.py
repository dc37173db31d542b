"""Synthetic test scenes (ROS-free): numbered RGB 'places' that look the same for the same number."""

from __future__ import annotations

import cv2
import numpy as np


def scene(i: int, h: int = 240, w: int = 320) -> np.ndarray:
    """A synthetic RGB 'place' number ``i``: colour field, shapes and texture, same for same ``i``."""
    rng = np.random.default_rng(1000 + i)
    small = rng.integers(0, 256, (int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3)).astype(np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(5, 15))):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x0, y0), (x0 + int(rng.integers(10, 120)), y0 + int(rng.integers(10, 120))), c, -1)
        else:
            cv2.circle(img, (x0, y0), int(rng.integers(5, 60)), c, -1)
    noise = rng.integers(0, 40, (h, w, 1)).astype(np.uint8)
    return cv2.add(img, np.repeat(noise, 3, axis=2))
