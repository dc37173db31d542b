"""Relative poses of loop candidates through the ROS-free pipeline: a rendered revisit with
camera and depth, without depth, verification by the pose solver, the pose columns, the feature
store across sessions, bad camera and depth input, and the configuration.

The descriptors are scripted (frame 2 revisits frame 0), so the tests exercise the pose path of
the pipeline and detector without a model; the images are rendered rooms with exact depth
(:mod:`_pose_scenes`)."""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Sequence

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from _pose_scenes import ROOM_CASES, K, direction_error_deg, pose, real_room, relative, render, rot  # noqa: E402
from _pose_scenes import rotation_error_deg as rot_err  # noqa: E402
from _scripted import EVERY_FRAME_A_KEYFRAME, ScriptedEncoder  # noqa: E402

from salad_ros.config import load_config  # noqa: E402
from salad_ros.geometry.camera import CameraModel  # noqa: E402
from salad_ros.geometry.transforms import invert_transform, make_transform, transform_from_xyz_quat  # noqa: E402
from salad_ros.loop_pose import PoseSettings, pose_columns  # noqa: E402
from salad_ros.params import ConfigError  # noqa: E402
from salad_ros.pipeline import LoopClosurePipeline  # noqa: E402
from salad_ros.relative_pose import STATUS_DIRECTION, STATUS_METRIC, STATUS_NONE, RelativePose  # noqa: E402

SEC = 1_000_000_000
OVERRIDES = EVERY_FRAME_A_KEYFRAME
CAMERA_TO_BASE = "0.1 0.0 0.5 -0.5 0.5 -0.5 0.5"  # optical frame on a z-up base, 10 cm forward, 50 cm up


@functools.cache
def revisit(case: str = "sideways"):
    """[(rgb, depth)] of the match view, an unrelated view and the query view, and (R, t)."""
    aq, tq, am, tm = ROOM_CASES[case]
    planes = real_room()
    world_q, world_m = pose(rot(*aq), tq), pose(rot(*am), tm)
    other = render(planes, pose(rot(0, 180, 0), (0.0, 0.0, 0.0)))  # looking away: nothing to match
    r, t = relative(world_q, world_m)
    return [render(planes, world_m), other, render(planes, world_q)], r, t


def pipeline(places: Sequence[int] = (0, 1, 0), **overrides) -> LoopClosurePipeline:
    return LoopClosurePipeline(load_config(overrides={**OVERRIDES, **overrides}), encoder=ScriptedEncoder(places))


def camera() -> CameraModel:
    return CameraModel(k=K, width=640, height=480)


def run(pipe: LoopClosurePipeline, frames, *, depth: bool = True, cam=camera, t0: int = 0):
    images = [rgb for rgb, _ in frames]
    depths = [d if depth else None for _, d in frames]
    return pipe.process_batch(images, [t0 + i * SEC for i in range(len(images))],
                              cameras=[cam() for _ in images], depths=depths).frames


def the_candidate(results):
    cands = [c for r in results for c in r.candidates]
    assert len(cands) == 1, [(c.query_id, c.match_id, c.reason) for r in results for c in r.candidates + r.rejected]
    return cands[0]


def test_revisit_with_depth_gets_a_metric_pose():
    frames, r, t = revisit()
    pipe = pipeline()
    cand = the_candidate(run(pipe, frames))
    p = cand.relative_pose
    assert (cand.query_id, cand.match_id) == (2, 0)
    assert p.status == STATUS_METRIC and p.method == "pnp", p.reason
    assert rot_err(p.rotation, r) < 1.0 and np.linalg.norm(p.translation - t) < 0.05
    assert 0 < p.rotation_std_rad < math.radians(1) and 0 < p.translation_std_m < 0.05
    assert cand.verified is None and cand.inliers == 0, "detector.verify is off: no verification claimed"
    stats = pipe.pose_stats()
    assert stats["estimates"] == 1 and stats["status"][2] == 1 and stats["stored_keyframes"] == 3
    assert 0 < stats["ms_per_candidate"] < 5000
    assert stats["input"] == {"empty_depth": 1}, "the view looking away sees no surface: no valid depth"


def test_revisit_without_depth_gets_rotation_and_direction():
    frames, r, t = revisit()
    p = the_candidate(run(pipeline(), frames, depth=False)).relative_pose
    assert p.status == STATUS_DIRECTION and p.method == "essential", p.reason
    assert rot_err(p.rotation, r) < 2.0 and direction_error_deg(p.translation, t) < 10.0


