"""A saved map through LoopClosurePipeline: damaged thumbnails are a warning, never a refused map."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from _db_helpers import textured_scene
from _hostile import manifest_files, replace_data_file, zip_bomb_npz

from salad_ros.config import load_config
from salad_ros.pipeline import LEGACY_THUMBNAILS_FILE, LoopClosurePipeline

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
    """Replace the map's thumbnail file with ``data``, its checksum in the manifest recomputed
    so that the damage reaches the thumbnail reader."""
    return replace_data_file(path, "thumbnails", data)


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
    good = (path / manifest_files(path)["thumbnails"]["name"]).read_bytes()
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


def test_thumbnails_failing_their_checksum_or_of_an_older_save(tmp_path: Path, encoder, scenes,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    import json

    first, path = saved_map(tmp_path, encoder, scenes)
    file = path / manifest_files(path)["thumbnails"]["name"]
    good = file.read_bytes()
    file.write_bytes(good[:-1])
    with caplog.at_level(logging.WARNING, logger="salad_ros.pipeline"):
        second = LoopClosurePipeline(first.cfg, encoder=encoder)
    assert second.keyframe_count == 3 and len(second.detector.thumbnails) == 0
    assert any(file.name in r.getMessage() and "truncated" in r.getMessage() for r in caplog.records)
    # A map saved before the thumbnails were committed with it: thumbnails.npz beside the manifest.
    man = json.loads((path / "manifest.json").read_text())
    del man["files"]["thumbnails"]
    (path / "manifest.json").write_text(json.dumps(man))
    file.rename(path / LEGACY_THUMBNAILS_FILE)
    (path / LEGACY_THUMBNAILS_FILE).write_bytes(good)
    third = LoopClosurePipeline(first.cfg, encoder=encoder)
    assert len(third.detector.thumbnails) == 3
    third.process(scenes[0], 99 * 10**9)
    third.save()  # the next save commits them with the map and drops the old file
    assert not (path / LEGACY_THUMBNAILS_FILE).exists() and "thumbnails" in manifest_files(path)


# ------------------------------------------------------------------------------ save: what is on disk


def on_disk(path: Path, encoder) -> tuple[int, int]:
    """(keyframes, verification thumbnails) that a new session loads from ``path``."""
    pipe = LoopClosurePipeline(load_config(overrides={**SMALL, "database_path": str(path)}), encoder=encoder)
    return pipe.keyframe_count, len(pipe.detector.thumbnails)


def full_disk_at(monkeypatch: pytest.MonkeyPatch, stage: str) -> None:
    """Every write whose file name starts with ``stage`` fails with ENOSPC."""
    import errno

    from salad_ros import fileio

    real = fileio.write_atomic

    def write_atomic(final, produce):
        if Path(final).name.startswith(stage):
            raise OSError(errno.ENOSPC, "No space left on device", str(final))
        return real(final, produce)

    monkeypatch.setattr(fileio, "write_atomic", write_atomic)


@pytest.mark.parametrize("stage", ["thumbnails", "keyframes", "index"])
def test_full_disk_save_is_all_or_nothing_and_says_so(tmp_path: Path, encoder, scenes, stage: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from salad_ros.database import DatabaseError

    pipe, path = saved_map(tmp_path, encoder, scenes)
    pipe.process_batch([textured_scene(s, 120, 160) for s in (7, 8)], [10 * 10**9, 11 * 10**9])
    assert pipe.keyframe_count == 5
    full_disk_at(monkeypatch, stage)
    with pytest.raises(DatabaseError, match=r"No space left on device.*nothing was saved.*unchanged.*3 keyframes"):
        pipe.save()
    monkeypatch.undo()
    assert on_disk(path, encoder) == (3, 3)  # exactly the previous map, with its thumbnails
    assert not [p.name for p in path.iterdir() if ".tmp" in p.name or "000002" in p.name]
    report = pipe.save()  # with space again, both are saved together
    assert (report.keyframes, report.thumbnails) == (5, 5) and on_disk(path, encoder) == (5, 5)


def test_save_report_says_what_was_written(tmp_path: Path, encoder, scenes) -> None:
    pipe, path = saved_map(tmp_path, encoder, scenes)
    report = pipe.save()
    assert report.path == path and report.generation == 2 and report.keyframes == 3 and report.thumbnails == 3
    assert report.backup is None  # the map on disk was this one: nothing lost
    line = report.summary()
    assert "\n" not in line and "3 keyframes" in line and str(path) in line and "3 verification thumbnails" in line
    off = LoopClosurePipeline(load_config(overrides={**SMALL, "detector.verify": False}), encoder=encoder)
    off.process(scenes[0], 0)
    report = off.save(tmp_path / "plain")
    assert report.thumbnails is None and "verification is off" in report.summary()


def test_reset_then_save_keeps_the_replaced_map_as_a_backup(tmp_path: Path, encoder, scenes) -> None:
    """~/reset_database then a save (or save_on_shutdown): the saved map is replaced by the new,
    smaller one, and the replaced one is kept beside it, loadable, and the reply says where."""
    pipe, path = saved_map(tmp_path, encoder, scenes)
    pipe.reset()
    pipe.process(scenes[2], 50 * 10**9)
    report = pipe.save()
    assert report.keyframes == 1 and report.replaced_keyframes == 3
    assert report.backup == path / "previous"
    assert str(report.backup) in report.summary() and "3 keyframes" in report.summary()
    assert on_disk(path, encoder) == (1, 1)
    assert on_disk(report.backup, encoder) == (3, 3)  # the old map, thumbnails included
    # Growing the new map replaces nothing that is lost: no new backup, the old one stays.
    pipe.process(scenes[0], 60 * 10**9)
    report = pipe.save()
    assert report.backup is None and on_disk(path, encoder) == (2, 2) and on_disk(path / "previous", encoder) == (3, 3)
    # A reset with as many new keyframes as before is still another map: backed up (one generation kept).
    pipe.reset()
    pipe.process_batch(scenes[:2], [70 * 10**9, 71 * 10**9])
    report = pipe.save()
    assert report.backup == path / "previous" and report.replaced_keyframes == 2
    assert on_disk(path / "previous", encoder) == (2, 2)
    # An empty map saved over a map: also backed up.
    pipe.reset()
    report = pipe.save()
    assert report.keyframes == 0 and report.backup == path / "previous" and on_disk(path / "previous", encoder) == (2, 2)


def test_failed_backup_fails_the_save(tmp_path: Path, encoder, scenes, monkeypatch: pytest.MonkeyPatch) -> None:
    """No backup, no replacement: the map on disk stays as it was."""
    import errno
    import os

    from salad_ros.database import DatabaseError

    pipe, path = saved_map(tmp_path, encoder, scenes)
    pipe.reset()
    pipe.process(scenes[2], 50 * 10**9)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", no_space)
    monkeypatch.setattr("shutil.copyfile", no_space)
    with pytest.raises(DatabaseError, match="nothing was saved"):
        pipe.save()
    monkeypatch.undo()
    assert on_disk(path, encoder) == (3, 3) and not (path / "previous").exists()
    assert not [p.name for p in path.iterdir() if "tmp" in p.name or "000002" in p.name]
