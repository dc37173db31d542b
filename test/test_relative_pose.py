"""Relative pose of loop closures: rendered scenes with exact geometry, real photographs with
known geometry, degenerate geometry, bad input, distortion, uncertainty and the pose helpers.

Convention under test: X_match = R X_query + t (the query keyframe's pose in the match frame).
"""

from __future__ import annotations

import functools
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from _pose_scenes import (  # noqa: E402
    ROOM_CASES,
    K,
    aloe_stereo,
    direction_error_deg,
    distort_equidistant,
    distort_plumb_bob,
    distorted_rays,
    load_rgb,
    plane,
    pose,
    real_room,
    relative,
    render,
    rot,
    rotated_view,
    rotation_error_deg,
)

from salad_ros.geometry.camera import CameraModel, PoseInputError  # noqa: E402
from salad_ros.geometry.feature_store import PoseFeatureStore  # noqa: E402
from salad_ros.geometry.features import PoseFeatureExtractor, PoseFeatures  # noqa: E402
from salad_ros.geometry.transforms import invert_transform, make_transform, quaternion_to_matrix  # noqa: E402
from salad_ros.relative_pose import (  # noqa: E402
    STATUS_DIRECTION,
    STATUS_METRIC,
    STATUS_NONE,
    PoseConfig,
    RelativePose,
    estimate_from_features,
    estimate_relative_pose,
)
from salad_ros.verification import sift_available  # noqa: E402


@functools.cache
def _planes():
    return real_room()


@functools.cache
def room_pair(case: str, rays_key: str = "pinhole"):
    """(query rgb, query depth, match rgb, match depth, R, t) of a ROOM_CASES pair, cached."""
    aq, tq, am, tm = ROOM_CASES[case]
    rays = None if rays_key == "pinhole" else distorted_rays(K, *DISTORTIONS[rays_key])
    world_q, world_m = pose(rot(*aq), tq), pose(rot(*am), tm)
    iq, dq = render(_planes(), world_q, rays=rays)
    im, dm = render(_planes(), world_m, rays=rays)
    r, t = relative(world_q, world_m)
    return iq, dq, im, dm, r, t


DISTORTIONS = {
    "plumb_bob": (np.array([-0.28, 0.09, 0.001, -0.0015, -0.01]), "plumb_bob"),
    "equidistant": (np.array([0.05, -0.02, 0.01, -0.003]), "equidistant"),
}


# --- rendered scenes with exact ground truth --------------------------------------------------

@pytest.mark.parametrize("case", sorted(ROOM_CASES))
@pytest.mark.parametrize("side", ["match_depth", "query_depth"])
def test_metric_pose_with_depth(case: str, side: str) -> None:
    iq, dq, im, dm, r, t = room_pair(case)
    depth = {"match_depth": dm} if side == "match_depth" else {"query_depth": dq}
    p = estimate_relative_pose(iq, im, K, **depth)
    assert p.status == STATUS_METRIC and p.method == "pnp", p.reason
    assert rotation_error_deg(p.rotation, r) < 1.0
    assert np.linalg.norm(p.translation - t) < 0.05
    assert p.inliers >= 20 and p.matches >= p.inliers
    assert 0 < p.rotation_std_rad < math.radians(1.0) and 0 < p.translation_std_m < 0.05


@pytest.mark.parametrize("case", sorted(ROOM_CASES))
def test_monocular_pose_gives_rotation_and_direction(case: str) -> None:
    iq, _, im, _, r, t = room_pair(case)
    p = estimate_relative_pose(iq, im, K)
    assert p.status == STATUS_DIRECTION and p.method == "essential", p.reason
    assert rotation_error_deg(p.rotation, r) < 2.0
    assert direction_error_deg(p.translation, t) < 10.0
    assert abs(np.linalg.norm(p.translation) - 1.0) < 1e-9
    assert math.isfinite(p.rotation_std_rad) and math.isfinite(p.translation_std_m)


def test_essential_method_ignores_depth() -> None:
    iq, dq, im, dm, r, t = room_pair("sideways")
    p = estimate_relative_pose(iq, im, K, None, dq, dm, method="essential")
    assert p.status == STATUS_DIRECTION and direction_error_deg(p.translation, t) < 10.0


