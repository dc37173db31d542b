"""KeyframeDatabase's thread-safety claim: concurrent add / search / save / len / get."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from salad_ros.database import KeyframeDatabase, Pose

DIM = 64
ADDERS, BATCHES, PER_BATCH = 3, 20, 5


def vec(stamp: int) -> np.ndarray:
    """The (unit) descriptor added with ``stamp``: a saved keyframe can be checked against it."""
    v = np.random.default_rng(stamp).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def check_consistent(db: KeyframeDatabase) -> np.ndarray:
    """Every keyframe's record and descriptor belong to the same added keyframe; returns stamps."""
    stamps = db.stamps_ns()
    assert len(stamps) == len(db)
    for i, s in enumerate(stamps.tolist()):
        kf = db.get(i)
        assert (kf.id, kf.stamp_ns, kf.frame_id, kf.metadata) == (i, s, f"t{s // 1000}", {"s": s})
        assert kf.pose == Pose(float(s), 0.0, 0.0)
        np.testing.assert_allclose(db.descriptor(i), vec(s), atol=1e-6)
    return stamps


def test_concurrent_add_search_save(tmp_path: Path) -> None:
    db = KeyframeDatabase(DIM, model_name="threads")
    errors: list[BaseException] = []
    saves: list[tuple[Path, int, int]] = []  # directory, len before save, len after
    batches: list[tuple[np.ndarray, list[int]]] = []
    adding = threading.Event()
    adding.set()

    def guarded(fn):
        def run(*args):
            try:
                fn(*args)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)
        return run

    def adder(t: int) -> None:
        for b in range(BATCHES):
            stamps = [t * 1000 + b * PER_BATCH + i for i in range(PER_BATCH)]
            ids = db.add(np.stack([vec(s) for s in stamps]), stamps, frame_ids=f"t{t}",
                         poses=[Pose(float(s), 0.0, 0.0) for s in stamps], metadata=[{"s": s} for s in stamps])
            batches.append((ids, stamps))

    def searcher(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while adding.is_set():
            q = rng.standard_normal((2, DIM)).astype(np.float32)
            ids, stamps, scores = db.search(q, 6, exclude_recent=int(rng.integers(0, 4)))
            n = len(db)
            assert ((ids >= -1) & (ids < n)).all()
            for i, s in zip(ids.ravel().tolist(), stamps.ravel().tolist(), strict=True):
                assert s == (-1 if i < 0 else db.get(i).stamp_ns)
            assert np.all(scores[:, :-1] >= scores[:, 1:])  # best first, -inf (none) last

    def saver(shared: bool) -> None:
        for g in range(6):
            d = tmp_path / ("shared" if shared else f"gen{g}")
            before = len(db)
            db.save(d)
            saves.append((d, before, len(db)))

    threads = [threading.Thread(target=guarded(adder), args=(t,)) for t in range(ADDERS)]
    threads += [threading.Thread(target=guarded(searcher), args=(s,)) for s in range(2)]
    threads += [threading.Thread(target=guarded(saver), args=(shared,)) for shared in (False, True)]
    for th in threads:
        th.start()
    for th in threads[:ADDERS] + threads[-2:]:
        th.join(timeout=60)
    adding.clear()
    for th in threads:
        th.join(timeout=60)
    assert not any(th.is_alive() for th in threads)
    assert not errors, errors

    total = ADDERS * BATCHES * PER_BATCH
    assert len(db) == total
    stamps = check_consistent(db)
    assert sorted(stamps.tolist()) == sorted(t * 1000 + i for t in range(ADDERS) for i in range(BATCHES * PER_BATCH))
    for ids, batch_stamps in batches:  # a batch gets consecutive ids, in order
        assert ids.tolist() == list(range(ids[0], ids[0] + PER_BATCH))
        assert stamps[ids].tolist() == batch_stamps

    shared = [s for s in saves if s[0].name == "shared"]
    for d, before, after in saves:
        if d.name == "shared" and (d, before, after) != shared[-1]:
            continue  # overwritten by the next generation
        loaded = KeyframeDatabase.load(d, expected_dim=DIM, expected_model="threads")
        assert before <= len(loaded) <= after
        saved = check_consistent(loaded)
        np.testing.assert_array_equal(saved, stamps[: len(saved)])  # append-only: a prefix
    assert len(list((tmp_path / "shared").glob("index-*.faiss"))) == 1
