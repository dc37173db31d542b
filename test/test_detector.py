"""LoopDetector: keyframe rules, loop detection on a synthetic revisit stream, consistency,
verification wiring and configuration checks."""

from __future__ import annotations

import dataclasses
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from _db_helpers import LoopStream, textured_scene, unit, warp_pair  # noqa: E402

from salad_ros import params as cfgmod  # noqa: E402
from salad_ros.database import KeyframeDatabase, Pose  # noqa: E402
from salad_ros.detector import DetectorConfig, FrameResult, LoopDetector  # noqa: E402
from salad_ros.params import ConfigError  # noqa: E402

SEC = 1_000_000_000


@pytest.fixture(scope="module")
def clean_stream() -> LoopStream:
    return LoopStream(seed=1)


@pytest.fixture(scope="module")
def aliased_stream() -> LoopStream:
    return LoopStream(seed=2, inject_every_s=10.0)


def run(stream: LoopStream, cfg: DetectorConfig) -> dict[str, float]:
    """Feed the stream; score candidates against ground truth.

    A candidate is correct when the query is a genuine frame and the matched keyframe shows a
    spot within 2 m (along the loop) of where the robot is. Recall: fraction of second-lap
    genuine keyframes (every spot was seen on lap one) with at least one correct candidate.
    """
    det = LoopDetector(cfg, KeyframeDatabase(stream.dim))
    shows: dict[int, float] = {}
    tp = fp = queries = found = 0
    for f in stream.frames:
        res = det.process(f.descriptor, f.stamp_ns)
        if not res.is_keyframe:
            assert res.matches == [] and res.candidates == []
            continue
        shows[res.keyframe_id] = f.appearance
        good = [c for c in res.candidates
                if not f.injected and stream.loop_distance(shows[c.match_id], f.position) <= 2.0]
        tp += len(good)
        fp += len(res.candidates) - len(good)
        if f.lap >= 1 and not f.injected:
            queries += 1
            found += bool(good)
    return {"tp": tp, "fp": fp, "precision": tp / max(1, tp + fp), "recall": found / queries,
            "keyframes": det.stats["keyframes"]}


def test_loop_stream_is_salad_like(clean_stream: LoopStream) -> None:
    # the synthetic model has the similarity levels the defaults are designed for
    fr = clean_stream.frames
    per_lap = int(clean_stream.length_m / clean_stream.speed * clean_stream.rate_hz)
    revisit = [float(fr[i].descriptor @ fr[i + per_lap].descriptor) for i in range(0, 200, 7)]
    unrelated = [float(fr[i].descriptor @ fr[i + 100].descriptor) for i in range(0, 200, 7)]
    assert 0.55 < np.median(revisit) < 0.75
    assert 0.15 < np.median(unrelated) < 0.35


def test_detects_revisits_with_defaults(clean_stream: LoopStream) -> None:
    r = run(clean_stream, DetectorConfig())
    assert r["precision"] == 1.0, r
    assert r["recall"] >= 0.9, r
    assert r["keyframes"] > 400  # 0.5 s apart at 2 Hz: every frame is novel enough


def test_consistency_removes_isolated_false_matches(aliased_stream: LoopStream) -> None:
    assert sum(f.injected for f in aliased_stream.frames) >= 6
    off = run(aliased_stream, DetectorConfig(consistency_count=1))
    assert off["fp"] > 0 and off["precision"] < 1.0  # the aliased frames do fool a lone query
    on = run(aliased_stream, DetectorConfig(consistency_count=3))
    assert on["fp"] == 0 and on["precision"] == 1.0, on
    assert on["recall"] >= 0.9, on


def test_matches_are_raw_top_k_and_candidates_are_filtered(clean_stream: LoopStream) -> None:
    det = LoopDetector(DetectorConfig(min_score=0.99), KeyframeDatabase(clean_stream.dim))
    results = [det.process(f.descriptor, f.stamp_ns) for f in clean_stream.frames]
    later = [r for r in results if r.is_keyframe and r.keyframe_id > 300]
    assert all(len(r.matches) == 5 for r in later)
    assert all(r.candidates == [] for r in results)  # nothing reaches 0.99
    assert [m.rank for m in later[0].matches] == [0, 1, 2, 3, 4]
    scores = [m.score for m in later[0].matches]
    assert scores == sorted(scores, reverse=True)