def test_pure_rotation_with_depth_is_metric_with_zero_translation() -> None:
    # turning on the spot is not degenerate when depth is known: PnP measures t = 0
    world_q, world_m = pose(rot(0, 9, 0), (0.1, 0.0, 0.2)), pose(rot(1, -2, 0), (0.1, 0.0, 0.2))
    iq, _ = render(_planes(), world_q)
    im, dm = render(_planes(), world_m)
    r, t = relative(world_q, world_m)
    assert np.allclose(t, 0.0, atol=1e-12)
    p = estimate_relative_pose(iq, im, K, match_depth=dm)
    assert p.status == STATUS_METRIC, p.reason
    assert rotation_error_deg(p.rotation, r) < 1.0 and np.linalg.norm(p.translation) < 0.03


# --- real photographs with known geometry -----------------------------------------------------

def test_real_stereo_pair_with_depth_is_metric() -> None:
    left, right, k, depth, b = aloe_stereo()
    # right keyframe as query, left (with depth) as match: X_left = X_right + (B, 0, 0)
    p = estimate_relative_pose(right, left, k, match_depth=depth)
    assert p.status == STATUS_METRIC, p.reason
    assert rotation_error_deg(p.rotation, np.eye(3)) < 1.0
    assert np.linalg.norm(p.translation - [b, 0.0, 0.0]) < 0.03
    # the other way round, depth on the query side: X_right = X_left - (B, 0, 0)
    p = estimate_relative_pose(left, right, k, query_depth=depth)
    assert p.status == STATUS_METRIC, p.reason
    assert rotation_error_deg(p.rotation, np.eye(3)) < 1.0
    assert np.linalg.norm(p.translation - [-b, 0.0, 0.0]) < 0.03


def test_real_stereo_pair_monocular() -> None:
    left, right, k, _, b = aloe_stereo()
    p = estimate_relative_pose(left, right, k)
    assert p.status == STATUS_DIRECTION, p.reason
    assert rotation_error_deg(p.rotation, np.eye(3)) < 2.0
    assert direction_error_deg(p.translation, np.array([-b, 0.0, 0.0])) < 10.0


@pytest.mark.parametrize("angles", [((0, 3, 0), (2, -4, 1)), ((0, 0, 0), (0, 10, 0)), ((1, 1, 0), (0, 1.5, 0))])
def test_pure_rotation_of_a_real_photo_gives_rotation_only(angles) -> None:
    photo = load_rgb("leuven.jpg")
    h, w = photo.shape[:2]
    k_photo = np.array([[420.0, 0, (w - 1) / 2], [0, 420.0, (h - 1) / 2], [0, 0, 1]])
    k = np.array([[400.0, 0, 159.5], [0, 400.0, 119.5], [0, 0, 1]])
    r_q, r_m = rot(*angles[0]), rot(*angles[1])
    iq = rotated_view(photo, k_photo, r_q, k, (320, 240))
    im = rotated_view(photo, k_photo, r_m, k, (320, 240))
    p = estimate_relative_pose(iq, im, k)
    # no translation direction is claimed (status 0), but the rotation is measured and trusted
    assert p.status == STATUS_NONE and "pure rotation" in p.reason
    assert p.has_rotation and rotation_error_deg(p.rotation, r_m @ r_q.T) < 1.0
    assert np.all(p.translation == 0) and math.isnan(p.translation_std_m)


@functools.cache
def planar_pair(tq: tuple[float, float, float]):
    wall = [plane((0.0, 0.0, 4.0), 10.0, 6.0, 4.5, load_rgb("leuven.jpg"))]
    world_q, world_m = pose(rot(0, -5, 0), tq), pose(np.eye(3), (0, 0, 0))
    iq, _ = render(wall, world_q)
    im, dm = render(wall, world_m)
    return iq, im, dm, *relative(world_q, world_m)


@pytest.mark.parametrize("tq", [(0.5, 0.0, 0.2), (0.2, 0.1, 0.5), (1.0, 0.0, 0.0)])
def test_planar_scene_monocular_claims_no_pose(tq) -> None:
    iq, im, _, _, _ = planar_pair(tq)
    p = estimate_relative_pose(iq, im, K)
    assert p.status == STATUS_NONE and "planar" in p.reason, p.reason
    assert p.inliers >= 100  # the views do match: refusing is about geometry, not matching


