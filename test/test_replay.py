"""salad_replay end to end: demo bag -> replay -> report, a hand-computed case on the demo route,
sqlite3/mcap and Image/CompressedImage input, and every bad-input message.

Only the first test runs the real (random-weight ViT-S, 126 px) model; the others inject a tiny
deterministic encoder so they exercise the same pipeline, detector and metrics in milliseconds.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import yaml

from salad_ros.database import Pose
from salad_ros.evaluation import demo_bag, replay
from salad_ros.io import bags
from salad_ros.io.trajectory import read_tum, write_tum

SEC = 1_000_000_000
REQUIRED_KEYS = ("keyframes", "queries_with_loop", "average_precision", "max_recall_at_100_precision", "recall_at_1")
#: Every frame a keyframe (novelty and interval rules off), candidates without consistency.
PARAMS = {
    "detector": {
        "keyframe_max_similarity": 1.0,
        "keyframe_min_interval_s": 0.0,
        "consistency_count": 1,
        "exclude_recent_keyframes": 0,
        "exclude_recent_s": 1.0,
        "min_score": 0.25,
        "top_k": 3,
    },
}


class TinyEncoder:
    """Deterministic stand-in for the model: a normalised 4x4 colour thumbnail (48-D)."""

    backend = "test"
    device = "cpu"
    dim = 48
    model_name = "tiny-thumbnail"
    input_size = (4, 4)

    def encode(self, images: Sequence[np.ndarray], color: str = "rgb") -> np.ndarray:
        out = np.stack([cv2.resize(im, (4, 4), interpolation=cv2.INTER_AREA).reshape(-1) for im in images])
        out = out.astype(np.float32) - 100.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def describe(self) -> str:
        return "test thumbnail encoder"


class ScriptedEncoder(TinyEncoder):
    """Returns the given descriptors in call order (frame i gets row i)."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = list(rows)
        self.dim = rows.shape[1]

    def encode(self, images: Sequence[np.ndarray], color: str = "rgb") -> np.ndarray:
        return np.stack([self.rows.pop(0) for _ in images]).astype(np.float32)


@pytest.fixture(scope="module")
def params_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("params") / "replay.yaml"
    path.write_text(yaml.safe_dump({"salad_loop_closure": {"ros__parameters": PARAMS}}))
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """12 frames (6 per lap) of the demo route, 160x120, mcap, raw rgb8 Image."""
    path = tmp_path_factory.mktemp("demo") / "bag"
    demo_bag.generate(path, frames=12, size=(160, 120), supersample=1, tum=path.parent / "gt.tum")
    return path


def run(argv: list[str], encoder=None) -> tuple[int, dict | None]:
    code = replay.main([str(a) for a in argv], encoder=encoder)
    out = Path(argv[argv.index("--out") + 1])
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return code, report


def base(bag: Path, out: Path, params: Path, topic: str = demo_bag.IMAGE_TOPIC) -> list:
    return [bag, "--image-topic", topic, "--params", params, "--allow-random-weights", "--out", out, "--no-progress"]