@pytest.mark.parametrize("method, status", [("essential", STATUS_DIRECTION), ("none", None), ("pnp", STATUS_METRIC)])
def test_pose_estimation_parameter(method, status):
    frames, _, _ = revisit()
    p = the_candidate(run(pipeline(pose_estimation=method), frames)).relative_pose
    assert (p.status if p is not None else None) == status


def test_pnp_without_depth_is_status_0_but_still_verifies():
    frames, _, _ = revisit()
    cand = the_candidate(run(pipeline(pose_estimation="pnp", **{"detector.verify": True}), frames, depth=False))
    assert cand.relative_pose.status == STATUS_NONE and "depth" in cand.relative_pose.reason
    assert cand.verified and cand.inliers >= 20, "the essential-matrix inliers verify the place"


def test_without_camera_verification_is_the_fundamental_matrix():
    frames, _, _ = revisit()
    pipe = pipeline(**{"detector.verify": True})
    cand = the_candidate(run(pipe, frames, cam=lambda: None))
    assert cand.relative_pose is None and cand.verified and cand.inliers >= 20
    assert pipe.pose_stats()["estimates"] == 0 and pipe.pose_stats()["stored_keyframes"] == 0


def test_with_camera_verification_is_the_pose_solver():
    frames, _, _ = revisit()
    cand = the_candidate(run(pipeline(**{"detector.verify": True}), frames))
    p = cand.relative_pose
    assert cand.verified and cand.inliers == p.inliers >= 20 and cand.inlier_ratio == pytest.approx(p.inlier_ratio)
    # an unrelated pair is rejected by the pose solver's inliers
    pipe = pipeline((0, 1, 1), **{"detector.verify": True})
    results = run(pipe, frames)
    assert not any(r.candidates for r in results)
    rejected = [c for r in results for c in r.rejected]
    assert len(rejected) == 1 and rejected[0].verified is False and "pose inliers" in rejected[0].reason


def test_camera_to_base_expresses_the_pose_between_base_frames():
    frames, r, t = revisit()
    p = the_candidate(run(pipeline(camera_to_base=CAMERA_TO_BASE), frames)).relative_pose
    e = transform_from_xyz_quat([float(v) for v in CAMERA_TO_BASE.split()])
    want = e @ make_transform(r, t) @ invert_transform(e)
    assert p.status == STATUS_METRIC and rot_err(p.rotation, want[:3, :3]) < 1.0
    assert np.linalg.norm(p.translation - want[:3, 3]) < 0.05
    # base z up: the optical frame's sideways x is the base's -y
    assert abs(p.translation[1] + t[0]) < 0.05


def test_pose_columns():
    none = pose_columns(None)
    assert none["pose_status"] == 0 and none["qw"] == 1.0 and none["tx"] == 0.0
    assert none["rotation_std_rad"] == math.inf and none["translation_std_m"] == math.inf
    assert pose_columns(RelativePose(STATUS_NONE, rotation=np.diag([1.0, -1, -1]), rotation_std_rad=0.01)) == none
    p = RelativePose(STATUS_METRIC, rot(0, 0, 90), np.array([1.0, 2.0, 3.0]), 50, 80, 0.01, 0.02, "pnp")
    cols = pose_columns(p)
    assert cols["pose_status"] == 2 and (cols["tx"], cols["ty"], cols["tz"]) == (1.0, 2.0, 3.0)
    assert cols["qz"] == pytest.approx(math.sqrt(0.5)) and cols["qw"] == pytest.approx(math.sqrt(0.5))
    assert cols["rotation_std_rad"] == 0.01 and cols["translation_std_m"] == 0.02


def test_second_session_gets_poses_against_the_saved_map(tmp_path):
    frames, r, t = revisit()
    path = tmp_path / "map"
    first = pipeline((0, 1), database_path=str(path))
    run(first, frames[:2])
    first.save()
    assert len(list(path.glob("pose_features-*.npz"))) == 1  # committed with the map's generation
    second = pipeline((0,), database_path=str(path))
    assert second.keyframe_count == 2 and second.pose_stats()["stored_keyframes"] == 2
    rgb, depth = frames[2]
    result = second.process(rgb, 100 * SEC, camera=camera(), depth=depth)
    cand = the_candidate([result])
    assert (cand.query_id, cand.match_id) == (2, 0)
    p = cand.relative_pose
    assert p.status == STATUS_METRIC and np.linalg.norm(p.translation - t) < 0.05
    # the stored pair answers the same without images (what the replay's evaluation uses)
    again = second.relative_pose(2, 0)
    assert again.status == STATUS_METRIC and np.allclose(again.translation, p.translation)
    assert second.relative_pose(2, 0, method="essential").status == STATUS_DIRECTION
    # a reset forgets them; saving an empty store removes the stale file
    second.reset()
    assert second.pose_stats()["stored_keyframes"] == 0 and second.relative_pose(2, 0) is None
    second.save(tmp_path / "empty")
    assert not list((tmp_path / "empty").glob("pose_features-*.npz"))