@pytest.mark.parametrize("tq", [(0.5, 0.0, 0.2), (1.0, 0.0, 0.0)])
def test_planar_scene_with_depth_is_metric(tq) -> None:
    iq, im, dm, r, t = planar_pair(tq)
    p = estimate_relative_pose(iq, im, K, match_depth=dm)
    assert p.status == STATUS_METRIC, p.reason
    assert rotation_error_deg(p.rotation, r) < 1.0 and np.linalg.norm(p.translation - t) < 0.05


# --- degenerate and bad input -----------------------------------------------------------------

def test_featureless_images_give_status_0() -> None:
    blank = np.full((480, 640, 3), 128, np.uint8)
    p = estimate_relative_pose(blank, blank, K, match_depth=np.ones((480, 640), np.float32))
    assert p.status == STATUS_NONE and p.matches == 0 and "matches" in p.reason


def test_unrelated_images_give_status_0() -> None:
    street = load_rgb("leuven.jpg")[:370, :427]
    aloe = load_rgb("aloe_left.jpg")
    k = np.array([[380.0, 0, 213.0], [0, 380.0, 184.5], [0, 0, 1]])
    for depth in (None, np.full(aloe.shape[:2], 2.0, np.float32)):
        p = estimate_relative_pose(street, aloe, k, match_depth=depth)
        assert p.status == STATUS_NONE, p.reason


@pytest.mark.parametrize("k, needle", [
    (np.zeros((3, 3)), "focal length"),
    (np.full((3, 3), np.nan), "non-finite"),
    (np.array([[500.0, 0, 319.5], [0, np.inf, 239.5], [0, 0, 1]]), "non-finite"),
    (np.array([[-500.0, 0, 319.5], [0, 500, 239.5], [0, 0, 1]]), "focal length"),
    (np.array([[500.0, 0, 319.5], [0, 500, 239.5], [0, 0, 0]]), "last row"),
    (np.eye(2), "9 elements"),
])
def test_invalid_camera_matrix_raises(k, needle: str) -> None:
    img = np.zeros((480, 640), np.uint8)
    with pytest.raises(PoseInputError, match=needle) as err:
        estimate_relative_pose(img, img, k)
    assert err.value.kind == "invalid_camera_info"


def test_image_size_mismatch_raises() -> None:
    iq, _, im, _, _, _ = room_pair("sideways")
    small = iq[::2, ::2]
    with pytest.raises(PoseInputError, match="camera_info says 640x480") as err:
        estimate_relative_pose(small, small, CameraModel(K, width=640, height=480))
    assert err.value.kind == "image_size_mismatch"
    with pytest.raises(PoseInputError, match="principal point"):  # K of 640x480 on a 320x240 image
        estimate_relative_pose(small[:, :150], small[:, :150], K)
    with pytest.raises(PoseInputError, match="differ in size"):
        estimate_relative_pose(iq, iq[:400], K)


@pytest.mark.parametrize("fill", [0.0, np.nan, np.inf, -1.0])
def test_invalid_depth_everywhere_falls_back_to_essential(fill: float) -> None:
    iq, _, im, dm, r, t = room_pair("sideways")
    bad = np.full_like(dm, fill)
    p = estimate_relative_pose(iq, im, K, query_depth=bad, match_depth=bad)
    assert p.status == STATUS_DIRECTION and p.method == "essential", p.reason
    assert "valid depth" in p.reason
    assert direction_error_deg(p.translation, t) < 10.0


def test_depth_of_wrong_size_or_type_raises() -> None:
    iq, _, im, dm, _, _ = room_pair("sideways")
    with pytest.raises(PoseInputError, match="depth is 320x240 but the image is 640x480") as err:
        estimate_relative_pose(iq, im, K, match_depth=dm[::2, ::2])
    assert err.value.kind == "depth_size_mismatch"
    with pytest.raises(PoseInputError, match="float metres") as err:
        estimate_relative_pose(iq, im, K, match_depth=(dm * 1000).astype(np.uint16))
    assert err.value.kind == "depth_encoding"