def test_round_trip_with_the_real_model(demo, params_file, tmp_path, capsys):
    """Generated bag -> replay (ViT-S, random weights) -> report with one keyframe per frame,
    the required keys, CSVs and readable PNGs; the output says the weights are random."""
    out = tmp_path / "out"
    code, report = run(base(demo, out, params_file) + ["--gt-topic", "/odom", "--backbone", "dinov2_vits14",
                                                       "--image-size", "126", "--batch-size", "4"])
    text = capsys.readouterr().out
    assert code == 0
    assert all(k in report for k in REQUIRED_KEYS)
    assert report["keyframes"] == 12 and report["frames_processed"] == 12 and report["random_weights"] is True
    assert report["model"].startswith("torch on cpu, dinov2_vits14") and "@126/random" in report["model"]
    assert report["config"]["detector.top_k"] == 3 and report["config"]["image_size"] == 126
    assert report["frames_without_pose"] == 0 and report["bag_error"] is None
    assert report["timing"]["frames_per_s"] > 0 and report["timing"]["encode_ms_per_frame"]["mean"] > 0
    assert "RANDOM WEIGHTS" in text and "average precision" in text and "recall@1 / @5 / @10" in text
    for name in ("pr_curve.png", "trajectory.png", "similarity.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert str(out / name) in text
        img = cv2.imread(str(out / name))
        assert img is not None and img.shape[0] > 400 and img.std() > 10
    with (out / "candidates.csv").open() as f:
        header = next(csv.reader(f))
    assert header[:5] == ["query_stamp", "match_stamp", "query_keyframe", "match_keyframe", "score"]
    assert "correct" in header
    with (out / "keyframes.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 12


def test_subsampling_and_frame_limit(demo, params_file, tmp_path):
    code, report = run(base(demo, tmp_path / "a", params_file) + ["--gt-topic", "/odom", "--every", "3"], TinyEncoder())
    assert code == 0 and report["keyframes"] == 4 and report["image_messages"] == 12 and report["every"] == 3
    code, report = run(base(demo, tmp_path / "b", params_file) + ["--max-frames", "5", "--no-plots"], TinyEncoder())
    assert code == 0 and report["keyframes"] == 5 and report["average_precision"] is None  # no ground truth
    assert not (tmp_path / "b" / "pr_curve.png").exists()


def test_tiny_case_on_the_demo_route_by_hand(tmp_path, params_file):
    """Four frames of the demo route at t = 0, T/4, T/2, 3T/4 (T = both laps):

        0: lap 1, s = 0           (0.00, -13.00)
        1: lap 1, s = 63.9 m      (-3.36, 13.00)
        2: lap 2, 6.1 m past start (6.06, -13.89)   6.1 m from 0: not a loop (radius 5)
        3: lap 2, s = L + 63.6 m  (-3.03, 13.79)    0.86 m from 1: the only true loop

    Scripted descriptors with cosine similarities (rows = query, only earlier keyframes matter)
        1: 0 -> 0.3        2: 0 -> 0.8, 1 -> 0.2        3: 1 -> 0.7, 2 -> 0.3, 0 -> 0.1
    Top-1: q1 -> 0 (0.3, wrong), q2 -> 0 (0.8, wrong), q3 -> 1 (0.7, right). One query with a loop.
    PR over the threshold: 0.8 -> P 0, R 0; 0.7 -> P 1/2, R 1; 0.3 -> P 1/3, R 1.
    AP = (1 - 0) * 1/2 = 0.5; max recall at 100 % precision = 0 (the best score is wrong);
    recall@1 = @5 = @10 = 1. min_score 0.25 accepts q1->0, q2->0, q3->1, q3->2: 1 of 4 true,
    detector precision 0.25, recall 1.
    """
    gram = np.array([[1, .3, .8, .1], [.3, 1, .2, .7], [.8, .2, 1, .3], [.1, .7, .3, 1]])
    rows = np.zeros((4, 8))
    rows[:, :4] = np.linalg.cholesky(gram)
    bag = tmp_path / "bag"
    demo_bag.generate(bag, frames=4, size=(64, 48), supersample=1)
    out = tmp_path / "out"
    # Exact fp32 storage: the hand-computed thresholds below are exact (fp16 moves scores by ~1e-4).
    code, r = run(base(bag, out, params_file) + ["--gt-topic", "/odom", "--set", "database.fp16=false"],
                  ScriptedEncoder(rows))
    assert code == 0
    with (out / "keyframes.csv").open() as f:
        kf = list(csv.DictReader(f))
    xy = np.array([(float(k["x"]), float(k["y"])) for k in kf])
    # (odometry at 20 Hz: the pose paired with a frame is up to 25 ms = 5 cm away from it)
    assert np.allclose(xy, [(0.0, -13.0), (-3.36, 13.0), (6.06, -13.89), (-3.03, 13.79)], atol=0.06)
    assert [k["has_true_loop"] for k in kf] == ["false", "false", "false", "true"]
    assert [k["top1_keyframe"] for k in kf] == ["", "0", "0", "1"]
    assert (r["keyframes"], r["queries_with_loop"], r["predictions"]) == (4, 1, 3)
    assert r["average_precision"] == pytest.approx(0.5)
    assert r["max_recall_at_100_precision"] == 0.0
    assert (r["recall_at_1"], r["recall_at_5"], r["recall_at_10"]) == (1.0, 1.0, 1.0)
    assert [p["precision"] for p in r["pr_curve"]] == pytest.approx([0, 0.5, 1 / 3], abs=1e-6)
    assert [p["recall"] for p in r["pr_curve"]] == pytest.approx([0, 1, 1])
    assert [p["threshold"] for p in r["pr_curve"]] == pytest.approx([0.8, 0.7, 0.3], abs=1e-5)
    assert (r["candidates"], r["true_candidates"]) == (4, 1)
    assert r["detector_precision"] == pytest.approx(0.25) and r["detector_recall"] == 1.0
    with (out / "candidates.csv").open() as f:
        cands = [(int(c["query_keyframe"]), int(c["match_keyframe"]), c["correct"]) for c in csv.DictReader(f)]
    assert cands == [(1, 0, "false"), (2, 0, "false"), (3, 1, "true"), (3, 2, "false")]


def test_max_yaw_and_radius_change_the_ground_truth(demo, params_file, tmp_path):
    _, wide = run(base(demo, tmp_path / "a", params_file) + ["--gt-topic", "/odom", "--radius", "50", "--no-plots"],
                  TinyEncoder())
    _, yaw = run(base(demo, tmp_path / "b", params_file) + ["--gt-topic", "/odom", "--radius", "50", "--max-yaw", "20",
                                                           "--no-plots"], TinyEncoder())
    assert wide["queries_with_loop"] > yaw["queries_with_loop"] > 0
    assert yaw["max_yaw_deg"] == 20 and wide["radius_m"] == 50


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_compressed_images_and_tum_ground_truth(tmp_path, params_file, storage):
    bag = tmp_path / "bag"
    tum = tmp_path / "gt.tum"
    demo_bag.generate(bag, frames=8, size=(64, 48), supersample=1, storage=storage, compressed=True, tum=tum)
    code, r = run(base(bag, tmp_path / "out", params_file, demo_bag.COMPRESSED_TOPIC) + ["--gt-tum", tum],
                  TinyEncoder())
    assert code == 0 and r["keyframes"] == 8 and r["ground_truth"] == str(tum) and r["frames_without_pose"] == 0


# ---------------------------------------------------------------------------------------------
# Bad input: each case gives its message


def test_missing_topics_list_what_exists(demo, params_file, tmp_path, capsys):
    code, _ = run(base(demo, tmp_path / "o", params_file, "/cam"), TinyEncoder())
    err = capsys.readouterr().err
    assert code == replay.EXIT_INPUT
    assert "image topic '/cam' is not in bag" in err
    # names padded to the longest one (the demo bag also has /camera/depth/image_raw)
    assert re.search(r"/camera/image_raw +sensor_msgs/msg/Image  \(12 messages\)", err) and "/odom" in err
    code, _ = run(base(demo, tmp_path / "o", params_file) + ["--gt-topic", "/ground_truth"], TinyEncoder())
    err = capsys.readouterr().err
    assert code == replay.EXIT_INPUT and "ground-truth topic '/ground_truth' is not in bag" in err
    assert "ground-truth topic candidates (Odometry or PoseStamped or PoseWithCovarianceStamped): /odom" in err
    code, _ = run(base(demo, tmp_path / "o", params_file, "/odom"), TinyEncoder())
    assert code == replay.EXIT_INPUT and "has type nav_msgs/msg/Odometry; expected" in capsys.readouterr().err


def test_truncated_bag_is_scored_up_to_the_damage(demo, params_file, tmp_path, capsys):
    bag = tmp_path / "cut"
    bag.mkdir()
    src = next(demo.glob("*.mcap"))
    data = src.read_bytes()
    (bag / src.name).write_bytes(data[: len(data) // 2])
    (bag / "metadata.yaml").write_text((demo / "metadata.yaml").read_text())
    code, r = run(base(bag, tmp_path / "o", params_file), TinyEncoder())
    err = capsys.readouterr().err
    assert code == 0
    assert "truncated or damaged: reading stopped after message index" in err and "evaluating the" in err
    assert 0 < r["frames_processed"] < 12 and r["last_good_message_index"] >= r["frames_processed"] - 1
    assert f"after message index {r['last_good_message_index']}" in r["bag_error"]


def test_unreadable_bag(demo, params_file, tmp_path, capsys):
    bag = tmp_path / "bag"
    demo_bag.generate(bag, frames=2, size=(32, 24), supersample=1, storage="sqlite3")
    db = next(bag.glob("*.db3"))
    db.write_bytes(db.read_bytes()[:100])
    code, _ = run(base(bag, tmp_path / "o", params_file), TinyEncoder())
    err = capsys.readouterr().err
    assert code == replay.EXIT_INPUT and "cannot open bag" in err and "no message could be read" in err


def test_bad_pose_file_names_the_line(demo, params_file, tmp_path, capsys):
    tum = tmp_path / "gt.tum"
    tum.write_text("1700000000.0 0 0 0 0 0 0 1\n1700000001.0 0 0 zero 0 0 0 1\n")
    code, _ = run(base(demo, tmp_path / "o", params_file) + ["--gt-tum", tum], TinyEncoder())
    assert code == replay.EXIT_INPUT and f"{tum}:2: 'zero' is not a number" in capsys.readouterr().err


def test_frames_without_pose_are_reported(demo, params_file, tmp_path, capsys):
    full = read_tum(demo.parent / "gt.tum")
    # Poses until 1 s before frame 6 (frames are T/12 apart): frames 6..11 have none.
    half = int(np.searchsorted(full.stamps_ns, full.stamps_ns[0] + (full.stamps_ns[-1] - full.stamps_ns[0]) // 2 - SEC))
    tum = tmp_path / "half.tum"
    write_tum(tum, full.stamps_ns[:half].tolist(), [full.pose(i) for i in range(half)])
    code, r = run(base(demo, tmp_path / "o", params_file) + ["--gt-tum", tum], TinyEncoder())
    err = capsys.readouterr().err
    assert code == 0 and r["frames_without_pose"] == 6 and len(r["frames_without_pose_stamps"]) == 6
    assert "6 of 12 frames have no ground-truth pose within 0.1 s" in err
    assert r["queries_with_pose"] == 6


def test_undecodable_images_are_counted(tmp_path, params_file, capsys):
    bag = tmp_path / "bag"
    with bags.BagWriter(bag, "mcap") as w:
        for i in range(6):
            t = 1_700_000_000 * SEC + i * SEC
            rgb = np.full((24, 32, 3), 40 * i, np.uint8)
            msg = bags.compressed_image_msg(rgb, t)
            if i in (2, 4):
                msg.data = np.frombuffer(b"not a jpeg", np.uint8)
            w.write("/cam/compressed", t, msg)
            w.write("/odom", t, bags.odometry_msg(Pose(float(i), 0.0, 0.0), t))
    code, r = run(base(bag, tmp_path / "o", params_file, "/cam/compressed") + ["--gt-topic", "/odom"], TinyEncoder())
    err = capsys.readouterr().err
    assert code == 0 and r["undecodable_images"] == {"undecodable": 2} and r["frames_processed"] == 4
    assert "skipped 2 undecodable images (undecodable: 2); first: image message 2" in err


def test_no_weights_is_a_clear_error(demo, tmp_path, capsys):
    code = replay.main([str(demo), "--image-topic", demo_bag.IMAGE_TOPIC, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == replay.EXIT_USAGE and "--weights FILE" in err and "--allow-random-weights" in err
    code = replay.main([str(demo), "--image-topic", demo_bag.IMAGE_TOPIC, "--out", str(tmp_path / "o"),
                        "--weights", str(tmp_path / "missing.ckpt")])
    assert code == replay.EXIT_USAGE and "file not found" in capsys.readouterr().err
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"this is not a checkpoint")
    code = replay.main([str(demo), "--image-topic", demo_bag.IMAGE_TOPIC, "--out", str(tmp_path / "o"),
                        "--weights", str(garbage), "--backbone", "dinov2_vits14"])
    err = capsys.readouterr().err
    assert code == replay.EXIT_USAGE and f"cannot load the model ({garbage})" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# Random weights: one notion, from the model itself (its descriptor identity), whatever the backend


class RandomTinyEncoder(TinyEncoder):
    """The thumbnail encoder named like a model without trained weights."""

    model_name = "tiny@4/random"


def test_random_weights_come_from_the_encoder_not_the_flags(demo, params_file, tmp_path, capsys, caplog):
    """--allow-random-weights alone does not make a trained model 'random'; a missing checkpoint
    with --allow-random-weights falls back to random weights, says so, and the report agrees."""
    code, r = run(base(demo, tmp_path / "a", params_file) + ["--no-plots"], TinyEncoder())
    assert code == 0 and r["random_weights"] is False and "RANDOM WEIGHTS" not in capsys.readouterr().out
    missing = tmp_path / "missing.ckpt"
    with caplog.at_level(logging.WARNING):
        code, r = run(base(demo, tmp_path / "b", params_file) + ["--no-plots", "--weights", missing],
                      RandomTinyEncoder())
    text = capsys.readouterr().out
    assert code == 0 and r["random_weights"] is True and r["weights"] is None
    assert "WARNING: RANDOM WEIGHTS" in text and "(random weights: these numbers are not a measure of SALAD)" in text
    assert f"parameter 'weights': file not found: {missing}" in caplog.text


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory) -> SimpleNamespace:
    """ViT-S / 544-D / 70 px exported through the documented command line: once from random
    weights, once from a checkpoint file written here (unverified: test_export checks that)."""
    import torch

    from export import onnx as xonnx
    from salad_ros.model import build_model

    d = tmp_path_factory.mktemp("onnx")
    common = ["--backbone", "dinov2_vits14", "--descriptor", "salad-544", "--image-size", "70", "--no-verify", "--quiet"]
    torch.manual_seed(1)
    weights = d / "salad_s544.pth"
    torch.save(build_model("dinov2_vits14", variant="salad-544").state_dict(), weights)
    printed = {}
    for name, source in (("random", ["--random-weights"]), ("trained", ["--weights", str(weights)])):
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert xonnx.main(source + ["--out", str(d / f"{name}.onnx")] + common) == 0
        printed[name] = out.getvalue()
    return SimpleNamespace(random=d / "random.onnx", trained=d / "trained.onnx", weights=weights, printed=printed)


def test_export_of_random_weights_says_so(onnx_models):
    assert "RANDOM WEIGHTS" in onnx_models.printed["random"]
    assert "RANDOM WEIGHTS" not in onnx_models.printed["trained"]


@pytest.mark.parametrize("which", ["random", "trained"])
def test_onnx_replay_reports_random_weights_from_the_file(onnx_models, demo, params_file, tmp_path, capsys, which):
    """Acceptance: replay of an ONNX file exported from random weights says RANDOM WEIGHTS and
    writes "random_weights": true, though no flag asked for random weights; a file exported from
    a checkpoint says neither."""
    from salad_ros.backends import file_fingerprint

    engine = getattr(onnx_models, which)
    out = tmp_path / "out"
    code, r = run([demo, "--image-topic", demo_bag.IMAGE_TOPIC, "--params", params_file, "--out", out, "--no-progress",
                   "--no-plots", "--gt-topic", "/odom", "--backbone", "dinov2_vits14", "--descriptor", "salad-544",
                   "--image-size", "70", "--device", "cpu", "--set", "backend=onnxruntime", "--set", f"engine={engine}"])
    text = capsys.readouterr().out
    assert code == 0 and r["frames_processed"] == 12 and r["config"]["backend"] == "onnxruntime"
    assert r["random_weights"] is (which == "random")
    assert ("RANDOM WEIGHTS" in text) is (which == "random")
    fingerprint = "random" if which == "random" else file_fingerprint(onnx_models.weights)
    assert r["model"].startswith(f"onnxruntime on cpu, dinov2_vits14/16x32+32@70/{fingerprint}")
    if which == "random":
        assert f"{engine} was exported from random weights" in text
        assert "(random weights: these numbers are not a measure of SALAD)" in text
