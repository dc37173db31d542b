"""Building blocks of the relative-pose estimator: rotations, camera model, depth decoding and
sampling, pose features and their bounded store, and the solvers on exact correspondences."""

from __future__ import annotations

import math
import types

import cv2
import numpy as np
import pytest

from salad_ros.geometry.camera import CameraModel, PoseInputError
from salad_ros.geometry.essential import solve_essential
from salad_ros.geometry.feature_store import PoseFeatureStore
from salad_ros.geometry.features import PoseFeatureExtractor, PoseFeatures, sample_depth
from salad_ros.geometry.solvers import fit_homography, homography_motions, solve_pnp, solve_rotation
from salad_ros.geometry.transforms import (
    exp_so3,
    fit_rotation,
    log_so3,
    matrix_to_quaternion,
    quaternion_to_matrix,
    rotation_angle,
    transform_from_xyz_quat,
)
from salad_ros.io.depth import decode_depth, depth_msg_to_metres, depth_to_metres

K = np.array([[500.0, 0.0, 319.5], [0.0, 500.0, 239.5], [0.0, 0.0, 1.0]])


# --- rotations --------------------------------------------------------------------------------

def _random_rotations(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = [exp_so3(rng.normal(size=3) * rng.uniform(0, 3)) for _ in range(n)]
    # the branches of the quaternion conversion: half turns about each axis, and the identity
    out += [exp_so3(np.eye(3)[i] * math.pi) for i in range(3)] + [np.eye(3)]
    return out


def test_quaternion_round_trip() -> None:
    for r in _random_rotations(200):
        q = matrix_to_quaternion(r)
        assert abs(np.linalg.norm(q) - 1) < 1e-12 and q[3] >= 0
        assert np.allclose(quaternion_to_matrix(q), r, atol=1e-12)
    # known values: 90 degrees about z, 180 degrees about x
    assert np.allclose(matrix_to_quaternion(exp_so3([0, 0, math.pi / 2])), [0, 0, math.sqrt(0.5), math.sqrt(0.5)])
    assert np.allclose(np.abs(matrix_to_quaternion(exp_so3([math.pi, 0, 0]))), [1, 0, 0, 0], atol=1e-12)
    # q and -q are the same rotation; a non-unit quaternion is normalised
    assert np.allclose(quaternion_to_matrix([0, 0, -2, -2]), exp_so3([0, 0, math.pi / 2]))
    with pytest.raises(ValueError, match="zero"):
        quaternion_to_matrix([0, 0, 0, 0])


def test_exp_log_and_angle() -> None:
    for r in _random_rotations(100, seed=1):
        w = log_so3(r)
        assert np.allclose(exp_so3(w), r, atol=1e-9)
        assert abs(np.linalg.norm(w) - rotation_angle(r)) < 1e-9
        assert np.allclose(exp_so3(w), cv2.Rodrigues(w)[0], atol=1e-12)
    tiny = exp_so3([1e-9, 0, 0])
    assert abs(rotation_angle(tiny) - 1e-9) < 1e-15  # no arccos precision loss


def test_fit_rotation_recovers_a_rotation() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=(50, 3))
    r = exp_so3([0.3, -0.8, 0.5])
    assert np.allclose(fit_rotation(a, a @ r.T), r, atol=1e-12)


def test_transform_from_xyz_quat() -> None:
    m = transform_from_xyz_quat([1, 2, 3, 0, 0, math.sqrt(0.5), math.sqrt(0.5)])
    assert np.allclose(m[:3, 3], [1, 2, 3]) and np.allclose(m[:3, :3] @ [1, 0, 0], [0, 1, 0])
    with pytest.raises(ValueError, match="7 finite"):
        transform_from_xyz_quat([0, 0, float("nan"), 0, 0, 0, 1])


# --- camera model -----------------------------------------------------------------------------

@pytest.mark.parametrize("model, d", [
    ("plumb_bob", [-0.28, 0.09, 0.001, -0.0015, -0.01]),
    ("rational_polynomial", [0.4, -0.1, 0.001, 0.002, 0.01, 0.7, -0.05, 0.02]),
    ("equidistant", [0.05, -0.02, 0.01, -0.003]),
    ("plumb_bob", []),
])
def test_undistort_inverts_opencv_projection(model: str, d: list[float]) -> None:
    rng = np.random.default_rng(3)
    xy = rng.uniform(-0.55, 0.55, (200, 2))
    pts = np.column_stack([xy, np.ones(len(xy))]).reshape(-1, 1, 3)
    dd = np.array(d, np.float64)
    if model == "equidistant":
        px = cv2.fisheye.projectPoints(pts, np.zeros(3), np.zeros(3), K, dd)[0]
    else:
        px = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), K, dd if dd.size else None)[0]
    cam = CameraModel(K, dd, model).validate()
    # below 0.01 px at f = 500: far under keypoint noise
    assert np.abs(cam.undistort(px.reshape(-1, 2)) - xy).max() < 2e-5


