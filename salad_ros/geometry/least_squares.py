"""Least-squares machinery of the pose solvers: refinement and first-order covariance.

Covariance (what :class:`Solution.covariance` holds): after RANSAC, a model is refined by
Levenberg-Marquardt on its inliers, then linearised there: with the residual vector r (m
entries) and its Jacobian J with respect to the k local pose parameters (a rotation
perturbation ``R = exp([w]x) R0`` first, then the translation or direction parameters),
``cov = s^2 (J^T J)^-1`` with ``s^2 = |r|^2 / (m - k)``, the residual variance. This is the
first-order covariance of a least-squares estimate under independent, equal keypoint noise. It
knows nothing about errors shared by all points (calibration, depth scale bias, rolling
shutter) or about biased keypoints, and the residuals of RANSAC inliers are truncated at the
threshold, so treat it as optimistic. Singular or ill-conditioned J^T J (degenerate geometry)
gives an infinite covariance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

State = TypeVar("State")
Linearise = Callable[[State], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Solution:
    """A refined two-view model: pose, inlier mask over the input correspondences, covariance of
    the local parameters (rotation first) and residual standard deviation (normalised units)."""

    rotation: np.ndarray
    translation: np.ndarray
    inliers: np.ndarray
    covariance: np.ndarray
    sigma: float

    @property
    def num_inliers(self) -> int:
        """Number of inliers."""
        return int(self.inliers.sum())


def homogeneous(x: np.ndarray) -> np.ndarray:
    """N x 3 rays (x, y, 1) of N x 2 normalised points."""
    x = np.asarray(x, np.float64).reshape(-1, 2)
    return np.column_stack([x, np.ones(len(x))])


def levenberg_marquardt(linearise: Linearise, retract: Callable[[State, np.ndarray], State], state: State,
                        iters: int = 10) -> State:
    """Minimise |r(state)|^2, where ``linearise(state)`` gives (r, dr/dp) for local parameters p
    applied by ``retract``. Levenberg-Marquardt with Marquardt's diagonal scaling: the two-view
    cost has long flat valleys (rotation against translation) where undamped steps overshoot."""
    r, jac = linearise(state)
    cost = float(r @ r)
    lam = 1e-4
    for _ in range(iters):
        jtj, jtr = jac.T @ jac, jac.T @ r
        try:
            step = np.linalg.solve(jtj + lam * np.diag(np.maximum(np.diag(jtj), 1e-12)), -jtr)
        except np.linalg.LinAlgError:
            break
        candidate = retract(state, step)
        r_new, jac_new = linearise(candidate)
        new_cost = float(r_new @ r_new)
        if new_cost < cost:
            done = cost - new_cost <= 1e-6 * cost  # far below what the keypoint noise resolves
            state, r, jac, cost, lam = candidate, r_new, jac_new, new_cost, max(lam / 10, 1e-9)
            if done:
                break
        else:
            lam *= 10
            if lam > 1e6:
                break
    return state


def local_covariance(linearise: Linearise, state: State) -> tuple[np.ndarray, float]:
    """(covariance of the local parameters, residual std); see the module docstring."""
    r, jac = linearise(state)
    k = jac.shape[1]
    dof = r.size - k
    if dof <= 0:
        return np.full((k, k), np.inf), float("nan")
    s2 = float(r @ r) / dof
    jtj = jac.T @ jac
    if not np.isfinite(jtj).all() or np.linalg.cond(jtj) > 1e12:
        return np.full((k, k), np.inf), float(np.sqrt(s2))
    return s2 * np.linalg.inv(jtj), float(np.sqrt(s2))