def test_methods() -> None:
    iq, dq, im, dm, _, _ = room_pair("sideways")
    assert estimate_relative_pose(iq, im, K, method="none").status == STATUS_NONE
    p = estimate_relative_pose(iq, im, K, method="pnp")
    assert p.status == STATUS_NONE and "needs depth" in p.reason
    metric = estimate_relative_pose(iq, im, K, match_depth=dm, method="pnp")
    assert metric.status == STATUS_METRIC and 0 < metric.inlier_ratio <= 1
    grey = estimate_relative_pose(iq.mean(axis=2).astype(np.uint8), im.mean(axis=2).astype(np.uint8), K,
                                  match_depth=dm)
    assert grey.status == STATUS_METRIC  # grey images work as well as RGB
    with pytest.raises(ValueError, match="method"):
        estimate_relative_pose(iq, im, K, method="homography")


# --- lens distortion --------------------------------------------------------------------------

def test_test_distortion_models_match_opencv() -> None:
    """The renderer's distortion (written from the model equations) is OpenCV's, so rendered
    images are distorted exactly as calibrated cameras are."""
    import cv2

    rng = np.random.default_rng(0)
    xy = rng.uniform(-0.6, 0.6, (50, 2))
    pts = np.column_stack([xy, np.ones(len(xy))])
    d, _ = DISTORTIONS["plumb_bob"]
    ref = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), K, d)[0].reshape(-1, 2)
    assert np.abs(distort_plumb_bob(xy, d) * 500 + K[:2, 2] - ref).max() < 1e-9
    d, _ = DISTORTIONS["equidistant"]
    ref = cv2.fisheye.projectPoints(pts.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), K, d)[0].reshape(-1, 2)
    assert np.abs(distort_equidistant(xy, d) * 500 + K[:2, 2] - ref).max() < 1e-9


@pytest.mark.parametrize("model", sorted(DISTORTIONS))
def test_distortion_coefficients_are_applied(model: str) -> None:
    iq, _, im, dm, r, t = room_pair("crossing", model)
    d, name = DISTORTIONS[model]
    right = estimate_relative_pose(iq, im, K, d, match_depth=dm, distortion_model=name)
    wrong = estimate_relative_pose(iq, im, K, match_depth=dm, method="pnp")  # distortion ignored
    assert right.status == STATUS_METRIC, right.reason
    rot_right, t_right = rotation_error_deg(right.rotation, r), np.linalg.norm(right.translation - t)
    assert rot_right < 1.0 and t_right < 0.05
    # ignoring the distortion either loses the metric pose or makes it clearly worse
    if wrong.status == STATUS_METRIC:
        assert rotation_error_deg(wrong.rotation, r) > 2 * rot_right
        assert np.linalg.norm(wrong.translation - t) > 2 * t_right
    mono = estimate_relative_pose(iq, im, CameraModel(K, d, name))
    assert mono.status == STATUS_DIRECTION, mono.reason
    assert rotation_error_deg(mono.rotation, r) < 2.0 and direction_error_deg(mono.translation, t) < 10.0


# --- uncertainty ------------------------------------------------------------------------------

@functools.cache
def room_features(case: str) -> tuple[PoseFeatures, PoseFeatures]:
    iq, _, im, dm, _, _ = room_pair(case)
    ex = PoseFeatureExtractor()
    return ex.extract(iq, CameraModel(K)), ex.extract(im, CameraModel(K), dm)


def exact_features(noise_px: float, seed: int = 0, n: int = 300):
    """Features of random 3-D points seen exactly by two cameras (query moved 0.5 m, turned 8
    deg), unique descriptors so every match is right, query keypoints with Gaussian noise."""
    rng = np.random.default_rng(seed)
    pts_m = rng.uniform([-4, -2, 3], [4, 2, 10], (n, 3))  # in the match camera frame
    r, t = rot(1, 8, -2), np.array([0.4, 0.05, 0.3])  # X_match = R X_query + t
    pts_q = (pts_m - t) @ r
    focal = 250.0
    xq = pts_q[:, :2] / pts_q[:, 2:] + rng.normal(0, noise_px / focal, (n, 2))
    desc = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    q = PoseFeatures(xq.astype(np.float32), desc, None, "orb", focal)
    m = PoseFeatures((pts_m[:, :2] / pts_m[:, 2:]).astype(np.float32), desc, pts_m[:, 2].astype(np.float32), "orb",
                     focal)
    return q, m, r, t