def test_camera_info_binning_and_roi_map_onto_the_sensor() -> None:
    msg = types.SimpleNamespace(k=K.ravel().tolist(), d=[], distortion_model="plumb_bob", width=640, height=480,
                                binning_x=2, binning_y=2,
                                roi=types.SimpleNamespace(x_offset=100, y_offset=40, width=400, height=300))
    cam = CameraModel.from_camera_info(msg).validate()
    assert cam.image_size == (200, 150)
    cam.check_image((150, 200, 3))
    # pixel (10, 20) of the binned ROI image covers sensor pixels 120-121, 80-81: centre (120.5, 80.5)
    expect = [(120.5 - 319.5) / 500, (80.5 - 239.5) / 500]
    assert np.allclose(cam.undistort(np.array([[10.0, 20.0]])), [expect])
    with pytest.raises(PoseInputError, match="camera_info says 200x150"):
        cam.check_image((480, 640))


@pytest.mark.parametrize("kwargs, needle", [
    (dict(distortion_model="fisheye"), "unknown distortion_model 'fisheye'"),
    (dict(d=[0.1, 0.2, 0.3]), "needs"),
    (dict(d=[0.1, 0.0, 0.0, 0.0, float("nan")]), "D has non-finite"),
    (dict(distortion_model="equidistant", d=[0.1, 0.0, 0.0, 0.0, 0.0]), "needs"),
    (dict(width=-1), "negative"),
])
def test_camera_validation_names_the_problem(kwargs: dict, needle: str) -> None:
    with pytest.raises(PoseInputError, match=needle) as err:
        CameraModel(**{"k": K, **kwargs}).validate()
    assert err.value.kind == "invalid_camera_info" and isinstance(err.value, ValueError)


# --- depth ------------------------------------------------------------------------------------

def test_depth_to_metres() -> None:
    mm = np.array([[0, 1500], [65535, 250]], np.uint16)
    out = depth_to_metres(mm, "16UC1")
    assert out.dtype == np.float32 and math.isnan(out[0, 0])
    assert np.allclose(out[[0, 1, 1], [1, 0, 1]], [1.5, 65.535, 0.25])
    f = np.array([[0.0, np.nan], [np.inf, -2.0], [1.25, 3.0]], np.float32)
    out = depth_to_metres(f, "32FC1")
    assert np.isnan(out[:2]).all() and np.allclose(out[2], [1.25, 3.0])
    with pytest.raises(PoseInputError, match="unsupported depth encoding 'mono8'") as err:
        depth_to_metres(mm, "mono8")
    assert err.value.kind == "depth_encoding"
    with pytest.raises(PoseInputError, match="16UC1 depth must be a 2-D uint16"):
        depth_to_metres(f, "16UC1")


def test_decode_depth_message_with_row_padding_and_big_endian() -> None:
    mm = np.array([[1000, 0, 2000], [3000, 4000, 5000]], np.uint16)
    padded = np.zeros((2, 8), np.uint8)  # 6 bytes of pixels + 2 of padding per row
    padded[:, :6] = mm.view(np.uint8).reshape(2, 6)
    out = decode_depth("16UC1", 2, 3, 8, padded.tobytes())
    assert np.allclose(np.nan_to_num(out), [[1.0, 0.0, 2.0], [3.0, 4.0, 5.0]]) and math.isnan(out[0, 1])
    big = mm.astype(">u2").tobytes()
    assert np.array_equal(np.isnan(decode_depth("16UC1", 2, 3, 6, big, is_bigendian=1)), np.isnan(out))
    metres = np.array([[1.5, np.nan]], np.float32)
    msg = types.SimpleNamespace(encoding="32FC1", height=1, width=2, step=8, data=metres.tobytes(), is_bigendian=0)
    assert np.allclose(depth_msg_to_metres(msg)[0, 0], 1.5)
    with pytest.raises(PoseInputError, match="does not fit"):
        decode_depth("32FC1", 2, 2, 8, b"\0" * 8)