def test_detector_is_deterministic(aliased_stream: LoopStream) -> None:
    frames = aliased_stream.frames[:300]

    def replay() -> list[FrameResult]:
        det = LoopDetector(DetectorConfig(consistency_count=1), KeyframeDatabase(aliased_stream.dim))
        return [det.process(f.descriptor, f.stamp_ns) for f in frames]

    assert replay() == replay()


# ------------------------------------------------------------------------------------------ keyframe rules


def _det(**changes) -> LoopDetector:
    return LoopDetector(DetectorConfig(**changes), KeyframeDatabase(64))


def _random_desc(rng: np.random.Generator) -> np.ndarray:
    return unit(rng.standard_normal(64))


def test_keyframe_min_interval() -> None:
    det, rng = _det(keyframe_min_interval_s=0.5), np.random.default_rng(0)
    flags = [det.process(_random_desc(rng), i * SEC // 10).is_keyframe for i in range(21)]  # 10 Hz
    assert [i for i, f in enumerate(flags) if f] == [0, 5, 10, 15, 20]
    res = det.process(_random_desc(rng), 2 * SEC + SEC // 10)
    assert not res.is_keyframe and "too soon" in res.reason and res.keyframe_id is None


def test_keyframe_min_distance() -> None:
    det, rng = _det(keyframe_min_interval_s=0.0, keyframe_min_distance_m=1.0, keyframe_min_rotation_deg=0.0), \
        np.random.default_rng(0)
    flags = [det.process(_random_desc(rng), i * SEC, Pose(0.25 * i, 0.0, 0.0)).is_keyframe for i in range(13)]
    assert [i for i, f in enumerate(flags) if f] == [0, 4, 8, 12]
    res = det.process(_random_desc(rng), 13 * SEC, Pose(3.25, 0.0, 0.0))
    assert "too little motion" in res.reason


def test_keyframe_min_rotation() -> None:
    det, rng = _det(keyframe_min_interval_s=0.0, keyframe_min_distance_m=1.0, keyframe_min_rotation_deg=15.0), \
        np.random.default_rng(0)

    def yaw(deg: float) -> Pose:
        h = math.radians(deg) / 2
        return Pose(0.0, 0.0, 0.0, 0.0, 0.0, math.sin(h), math.cos(h))

    flags = [det.process(_random_desc(rng), i * SEC, yaw(5.1 * i)).is_keyframe for i in range(10)]
    assert [i for i, f in enumerate(flags) if f] == [0, 3, 6, 9]
    # without poses the motion rule does not apply
    assert det.process(_random_desc(rng), 20 * SEC).is_keyframe


def test_keyframe_novelty() -> None:
    det, rng = _det(keyframe_min_interval_s=0.0, keyframe_max_similarity=0.9), np.random.default_rng(0)
    still = _random_desc(rng)
    assert det.process(still, 0).is_keyframe
    for i in range(1, 5):  # standing still: nearly the same descriptor
        res = det.process(unit(still + 0.05 * _random_desc(rng)), i * SEC)
        assert not res.is_keyframe and "not novel" in res.reason
    assert det.process(_random_desc(rng), 6 * SEC).is_keyframe


def test_stamp_going_backwards_and_reset() -> None:
    det, rng = _det(), np.random.default_rng(0)
    assert det.process(_random_desc(rng), 10 * SEC).is_keyframe
    res = det.process(_random_desc(rng), 5 * SEC)
    assert not res.is_keyframe and "reset()" in res.reason
    det.reset()
    assert det.process(_random_desc(rng), 5 * SEC).reason == "first keyframe"
    assert len(det.database) == 2  # reset() leaves the database alone


def test_wrong_descriptor_is_refused() -> None:
    det = _det()
    with pytest.raises(ValueError, match="expects 64"):
        det.process(np.ones(65, np.float32), 0)
    with pytest.raises(ValueError, match="zero"):
        det.process(np.zeros(64, np.float32), 0)


def test_recent_keyframes_are_not_loops() -> None:
    rng = np.random.default_rng(0)
    place = _random_desc(rng)
    det = _det(keyframe_min_interval_s=0.0, keyframe_max_similarity=1.0, consistency_count=1,
               exclude_recent_keyframes=3, exclude_recent_s=0.0)
    results = [det.process(unit(place + 0.3 * _random_desc(rng)), i * SEC) for i in range(6)]
    assert [bool(r.candidates) for r in results] == [False] * 4 + [True] * 2
    assert results[4].candidates[0].match_id == 0


# ------------------------------------------------------------------------------------------ verification wiring


def test_verification_accepts_same_scene_and_rejects_other() -> None:
    rng = np.random.default_rng(0)
    cfg = DetectorConfig(keyframe_min_interval_s=0.0, keyframe_max_similarity=1.0, consistency_count=1,
                         exclude_recent_keyframes=0, exclude_recent_s=5.0, verify=True, thumbnail_max_count=50)
    det = LoopDetector(cfg, KeyframeDatabase(64))
    place = _random_desc(rng)
    scene, warped, _ = warp_pair(7)
    assert det.process(place, 0, image=scene).is_keyframe
    for i in range(1, 8):
        det.process(_random_desc(rng), i * SEC, image=textured_scene(100 + i))
    # revisit with the same view through a homography: verified
    res = det.process(unit(place + 0.3 * _random_desc(rng)), 10 * SEC, image=warped)
    assert len(res.candidates) == 1
    cand = res.candidates[0]
    assert (cand.match_id, cand.verified) == (0, True) and cand.inliers >= cfg.verify_min_inliers
    assert 0.0 < cand.inlier_ratio <= 1.0
    # a descriptor match whose image is another scene: rejected by geometry
    res = det.process(unit(place + 0.3 * _random_desc(rng)), 20 * SEC, image=textured_scene(999))
    assert res.candidates == [] and res.rejected[0].verified is False
    assert res.rejected[0].reason.startswith("geometry")
    # no image at all: rejected as unverifiable (default) ...
    res = det.process(unit(place + 0.3 * _random_desc(rng)), 30 * SEC)
    assert res.candidates == [] and "unverifiable" in res.rejected[0].reason
    assert len(det.thumbnails) == 10  # keyframes with images only


def test_unverifiable_candidates_can_be_accepted_unverified() -> None:
    rng = np.random.default_rng(0)
    cfg = DetectorConfig(keyframe_min_interval_s=0.0, keyframe_max_similarity=1.0, consistency_count=1,
                         exclude_recent_keyframes=0, exclude_recent_s=0.0, verify=True,
                         verify_missing_thumbnail="accept")
    det = LoopDetector(cfg, KeyframeDatabase(64))
    place = _random_desc(rng)
    det.process(place, 0)
    res = det.process(unit(place + 0.3 * _random_desc(rng)), SEC)
    assert res.candidates[0].verified is None and res.candidates[0].inliers == 0


def test_thumbnail_store_is_bounded_in_the_detector() -> None:
    rng = np.random.default_rng(0)
    cfg = DetectorConfig(keyframe_min_interval_s=0.0, verify=True, thumbnail_max_count=4, thumbnail_max_side=64)
    det = LoopDetector(cfg, KeyframeDatabase(64))
    img = textured_scene(3, 120, 160)
    for i in range(10):
        det.process(_random_desc(rng), i * SEC, image=img)
    assert len(det.thumbnails) == 4 and 5 not in det.thumbnails and 6 in det.thumbnails
    assert max(det.thumbnails.get(9).shape) == 64


# ------------------------------------------------------------------------------------------ configuration


def test_config_checks_at_start_up() -> None:
    with pytest.raises(ConfigError, match="min_score"):
        DetectorConfig(min_score=1.5)
    with pytest.raises(ConfigError, match="top_k"):
        DetectorConfig(top_k=0)
    with pytest.raises(ConfigError, match="verify_feature"):
        DetectorConfig(verify_feature="surf")
    with pytest.raises(ConfigError, match="consistency_count"):
        DetectorConfig(consistency_count=2.5)
    with pytest.raises(ConfigError, match="detector.consistency_id_window"):
        DetectorConfig(consistency_count=3, consistency_id_window=0)
    cfg = cfgmod.from_flat_dict(DetectorConfig, {"detector.min_score": 0.6, "detector.verify": True},
                                prefix="detector.")
    assert (cfg.min_score, cfg.verify) == (0.6, True)
    with pytest.raises(ConfigError, match="unknown parameter 'detector.min_scor'"):
        cfgmod.from_flat_dict(DetectorConfig, {"detector.min_scor": 0.6}, prefix="detector.")
    specs = cfgmod.iter_specs(DetectorConfig)
    assert {s.type for s in specs} <= {bool, int, float, str}
    assert all(s.description for s in specs)
    assert dataclasses.asdict(DetectorConfig()) == {s.name: s.default for s in specs}