def test_damaged_or_foreign_pose_features_are_a_warning(tmp_path, caplog):
    frames, _, _ = revisit()
    path = tmp_path / "map"
    first = pipeline((0, 1), database_path=str(path))
    run(first, frames[:2])
    first.save()
    (attachment,) = path.glob("pose_features-*.npz")
    attachment.write_bytes(b"not an npz file")
    second = pipeline((0,), database_path=str(path))
    assert second.keyframe_count == 2 and second.pose_stats()["stored_keyframes"] == 0
    assert "pose feature" in caplog.text
    rgb, depth = frames[2]
    cand = the_candidate([second.process(rgb, 100 * SEC, camera=camera(), depth=depth)])
    assert cand.relative_pose is None, "no stored features for the match: no pose, no crash"
    assert second.pose_stats()["input"] == {"no_match_features": 1}


def test_bad_camera_and_depth_are_counted_and_give_no_pose():
    frames, _, _ = revisit()
    bad_cameras = {
        "invalid_camera_info": CameraModel(k=np.zeros(9)),
        "image_size_mismatch": CameraModel(k=K, width=320, height=240),
    }
    for kind, cam in bad_cameras.items():
        pipe = pipeline()
        cand = the_candidate(run(pipe, frames, cam=lambda cam=cam: cam))
        assert cand.relative_pose is None
        assert pipe.pose_stats()["input"] == {kind: 3}
    nan_k = CameraModel(k=np.where(K == 500.0, np.nan, K))
    pipe = pipeline()
    run(pipe, frames, cam=lambda: nan_k)
    assert pipe.pose_stats()["input"] == {"invalid_camera_info": 3}
    # depth of another size, of integers, or without one valid pixel: the pose goes on without it
    bad_depths = {"depth_size_mismatch": np.ones((240, 320), np.float32), "depth_encoding": np.ones((480, 640), np.uint16),
                  "empty_depth": np.full((480, 640), np.nan, np.float32)}
    for kind, depth in bad_depths.items():
        pipe = pipeline()
        results = pipe.process_batch([f[0] for f in frames], [0, SEC, 2 * SEC], cameras=[camera()] * 3,
                                     depths=[depth] * 3).frames
        p = the_candidate(results).relative_pose
        assert p.status == STATUS_DIRECTION, "essential matrix without usable depth"
        assert pipe.pose_stats()["input"] == {kind: 3}
    zero = pipeline()
    results = zero.process_batch([f[0] for f in frames], [0, SEC, 2 * SEC], cameras=[camera()] * 3,
                                 depths=[np.zeros((480, 640), np.float32)] * 3).frames
    assert the_candidate(results).relative_pose.status == STATUS_DIRECTION
    assert zero.pose_stats()["input"] == {"empty_depth": 3}


def test_settings_check_camera_to_base():
    assert PoseSettings().camera_to_base_matrix() is None
    m = PoseSettings(camera_to_base="1, 2, 3, 0, 0, 0, 1").camera_to_base_matrix()
    assert np.allclose(m[:3, 3], [1, 2, 3]) and np.allclose(m[:3, :3], np.eye(3))
    for bad, needle in (("1 2 3", "7 finite numbers"), ("0 0 0 0 0 0 2", "unit length"), ("a b", "could not convert"),
                        ("0 0 0 0 0 0 nan", "finite")):
        with pytest.raises(ConfigError, match="parameter 'camera_to_base'.*" + needle):
            PoseSettings(camera_to_base=bad)
    with pytest.raises(ConfigError, match="base_frame"):
        PoseSettings(camera_to_base="0 0 0 0 0 0 1", base_frame="")
    with pytest.raises(ConfigError, match="pose_estimation"):
        load_config(overrides={**OVERRIDES, "pose_estimation": "magic"})


def test_ransac_iterations_are_bounded_by_the_support_a_pose_needs():
    from salad_ros.relative_pose import PoseConfig, ransac_iterations

    cfg = PoseConfig()  # min_inliers 20, confidence 0.999, at most 1000
    assert ransac_iterations(cfg, 20, 5) == 50  # every match must be an inlier: a few draws decide
    assert ransac_iterations(cfg, 26, 5) == math.ceil(math.log(0.001) / math.log(1 - (20 / 26) ** 5))  # 22
    assert ransac_iterations(cfg, 40, 4) < ransac_iterations(cfg, 40, 5) < 1000
    assert ransac_iterations(cfg, 500, 5) == 1000  # many matches: the cap