def test_sample_depth_refuses_invalid_and_occlusion_edges() -> None:
    d = np.full((20, 20), 2.0, np.float32)
    d[:, 10:] = 5.0  # an occlusion edge between columns 9 and 10
    d[15, 3] = np.nan
    d[2:5, 15:18] = np.nan
    d[3, 16] = 5.0
    out = sample_depth(d, np.array([[4.2, 4.0], [15.0, 15.0], [9.6, 8.0], [3.0, 15.0], [16.0, 3.0], [3.0, 14.0]]))
    assert out[0] == 2.0 and out[1] == 5.0
    assert math.isnan(out[2])  # the window straddles the edge
    assert math.isnan(out[3])  # invalid centre pixel
    assert math.isnan(out[4])  # only the centre of the window is valid
    assert out[5] == 2.0  # one invalid pixel in the window is fine
    assert sample_depth(d, np.empty((0, 2))).shape == (0,)


# --- pose features and their store ------------------------------------------------------------

def _textured(seed: int, h: int = 480, w: int = 640) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (h // 8, w // 8), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(40):
        x, y = (int(v) for v in rng.integers(0, [w, h]))
        cv2.circle(img, (x, y), int(rng.integers(4, 30)), int(rng.integers(0, 256)), -1)
    return img


def test_extractor_maps_keypoints_back_to_full_resolution() -> None:
    img = _textured(4)
    big = cv2.resize(img, (1280, 960), interpolation=cv2.INTER_LINEAR)
    k_big = K.copy()
    k_big[:2] *= 2
    k_big[:2, 2] += 0.5  # pixel centres: u_big + 0.5 = 2 (u + 0.5)
    ex = PoseFeatureExtractor(max_side=320)
    a, b = ex.extract(img, CameraModel(K)), ex.extract(big, CameraModel(k_big))
    # both become (nearly) the same 320x240 thumbnail: matched keypoints have the same
    # normalised coordinates whatever the resolution (to a small part of a thumbnail pixel)
    ia, ib = ex.match(a, b)
    assert len(ia) > 200
    assert np.median(np.linalg.norm(a.points[ia] - b.points[ib], axis=1)) * 250 < 0.1
    assert a.focal_px == pytest.approx(250.0) and b.focal_px == pytest.approx(250.0)


def test_pose_features_bytes_round_trip() -> None:
    ex = PoseFeatureExtractor()
    depth = np.full((480, 640), 3.0, np.float32)
    for feats in (ex.extract(_textured(5), CameraModel(K), depth), ex.extract(_textured(5), CameraModel(K))):
        back = PoseFeatures.from_bytes(feats.to_bytes())
        assert np.array_equal(back.points, feats.points) and np.array_equal(back.descriptors, feats.descriptors)
        assert (back.depth is None) == (feats.depth is None) and back.kind == "orb"
        assert back.focal_px == feats.focal_px
    assert np.allclose(feats.nbytes, feats.points.nbytes + feats.descriptors.nbytes)
    with pytest.raises(ValueError, match="not a pose feature record"):
        PoseFeatures.from_bytes(b"garbage")


def _record(n: int, seed: int, depth: bool = True) -> PoseFeatures:
    rng = np.random.default_rng(seed)
    return PoseFeatures(rng.normal(size=(n, 2)).astype(np.float32), rng.integers(0, 256, (n, 32), dtype=np.uint8),
                        rng.uniform(1, 5, n).astype(np.float32) if depth else None, "orb", 250.0)


def test_store_is_bounded_and_evicts_the_oldest() -> None:
    per = _record(100, 0).nbytes  # 100 x (8 + 32 + 4) bytes
    store = PoseFeatureStore(max_count=5, max_bytes=3 * per)
    for key in range(6):
        store.put(key, _record(100, key))
    assert list(store._items) == [3, 4, 5] and store.nbytes() == 3 * per and store.evicted == 3
    store.put(10, _record(1000, 9))  # larger than the whole budget: not kept, the others stay
    assert 10 not in store and list(store._items) == [3, 4, 5] and store.evicted == 4
    with pytest.raises(ValueError, match="holds orb features"):
        store.put(11, PoseFeatures(np.zeros((1, 2), np.float32), np.zeros((1, 128), np.float32), None, "sift", 1.0))


def test_store_saves_and_loads_for_the_right_map(tmp_path) -> None:
    store = PoseFeatureStore(10, 10**6)
    store.put(1, _record(50, 1))
    store.put(2, _record(0, 2, depth=False))
    store.put(3, _record(80, 3, depth=False))
    path = tmp_path / "pose_features.npz"
    path.write_bytes(store.to_bytes({1: 100, 2: 200, 3: 300}))
    loaded = PoseFeatureStore(10, 10**6)
    assert loaded.load(path, {1: 100, 2: 200, 3: 999}) == 2  # keyframe 3's stamp belongs to another map
    for key in (1, 2):
        a, b = store.get(key), loaded.get(key)
        assert np.array_equal(a.points, b.points) and np.array_equal(a.descriptors, b.descriptors)
        assert (a.depth is None and b.depth is None) or np.array_equal(a.depth, b.depth)
    assert loaded.get(3) is None
    (tmp_path / "bad.npz").write_bytes(b"not npz")
    with pytest.raises(ValueError, match="bad.npz: not a pose feature file"):
        loaded.load(tmp_path / "bad.npz", {})
    assert loaded.load(path.read_bytes(), {1: 100}) == 1  # the map attachment's bytes load the same


def test_store_refuses_files_beyond_its_budget_before_inflating(tmp_path) -> None:
    """A hostile or foreign file can't make the store allocate more than its budget allows."""
    big = PoseFeatureStore(10, 10**8)
    big.put(1, _record(200_000, 1))  # 8.8 MB of features: more than a 100 kB store could ever write
    data = big.to_bytes({1: 100})
    small = PoseFeatureStore(10, 100_000)
    with pytest.raises(ValueError, match="not a pose feature file"):
        small.load(data, {1: 100})
    assert len(small) == 0
    import io as _io

    buf = _io.BytesIO()  # an object array (a pickle) where numbers belong
    np.savez(buf, ids=np.array([1], object), stamps_ns=np.array([100]), counts=np.array([0]), has_depth=np.array([False]),
             focal_px=np.array([1.0]), kind=np.frombuffer(b"orb", np.uint8), points=np.zeros((0, 2), np.float32),
             descriptors=np.zeros((0, 32), np.uint8), depth=np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="not a pose feature file"):
        small.load(buf.getvalue(), {1: 100})


# --- solvers on exact correspondences ---------------------------------------------------------

def _scene(seed: int, n: int = 200, outliers: float = 0.3):
    rng = np.random.default_rng(seed)
    pts_m = rng.uniform([-3, -2, 2], [3, 2, 8], (n, 3))
    r, t = exp_so3([0.02, 0.15, -0.03]), np.array([0.5, -0.05, 0.2])
    pts_q = (pts_m - t) @ r
    xq, xm = pts_q[:, :2] / pts_q[:, 2:], pts_m[:, :2] / pts_m[:, 2:]
    bad = rng.random(n) < outliers
    xq[bad] = rng.uniform(-0.6, 0.6, (int(bad.sum()), 2))
    return pts_m, xq, xm, r, t, ~bad


def test_solve_pnp_exact_with_outliers() -> None:
    pts_m, xq, _, r, t, good = _scene(0)
    sol = solve_pnp(pts_m, xq, threshold=1.0 / 500)  # pose of the match points in the query camera
    assert sol is not None and np.array_equal(sol.inliers, good)
    assert np.allclose(sol.rotation, r.T, atol=1e-9) and np.allclose(sol.translation, -r.T @ t, atol=1e-9)


def test_solve_essential_exact_with_outliers() -> None:
    _, xq, xm, r, t, good = _scene(1)
    sol = solve_essential(xq, xm, threshold=1.0 / 500)
    assert sol is not None and np.array_equal(sol.inliers, good)
    assert rotation_angle(sol.rotation @ r.T) < 1e-6 and np.allclose(sol.translation, t / np.linalg.norm(t), atol=1e-6)


def test_solve_rotation_and_homography_of_a_turning_camera() -> None:
    rng = np.random.default_rng(2)
    xq = rng.uniform(-0.5, 0.5, (100, 2))
    r = exp_so3([0.05, -0.1, 0.02])
    rays = np.column_stack([xq, np.ones(100)]) @ r.T
    xm = rays[:, :2] / rays[:, 2:]
    h, mask = fit_homography(xq, xm, 1.0 / 500)
    assert mask.all() and homography_motions(h) == []  # a pure rotation has no translation to offer
    sol = solve_rotation(xq, xm, mask)
    assert rotation_angle(sol.rotation @ r.T) < 1e-9


def test_degenerate_geometry_has_infinite_covariance() -> None:
    from salad_ros.geometry.least_squares import local_covariance
    from salad_ros.geometry.solvers import _reprojection

    # 3-D points all on the optical axis: turning about it and moving along it change nothing
    pts = np.column_stack([np.zeros(20), np.zeros(20), np.linspace(2, 6, 20)])
    noisy = np.random.default_rng(0).normal(0, 1e-3, (20, 2))
    cov, _ = local_covariance(lambda s: _reprojection(*s, pts, noisy), (np.eye(3), np.zeros(3)))
    assert np.isinf(cov).all()
    # spread out, the same residuals give a finite covariance
    pts[:, 0] = np.linspace(-1, 1, 20)
    pts[:, 1] = np.cos(np.arange(20))
    cov, sigma = local_covariance(lambda s: _reprojection(*s, pts, noisy), (np.eye(3), np.zeros(3)))
    assert np.isfinite(cov).all() and sigma > 0
