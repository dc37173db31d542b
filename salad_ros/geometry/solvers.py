"""Pose solvers with depth, rotation-only and homography, on undistorted normalised points.

Solvers take the query's and the match's points (N x 2, x/z and y/z in the optical frame) and
return the query camera's pose in the match camera's frame, ``X_match = R X_query + t``; the
essential-matrix solver is in :mod:`salad_ros.geometry.essential`. Covariances as defined in
:mod:`salad_ros.geometry.least_squares`.
"""

from __future__ import annotations

import cv2
import numpy as np

from .least_squares import Solution, homogeneous, levenberg_marquardt, local_covariance
from .transforms import exp_so3, fit_rotation


def _reprojection(r: np.ndarray, t: np.ndarray, obj: np.ndarray, img: np.ndarray,
                  with_translation: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Residuals project(R obj + t) - img (2N) and their Jacobian with respect to a rotation
    perturbation exp([w]x) R (3) and, optionally, a translation increment (3)."""
    pc = obj @ r.T + t
    z = np.where(np.abs(pc[:, 2]) < 1e-12, 1e-12, pc[:, 2])
    u, v = pc[:, 0] / z, pc[:, 1] / z
    res = np.column_stack([u - img[:, 0], v - img[:, 1]]).ravel()
    # d(pc)/dw = -[pc - t]x ; d(proj)/d(pc) = [[1/z, 0, -u/z], [0, 1/z, -v/z]]
    q = pc - t
    dproj = np.zeros((len(pc), 2, 3))
    dproj[:, 0, 0] = dproj[:, 1, 1] = 1.0 / z
    dproj[:, 0, 2] = -u / z
    dproj[:, 1, 2] = -v / z
    neg_skew = np.zeros((len(pc), 3, 3))
    neg_skew[:, 0, 1], neg_skew[:, 0, 2] = q[:, 2], -q[:, 1]
    neg_skew[:, 1, 0], neg_skew[:, 1, 2] = -q[:, 2], q[:, 0]
    neg_skew[:, 2, 0], neg_skew[:, 2, 1] = q[:, 1], -q[:, 0]
    jw = dproj @ neg_skew
    jac = np.concatenate([jw, dproj], axis=2) if with_translation else jw
    return res, jac.reshape(2 * len(pc), -1)


def _pose_retract(s: tuple[np.ndarray, np.ndarray], p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return exp_so3(p[:3]) @ s[0], s[1] + p[3:6]


def solve_pnp(obj: np.ndarray, img: np.ndarray, threshold: float, confidence: float = 0.999,
              iterations: int = 1000) -> Solution | None:
    """Pose (R, t) with ``img ~ project(R obj + t)`` by RANSAC, then Levenberg-Marquardt on the inliers.

    ``obj``: N x 3 points in the frame whose pose is wanted relative to the camera of ``img``
    (N x 2 normalised); ``threshold`` is the reprojection-error bound in normalised units.
    Covariance parameters: rotation perturbation (3), translation (3). None if RANSAC fails.
    """
    obj = np.ascontiguousarray(obj, np.float64).reshape(-1, 3)
    img = np.ascontiguousarray(img, np.float64).reshape(-1, 2)
    if len(obj) < 6:
        return None
    # OpenCV's USAC PnP (uniform sampling, MSAC score, no local optimisation: the refinement
    # below does that) found more inliers than the classic P3P RANSAC here in a third of the time
    params = cv2.UsacParams()
    params.threshold = threshold
    params.confidence = confidence
    params.maxIterations = iterations
    params.sampler = cv2.SAMPLING_UNIFORM
    params.score = cv2.SCORE_METHOD_MSAC
    params.loMethod = cv2.LOCAL_OPTIM_NULL
    params.isParallel = False
    ok, _, rvec, tvec, idx = cv2.solvePnPRansac(obj, img, np.eye(3), None, params=params)
    if not ok or idx is None or len(idx) < 6:
        return None
    state = (exp_so3(rvec.ravel()), tvec.ravel().astype(np.float64))
    mask = np.zeros(len(obj), bool)
    mask[idx.ravel()] = True
    for _ in range(2):  # refine, re-select inliers under the refined pose, refine again
        o, i = obj[mask], img[mask]
        state = levenberg_marquardt(lambda s, o=o, i=i: _reprojection(*s, o, i), _pose_retract, state)
        cam = obj @ state[0].T + state[1]
        err = np.linalg.norm(cam[:, :2] / np.maximum(cam[:, 2:], 1e-12) - img, axis=1)
        new_mask = (err < threshold) & (cam[:, 2] > 0)
        if new_mask.sum() < 6 or np.array_equal(new_mask, mask):
            break
        mask = new_mask
    cov, sigma = local_covariance(lambda s: _reprojection(*s, obj[mask], img[mask]), state)
    return Solution(state[0], state[1], mask, cov, sigma)


# --- Rotation only and homography -----------------------------------------------------------

def solve_rotation(xq: np.ndarray, xm: np.ndarray, mask: np.ndarray) -> Solution | None:
    """Rotation-only model ``x_m ~ R x_q`` (a camera turning about its centre) fitted to the
    masked correspondences: Procrustes on unit rays, then Levenberg-Marquardt on reprojection
    error. Translation is zero; covariance parameters: rotation perturbation (3)."""
    xq = np.asarray(xq, np.float64).reshape(-1, 2)
    xm = np.asarray(xm, np.float64).reshape(-1, 2)
    if mask.sum() < 3:
        return None
    hq, hm = homogeneous(xq[mask]), homogeneous(xm[mask])
    r0 = fit_rotation(hq / np.linalg.norm(hq, axis=1, keepdims=True), hm / np.linalg.norm(hm, axis=1, keepdims=True))
    zero = np.zeros(3)

    def linearise(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _reprojection(r, zero, hq, xm[mask], with_translation=False)

    r = levenberg_marquardt(linearise, lambda r, p: exp_so3(p) @ r, r0)
    cov, sigma = local_covariance(linearise, r)
    return Solution(r, np.zeros(3), mask.copy(), cov, sigma)


def rotation_errors(r: np.ndarray, xq: np.ndarray, xm: np.ndarray) -> np.ndarray:
    """Per-correspondence reprojection error (normalised units) of the rotation-only model."""
    rays = homogeneous(xq) @ r.T
    proj = rays[:, :2] / np.where(np.abs(rays[:, 2:]) < 1e-12, 1e-12, rays[:, 2:])
    return np.linalg.norm(proj - np.asarray(xm, np.float64).reshape(-1, 2), axis=1)


def fit_homography(xq: np.ndarray, xm: np.ndarray, threshold: float, confidence: float = 0.999,
                   iterations: int = 1000) -> tuple[np.ndarray | None, np.ndarray]:
    """RANSAC homography ``x_m ~ H x_q`` and its inlier mask (None and all False when none is found)."""
    xq = np.ascontiguousarray(xq, np.float64).reshape(-1, 2)
    xm = np.ascontiguousarray(xm, np.float64).reshape(-1, 2)
    if len(xq) < 4:
        return None, np.zeros(len(xq), bool)
    # USAC_FAST: as many inliers as plain RANSAC here at a fifth of the time
    h, mask = cv2.findHomography(xq, xm, cv2.USAC_FAST, threshold, maxIters=iterations, confidence=confidence)
    if h is None or mask is None:
        return None, np.zeros(len(xq), bool)
    return h, mask.ravel() > 0


def homography_motions(h: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The motions (R, unit t) a homography of a plane decomposes into (up to four; pure
    rotations, with no translation direction, left out). Seeds for the essential-matrix search."""
    if h is None:
        return []
    _, rs, ts, _ = cv2.decomposeHomographyMat(h, np.eye(3))
    out = []
    for r, t in zip(rs, ts, strict=True):
        n = float(np.linalg.norm(t))
        if n > 1e-9:
            out.append((np.asarray(r, np.float64), t.ravel() / n))
    return out
