"""KeyframeDatabase: exact/approximate search, exclusions, persistence, failure safety."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import faiss
import numpy as np
import pytest

from salad_ros import database as dbmod
from salad_ros import fileio
from salad_ros import params as cfgmod
from salad_ros.database import (
    DatabaseConfig,
    DatabaseError,
    KeyframeDatabase,
    Pose,
    choose_device,
    rotation_angle,
    storage,
    translation_distance,
)
from salad_ros.params import ConfigError

REPO = Path(__file__).resolve().parents[1]


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(db_x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q @ db_x.T
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(s, ids, axis=1)


def filled(n: int = 200, dim: int = 32, seed: int = 0, **kw) -> tuple[KeyframeDatabase, np.ndarray]:
    x = unit_vectors(n, dim, seed)
    db = KeyframeDatabase(dim, model_name="test-model", **kw)
    db.add(x, np.arange(n, dtype=np.int64) * 1_000_000_000, frame_ids="cam",
           poses=[Pose(float(i), 0.0, 0.0) for i in range(n)],
           metadata=[{"i": i} if i % 2 else None for i in range(n)])
    return db, x


def dir_digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


# ------------------------------------------------------------------------------------------ search


@pytest.mark.parametrize("n,dim,nq", [(2000, 128, 20), (6000, 1024, 1)])  # the second is split in threads
def test_flat_search_equals_brute_force(n: int, dim: int, nq: int) -> None:
    x = unit_vectors(n, dim)
    q = unit_vectors(nq, dim, seed=1)
    db = KeyframeDatabase(dim)
    ids = db.add(x * 3.0, np.arange(n))  # scaling must not matter: descriptors are normalised
    assert ids.tolist() == list(range(n))
    got_ids, got_stamps, got_scores = db.search(q, 10)
    want_ids, want_scores = brute_force(x, q, 10)
    # same answer up to the order of float-rounding ties: every returned id has the brute-force
    # score of its rank, and nearly all ids agree exactly
    np.testing.assert_allclose(np.take_along_axis(q @ x.T, got_ids, axis=1), want_scores, atol=1e-5)
    assert np.mean(got_ids == want_ids) >= 0.98
    np.testing.assert_array_equal(got_stamps, got_ids)  # stamp i for id i
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
    assert got_ids.shape == got_stamps.shape == got_scores.shape == (nq, 10)


def test_fp16_flat_is_close_to_exact_and_half_the_memory() -> None:
    x = unit_vectors(3000, 256)
    q = unit_vectors(20, 256, seed=1)
    exact, half = KeyframeDatabase(256), KeyframeDatabase(256, fp16=True)
    exact.add(x, np.arange(3000))
    half.add(x, np.arange(3000))
    _, _, s32 = exact.search(q, 10)
    ids16, _, s16 = half.search(q, 10)
    np.testing.assert_allclose(s16, s32, atol=2e-3)
    want, _ = brute_force(x, q, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids16, want, strict=True)]) >= 0.95
    assert half.memory_report()["index"] == exact.memory_report()["index"] // 2


def test_hnsw_recall_at_10_on_random_unit_vectors() -> None:
    # 20k random unit vectors at 64-D (random data is HNSW's hardest case; 8448-D would take
    # minutes to build here). Default HNSW options.
    x = unit_vectors(20000, 64)
    q = unit_vectors(200, 64, seed=1)
    flat, hnsw = KeyframeDatabase(64), KeyframeDatabase(64, "hnsw")
    flat.add(x, np.arange(20000))
    hnsw.add(x, np.arange(20000))
    f_ids, _, _ = flat.search(q, 10)
    h_ids, _, h_scores = hnsw.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(h_ids, f_ids, strict=True)])
    assert recall >= 0.95, recall
    assert np.all(np.diff(h_scores, axis=1) <= 0)
    assert "IndexHNSWFlat" in hnsw.describe()


def test_fewer_than_k_gives_minus_one() -> None:
    db, x = filled(3)
    ids, stamps, scores = db.search(x[:2], 5)
    assert ids.shape == (2, 5)
    assert (ids[:, 3:] == -1).all() and (stamps[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    assert sorted(ids[0, :3].tolist()) == [0, 1, 2]
    empty = KeyframeDatabase(8)
    ids, _, _ = empty.search(np.ones((1, 8), np.float32), 3)
    assert ids.tolist() == [[-1, -1, -1]]


def test_exclude_most_recent_by_count() -> None:
    db, x = filled(50)
    ids, _, _ = db.search(x[49], 5, exclude_recent=10)
    assert ids[0, 0] != 49 and (ids[0] < 40).all()
    ids, _, _ = db.search(x[49], 5, exclude_recent=48)
    assert sorted(ids[0, :2].tolist()) == [0, 1] and (ids[0, 2:] == -1).all()


def test_exclude_by_time() -> None:
    db, x = filled(50)  # keyframe i stamped i seconds
    # the query is keyframe 30's descriptor stamped at t=30 s; exclude +-5 s
    ids, stamps, _ = db.search(x[30], 10, exclude_within_ns=5_000_000_000, query_stamps_ns=[30_000_000_000])
    assert 30 not in ids[0]
    assert np.all(np.abs(stamps[0] - 30_000_000_000) >= 5_000_000_000)
    # without query stamps the reference is the newest keyframe (t=49 s)
    ids, _, _ = db.search(x[49], 10, exclude_within_ns=10_000_000_000)
    assert (ids[0] <= 39).all()


def test_exclude_by_pose_radius() -> None:
    db, x = filled(50)  # keyframe i at (i, 0, 0)
    ids, _, _ = db.search(x[20], 10, query_poses=[Pose(20.0, 0.0, 0.0)], exclude_radius=3.5)
    assert all(abs(i - 20) > 3 for i in ids[0])
    # a query without a pose excludes nothing by radius
    ids, _, _ = db.search(x[20], 1, query_poses=[None], exclude_radius=3.5)
    assert ids[0, 0] == 20


def test_records_lookup_by_id_and_stamp() -> None:
    db, _ = filled(10)
    kf = db.get(3)
    assert (kf.id, kf.stamp_ns, kf.frame_id, kf.pose, kf.metadata) == (3, 3_000_000_000, "cam", Pose(3.0, 0.0, 0.0), {"i": 3})
    assert db.get(4).metadata is None
    assert db.find_by_stamp(3_000_000_000).id == 3
    assert db.find_by_stamp(3_400_000_000, tolerance_ns=500_000_000).id == 3
    assert db.find_by_stamp(3_400_000_000, tolerance_ns=100_000_000) is None
    with pytest.raises(KeyError):
        db.get(10)
    np.testing.assert_allclose(db.descriptor(3) @ db.descriptor(3), 1.0, rtol=1e-5)


def test_input_validation() -> None:
    db = KeyframeDatabase(8)
    with pytest.raises(ValueError, match="shape"):
        db.add(np.ones((2, 7), np.float32), [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        db.add(np.full((1, 8), np.nan, np.float32), [0])
    with pytest.raises(ValueError, match="zero"):
        db.add(np.zeros((1, 8), np.float32), [0])
    with pytest.raises(TypeError, match="integer"):
        db.add(np.ones((1, 8), np.float32), [0.5])
    with pytest.raises(ValueError, match="JSON"):
        db.add(np.ones((1, 8), np.float32), [0], metadata=[{"x": object()}])
    assert len(db) == 0  # nothing half-added


def test_pose_helpers() -> None:
    a = Pose(0.0, 0.0, 0.0)
    b = Pose(3.0, 4.0, 0.0, 0.0, 0.0, math.sin(math.radians(45)), math.cos(math.radians(45)))
    assert translation_distance(a, b) == pytest.approx(5.0)
    assert math.degrees(rotation_angle(a, b)) == pytest.approx(90.0)
    assert math.degrees(a.angle_to(Pose(0, 0, 0, 0, 0, 0, -1))) == pytest.approx(0.0, abs=1e-6)  # q == -q


def test_ivfpq_trains_once_enough_keyframes() -> None:
    x = unit_vectors(1200, 64)
    db = KeyframeDatabase(64, "ivfpq", ivf_nlist=16, ivf_pq_m=16, ivf_train_at=1000, ivf_nprobe=16)
    db.add(x[:999], np.arange(999))
    assert not db.trained and "staging" in db.describe()
    ids, _, _ = db.search(x[:5], 1)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]  # exact until trained
    db.add(x[999:], np.arange(999, 1200))
    assert db.trained and "IndexIVFPQ" in db.describe()
    ids, _, _ = db.search(x[:50], 1)
    assert np.mean(ids[:, 0] == np.arange(50)) >= 0.9
    assert db.memory_report()["index"] < 1200 * 64 * 4  # compressed
    # default options at any dimension: ivf_pq_m=0 picks a divisor of the dimension
    assert "pq_m=" not in KeyframeDatabase(100, "ivfpq").describe()
    small = KeyframeDatabase(100, "ivfpq", ivf_nlist=4, ivf_train_at=300)
    small.add(unit_vectors(300, 100), np.arange(300))
    assert small.trained and "pq_m=25" in small.describe()


def test_memory_accounting() -> None:
    db, _ = filled(1000, 512)
    rep = db.memory_report()
    assert rep["count"] == 1000 and rep["total"] == db.memory_bytes() == rep["index"] + rep["table"]
    assert rep["index"] == 1000 * 512 * 4
    assert 512 * 4 < rep["per_keyframe"] < 512 * 4 + 400


# ------------------------------------------------------------------------------------------ config / device


def test_device_chooser_picks_cpu_and_reports_it(monkeypatch: pytest.MonkeyPatch) -> None:
    db = KeyframeDatabase(16)
    assert db.backend == "cpu"
    assert "CPU" in db.describe() and "no GPU" in db.describe()
    assert choose_device("never") == (False, "CPU (use_gpu=never)")
    with pytest.raises(DatabaseError, match="no GPU"):
        KeyframeDatabase(16, use_gpu="always")
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2, raising=False)
    on_gpu, why = choose_device("auto", "flat")
    assert on_gpu and "GPU 0" in why
    assert choose_device("auto", "hnsw")[0] is False


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="index"):
        DatabaseConfig(index="annoy")
    with pytest.raises(ConfigError, match="hnsw_m"):
        DatabaseConfig(hnsw_m=1)
    with pytest.raises(ConfigError, match="database.use_gpu"):
        DatabaseConfig(index="hnsw", use_gpu="always")
    with pytest.raises(ConfigError, match="database.ivf_train_at"):
        DatabaseConfig(index="ivfpq", ivf_nlist=1024, ivf_train_at=500)
    with pytest.raises(ConfigError, match="database.ivf_pq_m"):
        KeyframeDatabase(100, "ivfpq", ivf_pq_m=128)
    cfg = cfgmod.from_flat_dict(DatabaseConfig, {"database.index": "hnsw", "database.hnsw_ef_search": 32},
                                prefix="database.")
    assert (cfg.index, cfg.hnsw_ef_search) == ("hnsw", 32)
    with pytest.raises(ConfigError, match="database.fp16"):
        cfgmod.from_flat_dict(DatabaseConfig, {"database.fp16": "yes"}, prefix="database.")
    assert {s.type for s in cfgmod.iter_specs(DatabaseConfig)} <= {bool, int, float, str}
    db = KeyframeDatabase.from_config(32, cfg, model_name="m")
    assert db.config == cfg and db.model_name == "m"


# ------------------------------------------------------------------------------------------ persistence


@pytest.mark.parametrize("kind,fp16,extra", [
    ("flat", False, {}), ("flat", True, {}), ("hnsw", False, {}), ("hnsw", True, {}),
    ("ivfpq", False, {"ivf_nlist": 8, "ivf_pq_m": 8, "ivf_train_at": 1000}),  # still staging
    ("ivfpq", False, {"ivf_nlist": 8, "ivf_pq_m": 8, "ivf_train_at": 256}),  # trained
])
def test_save_load_round_trip(tmp_path: Path, kind: str, fp16: bool, extra: dict) -> None:
    db, x = filled(400, 32, index=kind, fp16=fp16, **extra)
    q = unit_vectors(10, 32, seed=5)
    before = db.search(q, 7, exclude_recent=3)
    db.save(tmp_path / "db")
    loaded = KeyframeDatabase.load(tmp_path / "db", expected_dim=32, expected_model="test-model")
    after = loaded.search(q, 7, exclude_recent=3)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(loaded) == 400 and loaded.trained == db.trained and loaded.config == db.config
    for i in (0, 1, 399):
        assert loaded.get(i) == db.get(i)
    # the loaded database keeps growing with monotonic ids
    assert loaded.add(x[:2], [10**12, 10**12 + 1]).tolist() == [400, 401]


def test_save_replaces_previous_generation(tmp_path: Path) -> None:
    d = tmp_path / "db"
    db, x = filled(50)
    db.save(d)
    db.add(x[:5], np.arange(5) + 10**12)
    db.save(d)
    names = sorted(p.name for p in d.iterdir())
    assert names == [".lock", "index-000002.faiss", "keyframes-000002.npz", "manifest.json", "records-000002.json"]
    man = json.loads((d / "manifest.json").read_text())
    assert man["format"] == dbmod.FORMAT_NAME and man["version"] == dbmod.FORMAT_VERSION
    assert (man["dim"], man["count"], man["model_name"]) == (32, 55, "test-model")
    assert set(man["files"]) == {"index", "keyframes", "records"}
    assert len(KeyframeDatabase.load(d)) == 55


def _refused(d: Path, match: str, **kw) -> None:
    before = dir_digest(d)
    with pytest.raises(DatabaseError, match=match) as info:
        KeyframeDatabase.load(d, **kw)
    assert str(d) in str(info.value)
    assert dir_digest(d) == before  # loading never touches the files


@pytest.mark.parametrize("victim", ["index", "keyframes", "records", "manifest"])
def test_load_refuses_file_truncated_by_one_byte(tmp_path: Path, victim: str) -> None:
    d = tmp_path / "db"
    filled(100)[0].save(d)
    files = json.loads((d / "manifest.json").read_text())["files"]
    path = d / ("manifest.json" if victim == "manifest" else files[victim]["name"])
    path.write_bytes(path.read_bytes()[:-1])
    _refused(d, "truncated|damaged")


def test_load_refuses_flipped_byte(tmp_path: Path) -> None:
    d = tmp_path / "db"
    filled(100)[0].save(d)
    p = next(d.glob("index-*.faiss"))
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    _refused(d, "checksum")


def test_load_refuses_other_dimension_and_model(tmp_path: Path) -> None:
    d = tmp_path / "db"
    filled(20)[0].save(d)
    _refused(d, "dimension is 32, expected 8448", expected_dim=8448)
    _refused(d, "model 'test-model', expected 'other-model'", expected_model="other-model")
    _refused(d, "asks for 'hnsw'", config=DatabaseConfig(index="hnsw"))
    # a manifest edited to claim another dimension disagrees with the index itself
    man = json.loads((d / "manifest.json").read_text())
    man["dim"] = 64
    (d / "manifest.json").write_text(json.dumps(man))
    _refused(d, "dimension 32|too small for 20 keyframes of dimension 64")
    (tmp_path / "empty").mkdir()
    _refused(tmp_path / "empty", "no manifest.json")


def test_load_refuses_future_version(tmp_path: Path) -> None:
    d = tmp_path / "db"
    filled(20)[0].save(d)
    man = json.loads((d / "manifest.json").read_text())
    man["version"] = dbmod.FORMAT_VERSION + 1
    (d / "manifest.json").write_text(json.dumps(man))
    _refused(d, "version")


def test_failure_inside_the_write_keeps_previous_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "db"
    db, x = filled(100)
    db.save(d)
    q = unit_vectors(5, 32, seed=9)
    good = KeyframeDatabase.load(d).search(q, 5)
    db.add(x[:10], np.arange(10) + 10**12)

    def half_then_fail(index, write):
        write(b"\0" * 1000)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(storage, "_write_faiss_index", half_then_fail)
    with pytest.raises(OSError, match="simulated"):
        db.save(d)
    monkeypatch.undo()
    reloaded = KeyframeDatabase.load(d)
    assert len(reloaded) == 100
    for a, b in zip(good, reloaded.search(q, 5), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not [p for p in d.iterdir() if ".tmp" in p.name or "000002" in p.name]
    db.save(d)  # and the next save works
    assert len(KeyframeDatabase.load(d)) == 110


def test_failure_when_committing_manifest_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "db"
    db, x = filled(100)
    db.save(d)
    db.add(x[:10], np.arange(10) + 10**12)
    real = fileio._replace

    def fail_on_manifest(src: Path, dst: Path) -> None:
        if dst.name == "manifest.json":
            raise OSError("power cut (simulated)")
        real(src, dst)

    monkeypatch.setattr(fileio, "_replace", fail_on_manifest)
    with pytest.raises(OSError):
        db.save(d)
    monkeypatch.undo()
    assert len(KeyframeDatabase.load(d)) == 100


def test_process_killed_mid_save_leaves_previous_loadable(tmp_path: Path) -> None:
    d = tmp_path / "db"
    db, _ = filled(300, 64)
    db.save(d)
    q = unit_vectors(5, 64, seed=3)
    good = db.search(q, 5)
    script = textwrap.dedent(f"""
        import os, numpy as np
        from salad_ros.database import KeyframeDatabase, storage
        db = KeyframeDatabase.load({str(d)!r})
        db.add(np.ones((5, 64), np.float32), np.arange(5) + 10**12)
        real = storage._write_faiss_index
        def dying(index, write):
            def w(chunk):
                write(chunk[: len(chunk) // 2])
                os._exit(9)   # killed in the middle of writing the index
            real(index, w)
        storage._write_faiss_index = dying
        db.save({str(d)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 9, proc.stderr.decode()
    assert any(".tmp" in p.name for p in d.iterdir())  # the dead process left its temporary file
    reloaded = KeyframeDatabase.load(d)
    for a, b in zip(good, reloaded.search(q, 5), strict=True):
        np.testing.assert_array_equal(a, b)
    reloaded.save(d)  # the next save cleans the leftovers
    assert not any(".tmp" in p.name for p in d.iterdir())


def test_save_that_loses_keyframes_keeps_the_replaced_map(tmp_path: Path) -> None:
    """Saving a map that lacks keyframes of the one on disk keeps that one in previous/ (loadable);
    a map that only grew replaces the old one without a backup."""
    d = tmp_path / "db"
    big, x = filled(30)
    assert big.save(d).backup is None
    grown = KeyframeDatabase.load(d)
    grown.add(x[:2], [10**12, 10**12 + 1])
    assert grown.save(d).backup is None and not (d / "previous").exists()
    small, _ = filled(5, seed=1)
    saved = small.save(d)
    assert saved.backup == d / "previous" and (saved.count, saved.replaced_count) == (5, 32)
    assert len(KeyframeDatabase.load(d)) == 5 and len(KeyframeDatabase.load(d / "previous")) == 32
    assert sorted(p.name for p in (d / "previous").iterdir()) == [
        "index-000002.faiss", "keyframes-000002.npz", "manifest.json", "records-000002.json"]
