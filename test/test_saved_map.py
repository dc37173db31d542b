"""A saved map through LoopClosurePipeline: damaged thumbnails are a warning, never a refused map."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from _db_helpers import textured_scene
from _hostile import zip_bomb_npz

from salad_ros.config import load_config
from salad_ros.pipeline import THUMBNAILS_FILE, LoopClosurePipeline

pytestmark = pytest.mark.timeout(120)

SMALL = {
    "backbone": "dinov2_vits14",
    "image_size": 126,
    "allow_random_weights": True,
    "detector.keyframe_min_interval_s": 0.0,
    "detector.keyframe_max_similarity": 1.0,
    "detector.exclude_recent_keyframes": 0,
    "detector.exclude_recent_s": 0.0,
    "detector.consistency_count": 1,
    "detector.min_score": 0.999,
    "detector.verify": True,
}


@pytest.fixture(scope="module")
def encoder():
    return LoopClosurePipeline(load_config(overrides=SMALL)).encoder


@pytest.fixture(scope="module")
def scenes():
    return [textured_scene(s, 120, 160) for s in range(3)]


def saved_map(tmp_path: Path, encoder, scenes, name: str = "map") -> tuple[LoopClosurePipeline, Path]:
    path = tmp_path / name
    pipe = LoopClosurePipeline(load_config(overrides={**SMALL, "database_path": str(path)}), encoder=encoder)
    pipe.process_batch(scenes, [i * 10**9 for i in range(len(scenes))])
    pipe.save()
    return pipe, path


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def put_thumbnails(path: Path, data: bytes) -> Path:
    """Replace the map's thumbnail file with ``data``."""
    file = path / THUMBNAILS_FILE
    file.write_bytes(data)
    return file


DAMAGE = {
    "truncated": lambda good: good[: len(good) // 2],
    "garbage": lambda good: b"garbage",
    "empty": lambda good: b"",
    "float sizes": lambda good: npz_bytes(ids=np.arange(3), stamps_ns=np.arange(3) * 10**9, sizes=np.ones(3),
                                          data=np.zeros(3, np.uint8)),
    "2-D ids": lambda good: npz_bytes(ids=np.arange(4).reshape(2, 2), stamps_ns=np.arange(4), sizes=np.ones(4, np.int64),
                                      data=np.zeros(4, np.uint8)),
    "0-d arrays": lambda good: npz_bytes(ids=np.int64(0), stamps_ns=np.int64(0), sizes=np.int64(1),
                                         data=np.zeros(1, np.uint8)),
    "negative sizes": lambda good: npz_bytes(ids=np.arange(2), stamps_ns=np.arange(2) * 10**9,
                                             sizes=np.array([5, -3]), data=np.zeros(2, np.uint8)),
    "object array": lambda good: npz_bytes(ids=np.array([0, "x"], dtype=object), stamps_ns=np.arange(2),
                                           sizes=np.ones(2, np.int64), data=np.zeros(2, np.uint8)),
}


@pytest.mark.parametrize("damage", [*DAMAGE, "zip bomb"])
def test_damaged_thumbnails_are_a_warning_and_the_map_loads(tmp_path: Path, encoder, scenes, damage: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    first, path = saved_map(tmp_path, encoder, scenes)
    good = (path / THUMBNAILS_FILE).read_bytes()
    if damage == "zip bomb":  # 8 MB that inflate to 8 GiB
        zip_bomb_npz(tmp_path / "bomb.npz", "data", "|u1", others={
            "ids": np.arange(3), "stamps_ns": np.arange(3) * 10**9, "sizes": np.full(3, 1 << 20)})
        file = put_thumbnails(path, (tmp_path / "bomb.npz").read_bytes())
    else:
        file = put_thumbnails(path, DAMAGE[damage](good))
    with caplog.at_level(logging.WARNING, logger="salad_ros.pipeline"):
        second = LoopClosurePipeline(first.cfg, encoder=encoder)
    assert second.keyframe_count == 3
    assert second.thumbnail(0) is None  # nothing half-loaded
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(file.name in w and "thumbnail" in w for w in warnings), warnings
    # The map still works: a revisit is found (unverified thumbnails: rejected, as configured).
    assert second.process(scenes[1], 100 * 10**9).matches[0].id == 1