@pytest.mark.parametrize("method", ["auto", "essential"])
def test_uncertainty_grows_with_keypoint_noise(method: str) -> None:
    cfg = PoseConfig(ransac_px=6.0)  # keep every noisy match an inlier, so only the noise differs
    results = []
    for noise in (0.2, 1.0):
        q, m, r, t = exact_features(noise)
        p = estimate_from_features(q, m, method=method, config=cfg)
        assert p.status == (STATUS_METRIC if method == "auto" else STATUS_DIRECTION), p.reason
        assert p.inliers == 300
        results.append(p)
        # the std is the right size: the error is a few stds at most (and not far below one)
        err_rot = math.radians(rotation_error_deg(p.rotation, r))
        err_t = np.linalg.norm(p.translation - t) if method == "auto" else \
            math.radians(direction_error_deg(p.translation, t))
        assert err_rot < 4 * p.rotation_std_rad and err_t < 4 * p.translation_std_m
    clean, noisy = results
    # five times the keypoint noise: about five times the std (first-order propagation)
    assert 3.5 < noisy.rotation_std_rad / clean.rotation_std_rad < 6.5
    assert 3.5 < noisy.translation_std_m / clean.translation_std_m < 6.5


# --- features API: what the node stores for old keyframes -------------------------------------

def test_estimate_from_stored_features_equals_image_api() -> None:
    iq, _, im, dm, _, _ = room_pair("crossing")
    q, m = PoseFeatureExtractor().extract(iq, CameraModel(K)), PoseFeatureExtractor().extract(im, CameraModel(K), dm)
    stored = PoseFeatures.from_bytes(m.to_bytes())  # the old keyframe comes back from the map
    a = estimate_from_features(q, stored)
    b = estimate_relative_pose(iq, im, K, match_depth=dm)
    assert a.status == b.status == STATUS_METRIC
    assert np.array_equal(a.rotation, b.rotation) and np.array_equal(a.translation, b.translation)


@pytest.mark.skipif(not sift_available(), reason="this OpenCV build has no SIFT")
def test_sift_features_work_and_survive_the_store(tmp_path) -> None:
    iq, _, im, dm, r, t = room_pair("sideways")
    ex = PoseFeatureExtractor("sift")
    store = PoseFeatureStore(4, 10**7)
    store.put(7, ex.extract(im, CameraModel(K), dm))
    (tmp_path / "f.npz").write_bytes(store.to_bytes({7: 123}))
    loaded = PoseFeatureStore(4, 10**7)
    assert loaded.load(tmp_path / "f.npz", {7: 123}) == 1 and loaded.get(7).descriptors.dtype == np.float32
    p = estimate_from_features(ex.extract(iq, CameraModel(K)), loaded.get(7))  # default matcher of the kind
    assert p.status == STATUS_METRIC, p.reason
    assert rotation_error_deg(p.rotation, r) < 1.0 and np.linalg.norm(p.translation - t) < 0.05


def test_features_of_another_kind_are_refused() -> None:
    q, m = room_features("sideways")
    sift = PoseFeatures(m.points, m.descriptors, m.depth, "sift", m.focal_px)
    with pytest.raises(ValueError, match="kind"):
        estimate_from_features(q, sift, extractor=PoseFeatureExtractor("orb"))


# --- RelativePose helpers ---------------------------------------------------------------------

def _pose(status: int, r: np.ndarray, t: np.ndarray, rot_std: float = 0.01, t_std: float = 0.02) -> RelativePose:
    return RelativePose(status, r, np.asarray(t, float), 50, 60, rot_std, t_std, "pnp", "")


def test_quaternion_of_the_rotation() -> None:
    p = _pose(STATUS_METRIC, rot(0, 0, 90), [0, 0, 0])
    assert np.allclose(p.quaternion_xyzw(), [0, 0, math.sqrt(0.5), math.sqrt(0.5)])
    r = rot(10, -20, 30)
    assert np.allclose(quaternion_to_matrix(_pose(STATUS_METRIC, r, [0, 0, 0]).quaternion_xyzw()), r)


def test_inverse_is_the_match_pose_in_the_query_frame() -> None:
    p = _pose(STATUS_METRIC, rot(5, -10, 3), [0.4, -0.1, 0.3])
    inv = p.inverse()
    assert np.allclose(inv.matrix() @ p.matrix(), np.eye(4))
    assert inv.rotation_std_rad == p.rotation_std_rad
    assert inv.translation_std_m == pytest.approx(math.hypot(0.02, 0.01 * np.linalg.norm(p.translation)))
    assert np.allclose(inv.inverse().matrix(), p.matrix())


