"""KeyframeDatabase.load on damaged and hostile folders: every failure is one DatabaseError naming
the folder, nothing hangs or exhausts memory, and no file is touched."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _hostile import fuzz, manifest_files, replace_data_file, tree_digest, zip_bomb_npz

from salad_ros.database import DatabaseError, KeyframeDatabase, Pose

pytestmark = pytest.mark.timeout(60)  # a regression hangs one test, not the suite

DIM = 32


def saved(tmp_path: Path, n: int = 50) -> Path:
    import numpy as np

    x = np.random.default_rng(0).standard_normal((n, DIM), dtype=np.float32)
    db = KeyframeDatabase(DIM, model_name="test-model")
    db.add(x / np.linalg.norm(x, axis=1, keepdims=True), np.arange(n) * 10**9, frame_ids="cam",
           poses=[Pose(float(i), 0.0, 0.0) for i in range(n)], metadata=[{"i": i} for i in range(n)])
    d = tmp_path / "db"
    db.save(d)
    return d


def refused(d: Path, match: str) -> DatabaseError:
    before = tree_digest(d)
    with pytest.raises(DatabaseError, match=match) as info:
        KeyframeDatabase.load(d, expected_dim=DIM, expected_model="test-model")
    assert str(d) in str(info.value)
    assert tree_digest(d) == before  # loading never touches the files
    return info.value


@pytest.mark.parametrize("victim", ["manifest", "index", "keyframes", "records"])
def test_fifo_is_refused_without_blocking(tmp_path: Path, victim: str) -> None:
    d = saved(tmp_path)
    path = d / ("manifest.json" if victim == "manifest" else manifest_files(d)[victim]["name"])
    path.unlink()
    os.mkfifo(path)
    if victim in ("keyframes", "records"):  # the index's size cannot be 0: its bounds refuse that
        replace_data_file(d, victim)  # the manifest agrees: size 0, sha256 of nothing
    refused(d, f"{path.name}.*not a regular file")


@pytest.mark.parametrize("victim", ["manifest", "index", "keyframes", "records"])
def test_symlink_to_dev_zero_is_refused(tmp_path: Path, victim: str) -> None:
    d = saved(tmp_path)
    path = d / ("manifest.json" if victim == "manifest" else manifest_files(d)[victim]["name"])
    path.unlink()
    path.symlink_to("/dev/zero")
    if victim in ("keyframes", "records"):  # the index's size cannot be 0: its bounds refuse that
        replace_data_file(d, victim)
    refused(d, f"{path.name}.*(symbolic link|not a regular file)")


def test_symlink_to_a_good_copy_is_refused_too(tmp_path: Path) -> None:
    """save() never makes links: a linked data file is not what it wrote."""
    d = saved(tmp_path)
    path = d / manifest_files(d)["keyframes"]["name"]
    (tmp_path / "elsewhere.npz").write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere.npz")
    refused(d, "symbolic link")


def test_deeply_nested_manifest_and_records(tmp_path: Path) -> None:
    d = saved(tmp_path)
    good = (d / "manifest.json").read_bytes()
    (d / "manifest.json").write_bytes(b"[" * 10**6)
    refused(d, "manifest.json")
    (d / "manifest.json").write_bytes(good)
    replace_data_file(d, "records", b'{"frame_ids": ' + b"[" * 10**6 + b"}")
    refused(d, "records-000001.json")


def test_oversized_manifest_is_refused_before_parsing(tmp_path: Path) -> None:
    d = saved(tmp_path)
    man = json.loads((d / "manifest.json").read_text())
    man["padding"] = " " * (2 << 20)
    (d / "manifest.json").write_text(json.dumps(man))
    refused(d, "manifest.json.*larger than")


@pytest.mark.parametrize("bomb", ["8 GiB", "declared 8 GiB", "header 8 GiB"])
def test_zip_bomb_keyframes_with_matching_checksum(tmp_path: Path, bomb: str) -> None:
    """npz members that would inflate to 8 GiB: refused from the file size, the member's declared
    size or its .npy header, before anything is inflated or allocated."""
    import numpy as np

    d = saved(tmp_path)
    path = d / manifest_files(d)["keyframes"]["name"]
    others = {"stamps_ns": np.arange(50, dtype=np.int64), "poses": np.zeros((50, 7)),
              "robot_ids": np.zeros(50, np.int64), "sessions": np.zeros(50, np.int64),
              "robot_keyframe_ids": np.arange(50, dtype=np.int64)}
    if bomb == "8 GiB":  # a real one: 8 MB of deflate that inflates to 8 GiB
        zip_bomb_npz(path, "ids", others=others)
        assert path.stat().st_size < 16 << 20
        match = "keyframes-000001.npz.*too large for 50 keyframes"
    elif bomb == "declared 8 GiB":  # small, but its zip entry declares 8 GiB
        zip_bomb_npz(path, "ids", nbytes=1 << 20, declared=8 << 30, others=others)
        match = "keyframes-000001.npz: member ids.npy declares 8589934592 bytes"
    else:  # small, but its .npy header asks for a 2^30-element array
        zip_bomb_npz(path, "ids", nbytes=1 << 20, items=1 << 30, others=others)
        match = r"keyframes-000001.npz: member ids.npy (declares|has shape \(1073741824,\))"
    replace_data_file(d, "keyframes", path.read_bytes())
    refused(d, match)


def test_count_that_the_index_cannot_hold_is_refused(tmp_path: Path) -> None:
    """A manifest claiming 10^9 keyframes: refused from the file sizes, nothing allocated."""
    d = saved(tmp_path)
    man = json.loads((d / "manifest.json").read_text())
    man["count"] = man["next_id"] = 10**9
    (d / "manifest.json").write_text(json.dumps(man))
    refused(d, "too small for 1000000000 keyframes")


@pytest.mark.parametrize("victim", ["keyframes", "records", "index"])
@pytest.mark.parametrize("seed", range(4))
def test_byte_fuzz_with_matching_checksum(tmp_path: Path, victim: str, seed: int) -> None:
    """Damage the checksums cannot see (they were recomputed): a DatabaseError or, where the
    damage happens to be harmless, a database that loads; never another exception."""
    d = saved(tmp_path)
    path = d / manifest_files(d)[victim]["name"]
    replace_data_file(d, victim, fuzz(path.read_bytes(), seed, count=8 if victim == "index" else 64))
    before = tree_digest(d)
    try:
        db = KeyframeDatabase.load(d, expected_dim=DIM, expected_model="test-model")
    except DatabaseError as exc:
        assert str(d) in str(exc)
    else:
        assert len(db) == 50
    assert tree_digest(d) == before


def test_npz_with_wrong_member_types_is_refused(tmp_path: Path) -> None:
    import io

    import numpy as np

    d = saved(tmp_path)
    for bad in ({"ids": np.arange(50.0), "stamps_ns": np.arange(50), "poses": np.zeros((50, 7))},
                {"ids": np.arange(50), "stamps_ns": np.arange(50).reshape(5, 10), "poses": np.zeros((50, 7))},
                {"ids": np.int64(3), "stamps_ns": np.arange(50), "poses": np.zeros((50, 7))},
                {"ids": np.arange(50), "stamps_ns": np.arange(50), "poses": np.zeros((50, 7)), "extra": np.zeros(1)},
                {"ids": np.array(["a"] * 50), "stamps_ns": np.arange(50), "poses": np.zeros((50, 7))}):
        buf = io.BytesIO()
        np.savez_compressed(buf, **bad)
        replace_data_file(d, "keyframes", buf.getvalue())
        refused(d, "keyframes-000001.npz")


def test_frame_ids_are_bounded_so_that_saved_maps_stay_within_the_load_bounds() -> None:
    import numpy as np

    from salad_ros.database import MAX_METADATA_BYTES  # noqa: F401 - the other per-keyframe bound
    from salad_ros.database.table import MAX_FRAME_ID_CHARS

    db = KeyframeDatabase(DIM, model_name="test-model")
    with pytest.raises(ValueError, match="frame_id is longer"):
        db.add(np.ones((1, DIM), np.float32), [0], frame_ids="x" * (MAX_FRAME_ID_CHARS + 1))
    assert len(db) == 0
