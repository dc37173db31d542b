"""LoopClosurePipeline: the encoder + database + detector that the node and replay share."""

import numpy as np
import pytest

from salad_ros.config import load_config
from salad_ros.database import DatabaseError, Pose
from salad_ros.io.messages import ns_to_sec_nanosec, pose_from_msg, stamp_to_ns
from salad_ros.pipeline import LoopClosurePipeline, database_exists

SMALL = {
    "backbone": "dinov2_vits14",
    "image_size": 126,
    "allow_random_weights": True,
    "detector.keyframe_min_interval_s": 0.0,
    "detector.keyframe_max_similarity": 1.0,
    "detector.exclude_recent_keyframes": 2,
    "detector.exclude_recent_s": 0.0,
    "detector.consistency_count": 1,
    "detector.min_score": 0.999,
}


def frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    places = [(rng.random((96, 128, 3)) * 255).astype(np.uint8) for _ in range(n)]
    return places + places[:2]  # a revisit of the first two places


@pytest.fixture(scope="module")
def images():
    return frames(5)


def test_batch_equals_frame_by_frame(images):
    stamps = [i * 1_000_000_000 for i in range(len(images))]
    one = LoopClosurePipeline(load_config(overrides=SMALL))
    by_frame = [one.process(img, s) for img, s in zip(images, stamps, strict=True)]
    batched = LoopClosurePipeline(load_config(overrides=SMALL), encoder=one.encoder)
    out = batched.process_batch(images, stamps)
    by_batch = out.frames
    # What replay needs comes back with the results: the descriptors and the time of each stage.
    assert out.descriptors.dtype == np.float32 and out.descriptors.shape == (len(images), one.encoder.dim)
    np.testing.assert_allclose(out.descriptors, one.encoder.encode(images), atol=1e-5)
    assert out.encode_s > 0 and len(out.detect_s) == len(images) and all(t > 0 for t in out.detect_s)
    assert [r.keyframe_id for r in by_frame] == [r.keyframe_id for r in by_batch] == list(range(7))
    pairs = lambda results: [(c.query_id, c.match_id) for r in results for c in r.candidates]  # noqa: E731
    assert pairs(by_frame) == pairs(by_batch) == [(5, 0), (6, 1)]
    for a, b in zip(by_frame, by_batch, strict=True):
        assert [m.id for m in a.matches] == [m.id for m in b.matches]
        np.testing.assert_allclose([m.score for m in a.matches], [m.score for m in b.matches], atol=1e-4)


def test_database_path_loads_previous_session_and_refuses_other_model(tmp_path, images):
    path = tmp_path / "map"
    cfg = load_config(overrides={**SMALL, "database_path": str(path)})
    first = LoopClosurePipeline(cfg)
    assert not database_exists(path)
    first.process_batch(images[:5], [i * 10**9 for i in range(5)])
    first.save()
    assert database_exists(path)
    # A second session loops against the first session's map.
    second = LoopClosurePipeline(cfg, encoder=first.encoder)
    assert second.keyframe_count == 5
    result = second.process(images[0], 100 * 10**9)
    assert [c.match_id for c in result.candidates] == [0]
    second.reset()
    assert second.keyframe_count == 0 and database_exists(path)  # reset doesn't touch the saved map
    # Descriptors of another model are not comparable: refused with a message, files untouched.
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    other = load_config(overrides={**SMALL, "database_path": str(path), "descriptor": "salad-544"})
    with pytest.raises(DatabaseError, match=str(path)):
        LoopClosurePipeline(other)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before


