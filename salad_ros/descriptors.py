"""Descriptor vector helpers shared by the backends, the database, the detector and evaluation.

:func:`l2_normalize` is the one L2 normalisation of descriptor rows in numpy code (torch code in
the model keeps ``F.normalize``); :func:`unit_rows` adds the input checks of the database.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Smallest norm :func:`l2_normalize` divides by (an all-zero row stays zero).
EPS = 1e-12


def l2_normalize(x: Any, eps: float = EPS) -> np.ndarray:
    """Rows (the last axis) of ``x`` scaled to unit L2 norm, as float32; a row whose norm is
    below ``eps`` is divided by ``eps`` instead. A 1-D input is one row."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def unit_rows(x: Any, dim: int, what: str = "descriptors") -> np.ndarray:
    """Checked, normalised copy of one (``[dim]``) or more (``[N, dim]``) descriptors:
    float32 ``[N, dim]`` with unit rows. Raises ValueError naming ``what`` for another shape,
    a NaN or infinite value or an all-zero row."""
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{what} must have shape (N, {dim}), got {np.shape(x)}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    if (np.linalg.norm(arr, axis=1) == 0).any():
        raise ValueError(f"{what} contain an all-zero vector")
    return l2_normalize(arr, eps=0.0)