def test_in_base_frame_matches_composing_the_frames() -> None:
    # two base poses in the world, a camera mounted on the base (E: base <- camera)
    world_base_q = make_transform(rot(0, 0, 30), [2.0, 1.0, 0.0])
    world_base_m = make_transform(rot(0, 0, 10), [1.5, 0.2, 0.0])
    e = make_transform(rot(-90, 0, -90), [0.3, 0.05, 1.2])  # optical frame: z forward, x right
    cam_q, cam_m = world_base_q @ e, world_base_m @ e
    t_cam = invert_transform(cam_m) @ cam_q
    p = _pose(STATUS_METRIC, t_cam[:3, :3], t_cam[:3, 3])
    expected = invert_transform(world_base_m) @ world_base_q
    got = p.in_base_frame(e)
    assert np.allclose(got.matrix(), expected)
    from salad_ros.geometry.transforms import matrix_to_quaternion

    as_params = [*e[:3, 3], *matrix_to_quaternion(e[:3, :3])]
    assert np.allclose(p.in_base_frame(as_params).matrix(), expected)
    assert got.translation_std_m == pytest.approx(math.hypot(0.02, 0.01 * np.linalg.norm(e[:3, 3])))


def test_in_base_frame_with_two_camera_mounts() -> None:
    """Two robots of a fleet with their cameras mounted differently: the pose between their base
    frames uses each keyframe's own mount."""
    world_base_q = make_transform(rot(0, 0, 30), [2.0, 1.0, 0.0])
    world_base_m = make_transform(rot(0, 0, -150), [3.5, 0.2, 0.4])
    e_q = make_transform(rot(-90, 0, -90), [0.3, 0.05, 1.2])
    e_m = make_transform(rot(-100, 0, -80), [-0.2, 0.1, 0.6])  # tilted down, mounted behind
    t_cam = invert_transform(world_base_m @ e_m) @ (world_base_q @ e_q)
    p = _pose(STATUS_METRIC, t_cam[:3, :3], t_cam[:3, 3])
    expected = invert_transform(world_base_m) @ world_base_q
    assert np.allclose(p.in_base_frame(e_q, e_m).matrix(), expected)
    assert not np.allclose(p.in_base_frame(e_q).matrix(), expected)  # one mount for both would be wrong
    # a direction-only pose whose cameras sit at their bases' origins keeps its direction, in the match's axes
    e_q0, e_m0 = make_transform(e_q[:3, :3], [0, 0, 0]), make_transform(e_m[:3, :3], [0, 0, 0])
    d = _pose(STATUS_DIRECTION, t_cam[:3, :3], t_cam[:3, 3] / np.linalg.norm(t_cam[:3, 3]))
    moved = d.in_base_frame(e_q0, e_m0)
    assert moved.status == STATUS_DIRECTION and np.allclose(moved.translation, e_m0[:3, :3] @ d.translation)
    assert d.in_base_frame(e_q, e_m).status == STATUS_NONE  # offsets that do not cancel


def test_in_base_frame_of_a_direction_only_pose() -> None:
    r, t = rot(0, 12, 0), np.array([0.6, 0.0, 0.8])
    p = _pose(STATUS_DIRECTION, r, t)
    # camera at the base origin: the direction carries over, rotated into base axes
    turn = make_transform(rot(-90, 0, -90), [0, 0, 0])
    moved = p.in_base_frame(turn)
    assert moved.status == STATUS_DIRECTION and np.allclose(moved.translation, turn[:3, :3] @ t)
    # camera offset from the base while turning: the base translation depends on the unknown
    # baseline, so no direction is claimed, but the rotation is kept
    offset = make_transform(rot(-90, 0, -90), [0.3, 0.0, 1.0])
    moved = p.in_base_frame(offset)
    assert moved.status == STATUS_NONE and moved.has_rotation and "base" in moved.reason
    assert np.allclose(moved.rotation, offset[:3, :3] @ r @ offset[:3, :3].T)


def test_in_base_frame_rejects_a_bad_extrinsic() -> None:
    with pytest.raises(ValueError, match="7 finite numbers"):
        _pose(STATUS_METRIC, np.eye(3), [0, 0, 0]).in_base_frame([0, 0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="zero"):
        _pose(STATUS_METRIC, np.eye(3), [0, 0, 0]).in_base_frame([0, 0, 0, 0, 0, 0, 0])