def test_public_methods_answer_what_the_node_asks(images):
    """The node reads the model, the map and the debug view through these, not the internals."""
    pipe = LoopClosurePipeline(load_config(overrides={**SMALL, "detector.verify": True}))
    assert pipe.keyframe_count == 0 and pipe.random_weights and pipe.model_name.endswith("@126/random")
    assert (pipe.backend, pipe.device) == ("torch", "cpu") and pipe.describe() == pipe.encoder.describe()
    assert pipe.memory_bytes() >= 0
    result = pipe.process(images[0], 5 * 10**9, pose=Pose(1.0, 2.0, 3.0), frame_id="cam")
    assert result.is_keyframe and pipe.keyframe_count == 1 and pipe.memory_bytes() > 0
    kf = pipe.keyframe(0)
    assert (kf.id, kf.stamp_ns, kf.frame_id, kf.pose.x) == (0, 5 * 10**9, "cam", 1.0)
    with pytest.raises(KeyError):
        pipe.keyframe(1)
    thumb = pipe.thumbnail(0)
    assert thumb is not None and thumb.ndim == 2 and max(thumb.shape) <= 320
    mass = pipe.heatmap(images[0])
    assert mass is not None and mass.shape == (126 // 14, 126 // 14)
    pipe.reset()
    assert pipe.keyframe_count == 0 and pipe.thumbnail(0) is None


class _ThumbEncoder:
    """A duck-typed encoder without a heat map, named like a trained model."""

    backend, device, dim, model_name, input_size = "test", "cpu", 12, "thumbs@2/0123abcd", (2, 2)

    def encode(self, images, color="rgb"):
        out = np.stack([im[::48, ::64].reshape(-1) for im in images]).astype(np.float32) + 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def describe(self):
        return "test encoder"


def test_any_encoder_object_works_and_names_its_weights(images):
    pipe = LoopClosurePipeline(load_config(overrides=SMALL), encoder=_ThumbEncoder())
    assert not pipe.random_weights and pipe.heatmap(images[0]) is None and pipe.describe() == "test encoder"
    out = pipe.process_batch(images[:3], [0, 10**9, 2 * 10**9])
    assert [r.keyframe_id for r in out.frames] == [0, 1, 2] and out.descriptors.shape == (3, 12)
    assert pipe.thumbnail(0) is None  # verification off: no thumbnails
    assert pipe.thumbnail(0, color=True) is None  # colour thumbnails not asked for


def test_pipeline_owns_the_colour_thumbnails_of_a_live_view(images):
    pipe = LoopClosurePipeline(load_config(overrides=SMALL), encoder=_ThumbEncoder(), color_thumbnails=True)
    out = pipe.process_batch(images[:3], [0, 10**9, 2 * 10**9])
    assert [r.keyframe_id for r in out.frames] == [0, 1, 2]
    thumb = pipe.thumbnail(1, color=True)
    assert thumb is not None and thumb.shape == (96, 128, 3)  # within 160 px: kept at its size
    # colour, and of that keyframe: compare 16x16-block colour means (JPEG smooths the noise frames)
    def blocks(im):
        return im.astype(float).reshape(6, 16, 8, 16, 3).mean(axis=(1, 3))

    own, other = (np.abs(blocks(thumb) - blocks(images[i])).mean() for i in (1, 2))
    assert own < 3 and other > 3 * own
    assert pipe.thumbnail(1) is None  # verification off: the grey store does not exist
    pipe.reset()
    assert pipe.thumbnail(1, color=True) is None  # a reset forgets every thumbnail


def test_save_without_path_is_an_error():
    pipe = LoopClosurePipeline(load_config(overrides=SMALL))
    with pytest.raises(ValueError, match="no database path"):
        pipe.save()


class _NS:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_message_field_helpers():
    stamp = _NS(sec=12, nanosec=345)
    assert stamp_to_ns(stamp) == 12_000_000_345 and ns_to_sec_nanosec(12_000_000_345) == (12, 345)
    pose = _NS(position=_NS(x=1, y=2, z=3), orientation=_NS(x=0, y=0, z=0, w=1))
    odom = _NS(header=None, pose=_NS(pose=pose, covariance=[]))  # Odometry / PoseWithCovarianceStamped
    stamped = _NS(header=None, pose=pose)  # PoseStamped
    assert pose_from_msg(odom) == pose_from_msg(stamped) == Pose(1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 1.0)
    with pytest.raises(TypeError, match="carries no pose"):
        pose_from_msg(_NS(data=1))


def test_verification_thumbnails_survive_a_saved_map(tmp_path):
    """Multi-session with geometric verification: the second session verifies its revisit
    against the first session's keyframe thumbnails, saved with the database."""
    from _db_helpers import textured_scene
    from _hostile import manifest_files, replace_data_file

    scenes = [textured_scene(s, 240, 320) for s in range(3)]
    path = tmp_path / "map"
    cfg = load_config(overrides={**SMALL, "database_path": str(path), "detector.verify": True,
                                 "detector.exclude_recent_keyframes": 0})
    first = LoopClosurePipeline(cfg)
    first.process_batch(scenes, [i * 10**9 for i in range(3)])
    first.save()
    thumbs = path / manifest_files(path)["thumbnails"]["name"]  # committed with the map
    assert thumbs.is_file()

    second = LoopClosurePipeline(cfg, encoder=first.encoder)
    assert len(second.detector.thumbnails) == 3 and second.thumbnail(2) is not None
    result = second.process(scenes[1], 100 * 10**9)
    assert [(c.match_id, c.verified) for c in result.candidates] == [(1, True)]
    assert result.candidates[0].inliers >= cfg.detector.verify_min_inliers

    # Thumbnails of another map (stamps differ) are not taken for this one.
    other = tmp_path / "other"
    third = LoopClosurePipeline(load_config(overrides={**SMALL, "database_path": str(other),
                                                       "detector.verify": True}), encoder=first.encoder)
    third.process_batch(scenes, [7 * 10**9 + i for i in range(3)])
    third.save()
    replace_data_file(other, "thumbnails", thumbs.read_bytes())
    fourth = LoopClosurePipeline(third.cfg, encoder=first.encoder)
    assert len(fourth.detector.thumbnails) == 0

    # A damaged thumbnail file is a warning, not a refused map (more cases: test_saved_map.py).
    replace_data_file(other, "thumbnails", b"garbage")
    assert len(LoopClosurePipeline(third.cfg, encoder=first.encoder).database) == 3
