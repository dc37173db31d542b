"""int8 descriptors with one scale each: the compact SALAD descriptor of the fleet topic.

A unit descriptor ``x`` is sent as ``q = round(x / s)`` (int8) with ``s = max|x| / 127``: nothing
clips, the largest component is exact, and every other one is off by at most ``s / 2``. For
8448-D unit vectors the dequantised descriptor keeps a cosine of ~0.9999 to the original (see
``test/test_fleet_wire.py``), a quarter of float32's bytes. Only numpy is imported.
"""

from __future__ import annotations

import math

import numpy as np

from salad_ros.descriptors import l2_normalize


def quantize(descriptor: np.ndarray) -> tuple[np.ndarray, float]:
    """int8 codes and scale of the L2-normalised ``descriptor`` (1-D); ValueError when it is
    all-zero or not finite."""
    x = l2_normalize(np.asarray(descriptor, dtype=np.float32).reshape(-1))
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if not math.isfinite(peak) or peak == 0.0:
        raise ValueError("descriptor is all-zero or not finite")
    scale = np.float32(peak / 127.0)
    q = np.clip(np.rint(x / scale), -127, 127).astype(np.int8)
    return q, float(scale)


def dequantize(q: np.ndarray, scale: float) -> np.ndarray:
    """Unit float32 descriptor of int8 codes ``q`` with ``scale``."""
    return l2_normalize(np.asarray(q, dtype=np.float32) * np.float32(scale))
