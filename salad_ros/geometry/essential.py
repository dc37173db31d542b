"""Rotation and translation direction from an essential matrix, with a multi-seed search.

Near-planar scenes and small baselines give the essential-matrix cost several valleys, and one
RANSAC run often ends in the wrong one while the true motion has *more* support. So the search
refines several seeds (OpenCV's USAC essential matrix plus the motions a homography decomposes
into), scores each with MSAC over all matches and keeps the best.

A rival motion that scores almost as well is evidence of a second valley the local covariance
(see :mod:`salad_ros.geometry.least_squares`) cannot see. Rivals distinct from the best are
treated as modes of a mixture weighted by their likelihood relative to the best,
``w = exp(-dchi2 / 2)`` (dchi2: MSAC score difference over the residual variance); their
second moment about the best, ``sum(w d d^T) / (1 + sum(w))`` with d the parameter offset,
is added to the covariance. An equally good rival at distance d thus adds a std of d / 2;
one rejected at 3 sigma (dchi2 = 9) adds 0.1 d.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from .least_squares import Linearise, Solution, homogeneous, levenberg_marquardt, local_covariance
from .transforms import angle_between, exp_so3, log_so3, skew

#: Two motions are "different" when their rotations or directions differ by more than this.
DISTINCT_ROTATION_RAD = math.radians(1.0)
DISTINCT_DIRECTION_RAD = math.radians(5.0)
#: Seeds with less than this fraction of the best seed's raw inlier count are not refined.
SEED_SUPPORT = 0.75


def sampson_distances(r: np.ndarray, t: np.ndarray, hq: np.ndarray, hm: np.ndarray) -> np.ndarray:
    """Signed Sampson distances of rays ``hq`` -> ``hm`` (N x 3, z = 1) to E = [t]x R."""
    return _sampson_batch((skew(t) @ r)[None], hq, hm)[0]


def _sampson_batch(es: np.ndarray, hq: np.ndarray, hm: np.ndarray) -> np.ndarray:
    """Sampson distances for a stack of essential matrices (K x 3 x 3) -> K x N."""
    ex = es @ hq.T  # K x 3 x N: epipolar lines in the match image
    etx = es.transpose(0, 2, 1) @ hm.T  # K x 3 x N: epipolar lines in the query image
    den = np.sqrt(ex[:, 0] ** 2 + ex[:, 1] ** 2 + etx[:, 0] ** 2 + etx[:, 1] ** 2)
    return np.sum(hm.T[None] * ex, axis=1) / np.maximum(den, 1e-15)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # np.cross costs ~10 us of argument handling per call on 3-vectors
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def _tangent_basis(t: np.ndarray) -> np.ndarray:
    """3 x 2 orthonormal basis of the plane orthogonal to a unit vector."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(t[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    a = _cross(t, helper)
    a /= np.linalg.norm(a)
    return np.column_stack([a, _cross(t, a)])


