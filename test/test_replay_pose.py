"""salad_replay with camera_info and depth: relative poses of candidates and of every ground-truth
loop pair scored in report.json's ``relative_pose``, the plot, the flags' errors; the demo bag's
camera_info and depth agree with its renderer; the pose-evaluation helpers by hand.

A deterministic thumbnail encoder stands in for the model (the pose path does not depend on it);
the 32-frame demo bag is rendered at 640 x 480 without supersampling (a few seconds).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from salad_ros.evaluation import demo_bag, demo_camera, pose_eval, replay
from salad_ros.geometry.transforms import make_transform, rotation_angle, transform_from_xyz_quat
from salad_ros.io.bags import BagReader
from salad_ros.io.depth import depth_msg_to_metres
from salad_ros.io.trajectory import Trajectory
from salad_ros.relative_pose import RelativePose

PARAMS = {"detector": {"keyframe_max_similarity": 1.0, "keyframe_min_interval_s": 0.0, "consistency_count": 1,
                       "exclude_recent_keyframes": 0, "exclude_recent_s": 20.0, "min_score": 0.5, "top_k": 3}}
CAM = demo_camera.CAMERA_TO_BASE


class ThumbEncoder:
    """A normalised 4x4 colour thumbnail as the descriptor (48-D), deterministic and instant."""

    backend, device, dim, model_name, input_size = "test", "cpu", 48, "thumbnail", (4, 4)

    def encode(self, images: Sequence[np.ndarray], color: str = "rgb") -> np.ndarray:
        out = np.stack([cv2.resize(im, (4, 4), interpolation=cv2.INTER_AREA).reshape(-1) for im in images])
        out = out.astype(np.float32) - 100.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def describe(self) -> str:
        return "thumbnail encoder"


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pose_demo") / "bag"
    demo_bag.generate(path, frames=32, size=(640, 480), supersample=1)
    return path


@pytest.fixture(scope="module")
def params(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("params") / "p.yaml"
    path.write_text(yaml.safe_dump({"salad_loop_closure": {"ros__parameters": PARAMS}}))
    return path


def run(bag: Path, out: Path, params: Path, *extra: str) -> tuple[int, dict | None]:
    argv = [str(bag), "--image-topic", demo_bag.IMAGE_TOPIC, "--gt-topic", "/odom", "--params", str(params),
            "--out", str(out), "--no-progress", "--allow-random-weights", *extra]
    code = replay.main(argv, encoder=ThumbEncoder())
    report = out / "report.json"
    return code, json.loads(report.read_text()) if report.exists() else None


def test_demo_bag_has_camera_info_and_exact_depth(bag):
    with BagReader(bag) as r:
        topics = r.topics
        info = next(iter(r.messages([demo_camera.CAMERA_INFO_TOPIC]))).msg
        depth_msg = next(iter(r.messages([demo_camera.DEPTH_TOPIC])))
    assert topics[demo_camera.CAMERA_INFO_TOPIC].count == topics[demo_camera.DEPTH_TOPIC].count == 32
    assert np.allclose(np.asarray(info.k).reshape(3, 3), [[320, 0, 319.5], [0, 320, 239.5], [0, 0, 1]])
    assert depth_msg.msg.encoding == "16UC1" and (depth_msg.msg.width, depth_msg.msg.height) == (640, 480)
    depth = depth_msg_to_metres(depth_msg.msg)
    # frame 0 stands mid-street, 4 m from the walls on either side, looking along the street, the camera 1.5 m
    # up: the left column's ray (x_n = -319.5 / 320) meets the left wall 4 m to the side, the street below the
    # centre row lies at 1.5 / y_n, and the sky straight ahead above the far wall has no depth
    assert depth[0, 0] == pytest.approx(4.0 * 320 / 319.5, abs=0.002)
    assert np.isnan(depth[0, 320])
    v = 400
    assert depth[v, 320] == pytest.approx(1.5 * 320 / (v + 0.5 - 240), abs=0.002)
    assert np.nanmax(depth) < 65 and np.nanmin(depth) > 0.5


def test_replay_scores_relative_poses(bag, params, tmp_path, capsys):
    code, report = run(bag, tmp_path / "out", params, "--camera-info-topic", demo_camera.CAMERA_INFO_TOPIC,
                       "--depth-topic", demo_camera.DEPTH_TOPIC, "--set", f"camera_to_base={CAM}")
    text = capsys.readouterr().out
    assert code == 0
    rp = report["relative_pose"]
    assert rp["frame"] == "base" and rp["input_problems"] == {} and rp["stored_keyframes"] == 32
    gtp = rp["ground_truth_pairs"]
    assert gtp["pairs"] >= 15 and gtp["evaluated"] == gtp["pairs"]
    depth, mono = gtp["with_depth"], gtp["monocular"]
    assert depth["success_rate"] >= 0.6 and depth["status_counts"]["2"] == depth["success"]
    assert depth["rotation_error_deg"]["median"] < 1.0 and depth["translation_error_m"]["median"] < 0.1
    assert mono["success_rate"] >= 0.4 and mono["status_counts"]["2"] == 0
    assert mono["rotation_error_deg"]["median"] < 2.0 and mono["direction_error_deg"]["median"] < 10.0
    assert 0 < rp["ms_per_candidate"] < 1000 and rp["estimates"] == sum(rp["status_counts"].values())
    assert "definitions" in rp and report["config"]["camera_to_base"] == CAM
    png = tmp_path / "out" / "relative_pose.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and cv2.imread(str(png)).std() > 5
    assert "relative pose on" in text and "with depth" in text and str(png) in text


def test_replay_without_depth_or_mounting(bag, params, tmp_path, capsys):
    # monocular: no metric pose anywhere; poses in camera frames, scored with --gt-camera-to-base
    code, report = run(bag, tmp_path / "mono", params, "--camera-info-topic", demo_camera.CAMERA_INFO_TOPIC,
                       "--gt-camera-to-base", CAM, "--pose-pairs", "5", "--no-plots")
    assert code == 0
    rp = report["relative_pose"]
    assert rp["frame"] == "camera_optical" and rp["ground_truth_pairs"]["evaluated"] == 5
    assert rp["ground_truth_pairs"]["with_depth"]["success"] == 0 and rp["status_counts"]["2"] == 0
    assert rp["ground_truth_pairs"]["monocular"]["rotation_error_deg"]["median"] < 2.0
    # without any way to compare frames: estimated, not scored
    code, report = run(bag, tmp_path / "nomount", params, "--camera-info-topic", demo_camera.CAMERA_INFO_TOPIC,
                       "--no-plots", "--max-frames", "8")
    assert code == 0 and "not comparable" in report["relative_pose"]["ground_truth"]
    # without camera_info: no pose section at all
    code, report = run(bag, tmp_path / "none", params, "--no-plots", "--max-frames", "4")
    assert code == 0 and report["relative_pose"] is None


def test_pose_flags_are_checked(bag, params, tmp_path, capsys):
    code, _ = run(bag, tmp_path / "a", params, "--depth-topic", demo_camera.DEPTH_TOPIC)
    assert code == 2 and "--depth-topic needs --camera-info-topic" in capsys.readouterr().err
    code, _ = run(bag, tmp_path / "b", params, "--camera-info-topic", "/nope")
    err = capsys.readouterr().err
    assert code == 3 and "/nope" in err and demo_camera.CAMERA_INFO_TOPIC in err
    code, _ = run(bag, tmp_path / "c", params, "--camera-info-topic", demo_camera.CAMERA_INFO_TOPIC,
                  "--gt-camera-to-base", "1 2 3")
    assert code == 2 and "--gt-camera-to-base" in capsys.readouterr().err


def test_bad_pose_input_in_a_bag_is_counted(tmp_path, params):
    """Depth of another encoding, of another size, all zero, missing; camera_info with a zero K or
    of another size: each counted per kind in report.json, every frame still replayed."""
    from salad_ros.database import Pose
    from salad_ros.io.bags import BagWriter, image_msg, odometry_msg

    rng = np.random.default_rng(0)
    k = demo_camera.camera_matrix((160, 120))
    good_depth = np.full((120, 160), 3.0, np.float32)
    depths = [("mono8", None), ("16UC1", np.ones((60, 80), np.float32)), ("16UC1", np.zeros((120, 160))),
              (None, None), ("32FC1", good_depth), ("32FC1", good_depth), ("32FC1", good_depth)]
    infos = [k, k, k, k, np.zeros((3, 3)), "small", k]
    path = tmp_path / "bag"
    with BagWriter(path) as bag:
        for i, ((enc, depth), info) in enumerate(zip(depths, infos, strict=True)):
            stamp = (100 + i) * 10**9
            bag.write("/odom", stamp, odometry_msg(Pose(float(i), 0, 0, 0, 0, 0, 1), stamp))
            bag.write("/cam", stamp, image_msg((rng.random((120, 160, 3)) * 255).astype(np.uint8), stamp))
            if info is not None:
                size = (80, 60) if isinstance(info, str) else (160, 120)
                bag.write("/info", stamp, demo_camera.camera_info_msg(k if isinstance(info, str) else info, size, stamp))
            if enc == "mono8":
                bag.write("/depth", stamp, image_msg(np.zeros((120, 160, 3), np.uint8), stamp, encoding="mono8"))
            elif enc is not None:
                bag.write("/depth", stamp, demo_camera.depth_image_msg(depth, stamp, enc))
    code = replay.main([str(path), "--image-topic", "/cam", "--gt-topic", "/odom", "--params", str(params),
                        "--out", str(tmp_path / "out"), "--no-progress", "--allow-random-weights", "--no-plots",
                        "--camera-info-topic", "/info", "--depth-topic", "/depth", "--gt-camera-to-base", CAM],
                       encoder=ThumbEncoder())
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert code == 0 and report["frames_processed"] == 7
    assert report["relative_pose"]["input_problems"] == {
        "depth_encoding": 1, "depth_size_mismatch": 1, "empty_depth": 1, "missing_depth": 1,
        "invalid_camera_info": 1, "image_size_mismatch": 1}


# --------------------------------------------------------------------------------------------
# The evaluation's pieces


def test_interpolated_ground_truth_and_errors():
    stamps = np.array([0, 100, 200], np.int64)
    yaw = np.radians([0.0, 10.0, 20.0])
    poses = np.array([[x, 0, 0, 0, 0, math.sin(a / 2), math.cos(a / 2)] for x, a in zip([0.0, 1.0, 2.0], yaw)])
    gt = Trajectory(stamps, poses)
    out = pose_eval.interpolate(gt, np.array([50, 200, 500]), tolerance_ns=60)
    assert out[0][0, 3] == pytest.approx(0.5) and math.degrees(rotation_angle(out[0][:3, :3])) == pytest.approx(5.0)
    assert out[1][0, 3] == pytest.approx(2.0) and np.isnan(out[2]).all()
    truth = make_transform(np.eye(3), [1.0, 0, 0])
    est = RelativePose(2, np.eye(3), np.array([1.05, 0, 0]), 50, 60, 0.01, 0.02, "pnp")
    s = pose_eval.pose_errors(est, truth)
    assert s.status == 2 and s.rotation_error_deg == 0 and s.translation_error_m == pytest.approx(0.05)
    d = pose_eval.pose_errors(RelativePose(1, np.eye(3), np.array([1.0, 1.0, 0]) / math.sqrt(2), 50, 60, 0.01,
                                           0.02, "essential"), truth)
    assert d.direction_error_deg == pytest.approx(45.0) and math.isnan(d.translation_error_m)
    assert pose_eval.pose_errors(None, truth).status == 0
    summary = pose_eval.summarise([s, d, pose_eval.pose_errors(None, truth)], success_status=1)
    assert summary["count"] == 3 and summary["success"] == 2 and summary["success_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert summary["translation_error_m"]["count"] == 1 and summary["direction_error_deg"]["median"] == 45.0


def test_pairs_are_sampled_evenly():
    truth = np.zeros((30, 30), bool)
    truth[np.tril_indices(30, -1)] = True  # 435 pairs
    pairs = pose_eval.sample_pairs(truth, 10)
    assert len(pairs) == 10 and pairs[0] == (1, 0) and pairs[-1] == (29, 28)
    assert len(pose_eval.sample_pairs(truth, 1000)) == 435


def test_demo_camera_to_base_is_the_optical_frame_on_a_z_up_base():
    e = transform_from_xyz_quat([float(v) for v in CAM.split()])
    assert np.allclose(e[:3, :3] @ [0, 0, 1], [1, 0, 0])  # optical z (forward) = base x
    assert np.allclose(e[:3, :3] @ [0, 1, 0], [0, 0, -1])  # optical y (down) = base -z
