"""Relative pose of a loop closure: the query keyframe's pose in the match keyframe's frame.

Convention: ``X_match = R X_query + t``, both in camera optical frames (REP-103: x right,
y down, z forward) unless converted with :meth:`RelativePose.in_base_frame`. ``status``:

* 2 (:data:`STATUS_METRIC`): rotation and metric translation, from PnP on keypoints with depth
  (3-D points of one keyframe, their image in the other).
* 1 (:data:`STATUS_DIRECTION`): rotation and translation direction (``|t| = 1``), from an
  essential matrix, when no usable depth exists.
* 0 (:data:`STATUS_NONE`): no pose; ``reason`` says why. A status-0 pose may still carry a
  trustworthy rotation: then ``rotation_std_rad`` is finite (a camera that only turned, where
  the translation direction is unobservable). Otherwise rotation is identity and stds are NaN.

Degenerate geometry lowers the status instead of producing a pose: too few inliers, a pure
rotation (status 0 with the rotation), a scene a homography explains about as well as the
essential matrix (one plane, or too little parallax), too little parallax for a direction, PnP
inliers bunched in one image strip, and uncertainties above the limits of :class:`PoseConfig`.

Uncertainty: ``rotation_std_rad`` and ``translation_std_m`` are the square roots of the largest
eigenvalue of the rotation and translation blocks of the solver's covariance, the standard
deviation along the worst axis. That covariance is first order, ``s^2 (J^T J)^-1`` of the
inlier residuals (:mod:`salad_ros.geometry.least_squares`); for the essential matrix it is
widened by rival motions that explain the matches almost as well
(:mod:`salad_ros.geometry.essential`). For status 1 ``translation_std_m`` is the std of the
unit direction (radians, as |t| = 1). A back end can use ``diag(rot^2 I3, trans^2 I3)`` as a
conservative covariance. Blind to calibration error and biased keypoints, it is optimistic:
on the test scenes the median error is about 1.5 stds.

Geometric verification: ``inliers`` (and ``inliers / matches``) are the solver's, also when
geometry makes the status 0, so "same place?" and "usable pose?" are separate answers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .geometry.camera import CameraModel, PoseInputError, camera_from_matrix
from .geometry.essential import solve_essential
from .geometry.features import PoseFeatureExtractor, PoseFeatures
from .geometry.least_squares import Solution
from .geometry.solvers import fit_homography, homography_motions, rotation_errors, solve_pnp, solve_rotation
from .geometry.transforms import exp_so3, invert_transform, make_transform, matrix_to_quaternion, transform_from_xyz_quat

STATUS_NONE, STATUS_DIRECTION, STATUS_METRIC = 0, 1, 2
METHODS = ("auto", "pnp", "essential", "none")


@dataclass(frozen=True)
class PoseConfig:
    """Thresholds of the pose estimator. Pixel values are at the feature detection scale
    (the ``max_side`` thumbnail, 320 px by default)."""

    ransac_px: float = 1.5  #: RANSAC inlier bound (reprojection / Sampson error)
    min_inliers: int = 20  #: fewer solver inliers -> status 0
    min_parallax_px: float = 1.0  #: median residual of a rotation-only fit below this -> pure rotation
    planar_ratio: float = 0.8  #: homography inliers >= this x essential inliers -> planar / low parallax
    min_direction_parallax_px: float = 4.0  #: median rotation-compensated parallax a direction needs
    min_spread_px: float = 8.0  #: PnP inliers must spread at least this much (std along the thin axis)
    max_rotation_std_rad: float = math.radians(2.0)  #: above this no pose is claimed
    max_translation_std_m: float = 0.25  #: metric poses less certain than this fall back to status <= 1
    max_direction_std_rad: float = math.radians(10.0)  #: directions less certain than this -> status 0
    confidence: float = 0.999  #: RANSAC confidence
    iterations: int = 1000  #: RANSAC iteration cap

    def __post_init__(self) -> None:
        if self.ransac_px <= 0 or self.min_inliers < 6 or not 0 < self.planar_ratio <= 1 or not 0 < self.confidence < 1:
            raise ValueError(f"invalid PoseConfig {self}")


@dataclass(frozen=True)
class RelativePose:
    """The query keyframe's pose in the match keyframe's frame (``X_match = R X_query + t``)."""

    status: int
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))
    inliers: int = 0  #: solver inliers: the geometric verification when intrinsics are known
    matches: int = 0  #: ratio-test matches the solver started from
    rotation_std_rad: float = math.nan
    translation_std_m: float = math.nan  #: metres (status 2); unit-direction std, radians (status 1)
    method: str = "none"  #: "pnp", "essential" or "none" (a rotation-only fit reports "essential")
    reason: str = ""

    @property
    def inlier_ratio(self) -> float:
        """inliers / matches (0 without matches)."""
        return self.inliers / self.matches if self.matches else 0.0

    @property
    def has_rotation(self) -> bool:
        """True when ``rotation`` is an estimate (status >= 1, or a pure rotation with status 0)."""
        return math.isfinite(self.rotation_std_rad)

    def quaternion_xyzw(self) -> np.ndarray:
        """The rotation as a unit quaternion (x, y, z, w), w >= 0."""
        return matrix_to_quaternion(self.rotation)

    def matrix(self) -> np.ndarray:
        """4x4 transform match <- query."""
        return make_transform(self.rotation, self.translation)

    def inverse(self) -> RelativePose:
        """The match keyframe's pose in the query's frame. The translation std grows by the
        rotation std times |t| (the rotation now acts on t), added in quadrature."""
        inv = invert_transform(self.matrix())
        lever = self.rotation_std_rad * float(np.linalg.norm(self.translation))
        t_std = math.hypot(self.translation_std_m, lever) if self.status > 0 else self.translation_std_m
        return replace(self, rotation=inv[:3, :3], translation=inv[:3, 3], translation_std_m=t_std)

    def in_base_frame(self, camera_to_base: np.ndarray | Sequence[float],
                      match_camera_to_base: np.ndarray | Sequence[float] | None = None) -> RelativePose:
        """The pose between the two keyframes' base frames, ``T_base = E_m T_cam E_q^-1``, with
        ``E_q`` = ``camera_to_base`` the query camera's pose in its base frame (base <- camera:
        a 4x4 matrix or ``x y z qx qy qz qw``) and ``E_m`` = ``match_camera_to_base`` the match
        camera's (default: the same mount, ``E_m = E_q``; two robots of a fleet may differ).

        Metric poses: the translation std grows by rotation std x |query camera offset| in
        quadrature. Direction-only poses (status 1) have no base-frame direction when the
        cameras' offsets do not cancel (``p_m - R_base p_q`` is not zero; the offset term scales
        with the unknown baseline): they become status 0 keeping the rotation.
        """
        e_q = _as_transform(camera_to_base)
        e_m = e_q if match_camera_to_base is None else _as_transform(match_camera_to_base)
        out = e_m @ self.matrix() @ invert_transform(e_q)
        lever = float(np.linalg.norm(e_q[:3, 3]))
        moved = replace(self, rotation=out[:3, :3], translation=out[:3, 3])
        if self.status == STATUS_METRIC:
            return replace(moved, translation_std_m=math.hypot(self.translation_std_m, self.rotation_std_rad * lever))
        if self.status == STATUS_DIRECTION:
            offset_effect = float(np.linalg.norm(e_m[:3, 3] - out[:3, :3] @ e_q[:3, 3]))
            if offset_effect > 1e-9:
                return replace(moved, status=STATUS_NONE, translation=np.zeros(3), translation_std_m=math.nan,
                               reason="translation direction undefined in base frames (camera offset from base)")
            return replace(moved, translation=e_m[:3, :3] @ self.translation)
        return moved


def _as_transform(e: np.ndarray | Sequence[float]) -> np.ndarray:
    """A 4x4 transform from a 4x4 matrix or ``x y z qx qy qz qw``."""
    a = np.asarray(e, np.float64)
    return a if a.shape == (4, 4) else transform_from_xyz_quat(a.ravel())


def _none(reason: str, matches: int = 0, inliers: int = 0, method: str = "none") -> RelativePose:
    return RelativePose(STATUS_NONE, matches=matches, inliers=inliers, method=method, reason=reason)


def ransac_iterations(cfg: PoseConfig, n: int, sample: int) -> int:
    """RANSAC iterations for ``n`` correspondences: enough to draw, with ``cfg.confidence``, one
    all-inlier sample of ``sample`` points from any model that ``cfg.min_inliers`` of them
    support (``log(1 - p) / log(1 - w^s)``, ``w = min_inliers / n``), at most ``cfg.iterations``.

    A model with fewer inliers gives status 0 anyway, and one with more is found sooner (OpenCV
    stops adaptively), so the bound only shortens searches that would end without an acceptable
    model: few matches between unrelated images, which otherwise ran the full 1000 iterations
    (0.2-0.5 s for 20-30 matches)."""
    w = min(1.0, cfg.min_inliers / max(1, n))
    if w >= 1.0:
        return min(cfg.iterations, 50)
    need = math.log(1.0 - cfg.confidence) / math.log1p(-(w ** sample))
    return int(max(1, min(cfg.iterations, math.ceil(need))))


def _worst_std(cov: np.ndarray) -> float:
    """Square root of the largest eigenvalue of a covariance block (inf when unknown)."""
    if not np.isfinite(cov).all():
        return math.inf
    return float(math.sqrt(max(0.0, float(np.linalg.eigvalsh(0.5 * (cov + cov.T)).max()))))


@functools.lru_cache(maxsize=4)
def _default_extractor(kind: str = "orb") -> PoseFeatureExtractor:
    # shared by every caller that passes no extractor: give each thread its own instead
    return PoseFeatureExtractor(kind)


def estimate_from_features(query: PoseFeatures, match: PoseFeatures, *, method: str = "auto",
                           config: PoseConfig | None = None,
                           extractor: PoseFeatureExtractor | None = None) -> RelativePose:
    """Relative pose from two keyframes' :class:`PoseFeatures` (see the module docstring).

    ``method``: ``auto`` (PnP when either keyframe has depth at the matches, else the essential
    matrix; a failed PnP falls back to the essential matrix), ``pnp`` (metric only), ``essential``
    (ignore depth) or ``none``. ``extractor`` matches the features (default: ORB/SIFT with the
    verifier's ratio test).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    cfg = config or PoseConfig()
    if method == "none":
        return _none("pose estimation disabled")
    ia, ib = (extractor or _default_extractor(query.kind)).match(query, match)
    n = len(ia)
    if n < cfg.min_inliers:
        return _none(f"only {n} matches (< {cfg.min_inliers})", matches=n)
    xq = query.points[ia].astype(np.float64)
    xm = match.points[ib].astype(np.float64)
    focal = min(query.focal_px, match.focal_px)
    pnp_reason = ""
    if method in ("auto", "pnp"):
        dq = query.depth[ia] if query.depth is not None else None
        dm = match.depth[ib] if match.depth is not None else None
        if dq is None and dm is None:
            if method == "pnp":
                return _none("method 'pnp' needs depth", matches=n, method="pnp")
        else:
            pose = _metric_pose(xq, xm, dq, dm, focal, cfg)
            if pose.status == STATUS_METRIC or method == "pnp":
                return replace(pose, matches=n)
            pnp_reason = pose.reason
    pose = _monocular_pose(xq, xm, focal, cfg)
    reason = f"{pose.reason}; PnP: {pnp_reason}" if pnp_reason and method == "auto" else pose.reason
    return replace(pose, matches=n, reason=reason)


def _metric_pose(xq: np.ndarray, xm: np.ndarray, dq: np.ndarray | None, dm: np.ndarray | None,
                 focal: float, cfg: PoseConfig) -> RelativePose:
    """PnP from the side with more valid depths: its 3-D points, the other side's image."""
    vq = np.isfinite(dq) if dq is not None else np.zeros(len(xq), bool)
    vm = np.isfinite(dm) if dm is not None else np.zeros(len(xm), bool)
    use_match = vm.sum() >= vq.sum()
    valid = vm if use_match else vq
    if valid.sum() < cfg.min_inliers:
        return _none(f"only {int(valid.sum())} matches with valid depth", method="pnp")
    src, dst, depth = (xm, xq, dm) if use_match else (xq, xm, dq)
    obj = np.column_stack([src[valid], np.ones(int(valid.sum()))]) * depth[valid, None]
    sol = solve_pnp(obj, dst[valid], cfg.ransac_px / focal, cfg.confidence, ransac_iterations(cfg, len(obj), 4))
    if sol is None or sol.num_inliers < cfg.min_inliers:
        k = 0 if sol is None else sol.num_inliers
        return _none(f"{k} PnP inliers (< {cfg.min_inliers})", inliers=k, method="pnp")
    pts = dst[valid][sol.inliers] * focal
    spread = math.sqrt(max(0.0, float(np.linalg.eigvalsh(np.cov(pts.T)).min())))
    if spread < cfg.min_spread_px:
        return _none(f"PnP inliers bunched together (spread {spread:.1f} px)", inliers=sol.num_inliers, method="pnp")
    r, t, t_cov = _pnp_output(sol, invert=use_match)
    rot_std, t_std = _worst_std(sol.covariance[:3, :3]), _worst_std(t_cov)
    if rot_std > cfg.max_rotation_std_rad or t_std > cfg.max_translation_std_m:
        return _none(f"PnP pose too uncertain (rotation std {math.degrees(rot_std):.2f} deg, "
                     f"translation std {t_std:.3f} m)", inliers=sol.num_inliers, method="pnp")
    return RelativePose(STATUS_METRIC, r, t, sol.num_inliers, 0, rot_std, t_std, "pnp",
                        f"{sol.num_inliers} PnP inliers")


def _pnp_output(sol: Solution, invert: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(R, t, translation covariance) in the match <- query convention.

    PnP on the match's 3-D points gives query <- match; its inverse's translation -R^T t
    depends on rotation and translation, so its covariance is propagated through the
    Jacobian of that map (numerically, with the solver's rotation perturbation)."""
    r, t = sol.rotation, sol.translation
    if not invert:
        return r, t, sol.covariance[3:, 3:]

    def inv_t(p: np.ndarray) -> np.ndarray:
        rp = exp_so3(p[:3]) @ r
        return -rp.T @ (t + p[3:])

    base = inv_t(np.zeros(6))
    jac = np.column_stack([(inv_t(np.eye(6)[i] * 1e-7) - base) / 1e-7 for i in range(6)])
    cov = sol.covariance
    t_cov = jac @ cov @ jac.T if np.isfinite(cov).all() else np.full((3, 3), np.inf)
    return r.T, base, t_cov


def _monocular_pose(xq: np.ndarray, xm: np.ndarray, focal: float, cfg: PoseConfig) -> RelativePose:
    """Essential matrix with the degeneracy checks: pure rotation, planar / low parallax,
    ambiguous motion, too little parallax for a direction, uncertainty."""
    thr = cfg.ransac_px / focal
    h, h_mask = fit_homography(xq, xm, thr, cfg.confidence, cfg.iterations)
    sol = solve_essential(xq, xm, thr, cfg.confidence, ransac_iterations(cfg, len(xq), 5),
                          seeds=homography_motions(h))
    if sol is None or sol.num_inliers < cfg.min_inliers:
        k = 0 if sol is None else sol.num_inliers
        return _none(f"{k} essential-matrix inliers (< {cfg.min_inliers})", inliers=k, method="essential")
    n_e, n_h = sol.num_inliers, int(h_mask.sum())

    def fail(reason: str) -> RelativePose:
        return _none(reason, inliers=n_e, method="essential")

    if n_h >= cfg.planar_ratio * n_e:
        # a homography explains the matches: a plane, too little parallax, or a camera that only
        # turned, the one case with a trustworthy rotation (a homography that is a rotation)
        rot = solve_rotation(xq, xm, h_mask)
        if rot is not None:
            parallax = float(np.median(rotation_errors(rot.rotation, xq[sol.inliers], xm[sol.inliers]))) * focal
            if parallax < cfg.min_parallax_px:
                return _rotation_only(xq, xm, rot, thr, parallax, cfg)
        return fail(f"planar scene or too little parallax: homography explains {n_h} of {n_e} essential inliers")
    parallax = float(np.median(rotation_errors(sol.rotation, xq[sol.inliers], xm[sol.inliers]))) * focal
    if parallax < cfg.min_direction_parallax_px:
        return fail(f"median parallax {parallax:.1f} px is too little for a translation direction")
    rot_std, dir_std = _worst_std(sol.covariance[:3, :3]), _worst_std(sol.covariance[3:, 3:])
    if rot_std > cfg.max_rotation_std_rad or dir_std > cfg.max_direction_std_rad:
        return fail(f"essential pose too uncertain (rotation std {math.degrees(rot_std):.2f} deg, "
                    f"direction std {math.degrees(dir_std):.1f} deg)")
    return RelativePose(STATUS_DIRECTION, sol.rotation, sol.translation, n_e, 0, rot_std, dir_std, "essential",
                        f"{n_e} essential-matrix inliers")


def _rotation_only(xq: np.ndarray, xm: np.ndarray, rot: Solution, thr: float, parallax: float,
                   cfg: PoseConfig) -> RelativePose:
    """Status 0 with the rotation of a camera that only turned (translation unobservable)."""
    mask = rotation_errors(rot.rotation, xq, xm) < thr
    refined = solve_rotation(xq, xm, mask) if mask.sum() >= cfg.min_inliers else None
    if refined is None:
        return _none(f"pure rotation with {int(mask.sum())} inliers", inliers=int(mask.sum()), method="essential")
    rot_std = _worst_std(refined.covariance)
    reason = f"pure rotation (median parallax {parallax:.2f} px): translation direction unobservable"
    if rot_std > cfg.max_rotation_std_rad:
        return _none(reason, inliers=refined.num_inliers, method="essential")
    return RelativePose(STATUS_NONE, refined.rotation, np.zeros(3), refined.num_inliers, 0, rot_std, math.nan,
                        "essential", reason)


def estimate_relative_pose(query_image: np.ndarray, match_image: np.ndarray, camera_matrix: np.ndarray | CameraModel,
                           dist_coeffs: Sequence[float] | np.ndarray | None = None,
                           query_depth: np.ndarray | None = None, match_depth: np.ndarray | None = None, *,
                           method: str = "auto", distortion_model: str = "plumb_bob",
                           config: PoseConfig | None = None,
                           extractor: PoseFeatureExtractor | None = None) -> RelativePose:
    """Relative pose of two images of one camera: the query's pose in the match's frame.

    Images: uint8 RGB or grey, full resolution (features are detected on a 320-px thumbnail).
    ``camera_matrix``: 3x3 K (with ``dist_coeffs`` of ``distortion_model``: plumb_bob,
    rational_polynomial or equidistant) or a :class:`CameraModel`. Depths: float metres aligned
    with the images, NaN/0 = invalid; all-invalid depth falls back to the essential matrix.
    Invalid K, an image of another size than the camera's, or depth of another size or dtype
    raise :class:`~salad_ros.geometry.camera.PoseInputError` (a ValueError with a ``kind``).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    q_shape, m_shape = np.asarray(query_image).shape, np.asarray(match_image).shape
    camera = camera_from_matrix(camera_matrix, dist_coeffs, distortion_model, q_shape)
    camera.check_image(m_shape, "match image")
    if q_shape[:2] != m_shape[:2]:
        raise PoseInputError("image_size_mismatch", f"query image {q_shape[1]}x{q_shape[0]} and match image "
                             f"{m_shape[1]}x{m_shape[0]} differ in size but share one camera_matrix")
    if method == "none":
        return _none("pose estimation disabled")
    ex = extractor or _default_extractor()
    use_depth = method != "essential"
    q = ex.extract(query_image, camera, query_depth if use_depth else None)
    m = ex.extract(match_image, camera, match_depth if use_depth else None)
    return estimate_from_features(q, m, method=method, config=config, extractor=ex)