def _direction_retract(s: tuple[np.ndarray, np.ndarray], p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = s[1] + _tangent_basis(s[1]) @ p[3:5]
    return exp_so3(p[:3]) @ s[0], t / np.linalg.norm(t)


#: [e_i]x for the three axes: generators of rotation perturbations
_GENERATORS = np.array([skew(np.eye(3)[i]) for i in range(3)])


def _sampson_linearise(hq: np.ndarray, hm: np.ndarray) -> Linearise:
    """(Sampson distances, forward-difference Jacobian) for the rotation (3) + direction (2)
    parameters; the six essential matrices are evaluated in one batch. The perturbed matrices
    are first-order in the step (E + eps dE), exact to O(eps^2)."""
    eps = 1e-7

    def linearise(s: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        r, t = s
        tx = skew(t)
        e0 = tx @ r
        basis = _tangent_basis(t)
        es = np.empty((6, 3, 3))
        es[0] = e0
        es[1:4] = e0 + eps * (tx @ _GENERATORS @ r)
        es[4] = e0 + eps * (skew(basis[:, 0]) @ r)
        es[5] = e0 + eps * (skew(basis[:, 1]) @ r)
        d = _sampson_batch(es, hq, hm)
        return d[0], ((d[1:] - d[0]) / eps).T
    return linearise


def solve_essential(xq: np.ndarray, xm: np.ndarray, threshold: float, confidence: float = 0.999,
                    iterations: int = 1000, seeds: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> Solution | None:
    """Rotation and unit translation of the query in the match frame from an essential matrix.

    Candidates: USAC's essential matrix (cheirality-checked decomposition) and ``seeds`` (R, unit
    t); each is refined by Levenberg-Marquardt on the Sampson distances of its inliers and scored
    by MSAC (cheirality failures count as outliers). Covariance parameters: rotation perturbation
    (3), direction on the unit sphere (2, radians). None when no candidate has 8 inliers.
    """
    xq = np.ascontiguousarray(xq, np.float64).reshape(-1, 2)
    xm = np.ascontiguousarray(xm, np.float64).reshape(-1, 2)
    if len(xq) < 8:
        return None
    hq, hm = homogeneous(xq), homogeneous(xm)
    candidates = list(seeds)
    e, emask = cv2.findEssentialMat(xq, xm, np.eye(3), method=cv2.USAC_DEFAULT, prob=confidence,
                                    threshold=threshold, maxIters=iterations)
    if e is not None and e.shape[0] >= 3 and emask is not None:
        r, t, mask = _decompose(e[:3], hq, hm, emask.ravel() > 0)
        if mask.sum() >= 8:
            candidates.insert(0, (r, t))
    # refinement is the expensive part: skip seeds far behind in raw support (every seed that won
    # on the test scenes had at least 85 % of the best raw support)
    support = [int(_inliers(r, t, hq, hm, threshold).sum()) for r, t in candidates]
    keep = [c for c, n in zip(candidates, support, strict=True) if n >= max(8, SEED_SUPPORT * max(support, default=0))]
    refined = [c for c in (_refine(r, t, hq, hm, threshold) for r, t in keep) if c is not None]
    if not refined:
        return None
    refined.sort(key=lambda c: c[0])
    score, r, t, mask = refined[0]
    cov, sigma = local_covariance(_sampson_linearise(hq[mask], hm[mask]), (r, t))
    if np.isfinite(cov).all() and sigma > 0:
        cov = cov + _rival_spread(refined, threshold / sigma)
    return Solution(r, t, mask, cov, sigma)


def _rival_spread(refined: list[tuple[float, np.ndarray, np.ndarray, np.ndarray]], thr_over_sigma: float) -> np.ndarray:
    """Second moment about the best ``refined[0]`` of the likelihood-weighted distinct rivals
    (see the module docstring); d = (rotation vector of R_rival R^T, tangent-plane direction offset)."""
    score, r, t, _ = refined[0]
    basis = _tangent_basis(t)
    spread = np.zeros((5, 5))
    total = 1.0
    for other_score, r2, t2, _ in refined[1:]:
        rot = log_so3(r2 @ r.T)
        if np.linalg.norm(rot) <= DISTINCT_ROTATION_RAD and angle_between(t2, t) <= DISTINCT_DIRECTION_RAD:
            continue
        tangent = basis.T @ t2
        norm = float(np.linalg.norm(tangent))
        # the offset along the sphere: the angle between the directions, in the tangent direction
        direction = tangent / norm * angle_between(t2, t) if norm > 1e-12 else np.array([math.pi, 0.0])
        d = np.concatenate([rot, direction])
        weight = math.exp(-0.5 * max(0.0, other_score - score) * thr_over_sigma ** 2)
        spread += weight * np.outer(d, d)
        total += weight
    return spread / total


def _refine(r: np.ndarray, t: np.ndarray, hq: np.ndarray, hm: np.ndarray,
            threshold: float) -> tuple[float, np.ndarray, np.ndarray, np.ndarray] | None:
    """(MSAC score in inlier units, R, t, inlier mask) after refining a candidate, or None."""
    state = (r, t)
    mask = _inliers(r, t, hq, hm, threshold)
    for _ in range(2):  # refine, re-select inliers under the refined model, refine again
        if mask.sum() < 8:
            return None
        state = levenberg_marquardt(_sampson_linearise(hq[mask], hm[mask]), _direction_retract, state)
        new_mask = _inliers(*state, hq, hm, threshold)
        if np.array_equal(new_mask, mask):
            break
        mask = new_mask
    if mask.sum() < 8:
        return None
    d2 = np.minimum((sampson_distances(*state, hq, hm) / threshold) ** 2, 1.0)
    score = float(np.sum(np.where(_in_front(*state, hq, hm), d2, 1.0)))
    return score, state[0], state[1], mask


def _inliers(r: np.ndarray, t: np.ndarray, hq: np.ndarray, hm: np.ndarray, threshold: float) -> np.ndarray:
    """Correspondences within ``threshold`` Sampson distance and in front of both cameras."""
    return (np.abs(sampson_distances(r, t, hq, hm)) < threshold) & _in_front(r, t, hq, hm)


def _decompose(e: np.ndarray, hq: np.ndarray, hm: np.ndarray,
               mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The one of E's four (R, t) with most masked points in front of both cameras, and those points.

    Written out rather than cv2.recoverPose, which took ~60 ms for 250 points here."""
    r1, r2, t = cv2.decomposeEssentialMat(e)
    t = t.ravel() / np.linalg.norm(t)
    best = (r1, t, np.zeros_like(mask))
    for r in (r1, r2):
        for sign in (1.0, -1.0):
            front = mask & _in_front(r, sign * t, hq, hm)
            if front.sum() > best[2].sum():
                best = (r, sign * t, front)
    return best


def _in_front(r: np.ndarray, t: np.ndarray, hq: np.ndarray, hm: np.ndarray) -> np.ndarray:
    """Cheirality: the triangulated point lies in front of both cameras (midpoint depths > 0)."""
    a = hq @ r.T  # query rays in the match frame; the query centre is at t
    # solve  t + s a = u b  for (s, u) in least squares, per correspondence
    aa = np.sum(a * a, axis=1)
    bb = np.sum(hm * hm, axis=1)
    ab = np.sum(a * hm, axis=1)
    ta = a @ t
    tb = hm @ t
    det = ab * ab - aa * bb
    safe = np.where(np.abs(det) < 1e-15, 1e-15, det)
    s = (bb * ta - ab * tb) / safe
    u = (ab * ta - aa * tb) / safe
    return (s > 0) & (u > 0)
