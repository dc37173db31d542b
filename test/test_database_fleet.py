"""Keyframe database format 2: every keyframe's origin (robot, session, robot keyframe id), the
owner of a map, exclusions per robot, and maps of format 1 (written by salad_ros before fleets)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _hostile import replace_data_file, tree_digest

from salad_ros.database import FORMAT_VERSION, DatabaseError, KeyframeDatabase, Origin

SEC = 1_000_000_000
#: A map saved by salad_ros 0.x at commit eb8a13d (format 1): 6 keyframes of 32-D, model
#: 'test-model-v1', poses x = 0..5 m, stamps 1.7e18 + i s.
V1_MAP = Path(__file__).resolve().parent / "data" / "keyframe_db_v1"


def unit(rng: np.random.Generator, n: int, dim: int = 32) -> np.ndarray:
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fleet_db(rng: np.random.Generator) -> tuple[KeyframeDatabase, np.ndarray, np.ndarray]:
    """Robot 1's map: its keyframes 0..3 interleaved with robot 2's keyframes 10, 11 (session 77)."""
    db = KeyframeDatabase(32, robot_id=1, session=5)
    own, peer = unit(rng, 4), unit(rng, 2)
    db.add(own[:2], [0, SEC])
    db.add(peer, [SEC, 2 * SEC], origin=Origin(2, 77, [10, 11]))
    db.add(own[2:], [2 * SEC, 3 * SEC])
    return db, own, peer


def test_origins_of_own_and_peer_keyframes():
    db, _, _ = fleet_db(np.random.default_rng(0))
    assert db.origins().tolist() == [[1, 5, 0], [1, 5, 1], [2, 77, 10], [2, 77, 11], [1, 5, 2], [1, 5, 3]]
    assert db.own_count == 4 and len(db) == 6
    kf = db.get(3)
    assert (kf.robot_id, kf.session, kf.robot_keyframe_id, kf.stamp_ns) == (2, 77, 11, 2 * SEC)
    assert db.find(2, 77, 10) == 2 and db.find(1, 5, 3) == 5 and db.find(2, 78, 10) is None


def test_peer_keyframes_that_would_corrupt_the_map_are_refused():
    db, own, peer = fleet_db(np.random.default_rng(1))
    before = db.origins()
    with pytest.raises(ValueError, match="holds them already"):
        db.add(peer[:1], [5 * SEC], origin=Origin(2, 77, [11]))
    with pytest.raises(ValueError, match="owner's robot id and session"):
        db.add(own[:1], [5 * SEC], origin=Origin(1, 5, [9]))
    with pytest.raises(ValueError, match="repeat"):
        db.add(peer, [5 * SEC, 6 * SEC], origin=Origin(3, 1, [4, 4]))
    with pytest.raises(ValueError, match="UINT32"):
        Origin(1 << 32, 0, [0])
    with pytest.raises(ValueError, match="robot keyframe ids"):
        db.add(peer, [5 * SEC, 6 * SEC], origin=Origin(3, 1, [4]))
    np.testing.assert_array_equal(db.origins(), before)
    assert len(db) == 6


def test_search_excludes_only_the_own_robots_recent_keyframes():
    """Robot 2's keyframes are newer than most of robot 1's and stamped within the time window,
    but only robot 1's own rules exclude: its 2 newest keyframes and those within 2.5 s."""
    db, own, peer = fleet_db(np.random.default_rng(2))
    q = np.concatenate([own, peer])
    ids, _, scores = db.search(q, k=6, exclude_recent=2, exclude_within_ns=int(2.5 * SEC),
                               query_stamps_ns=[3 * SEC] * 6)
    # own 0 (3 s away) and robot 2's 10 and 11 (1 and 2 s away); own 1 within 2.5 s, own 2 and 3 the newest
    for row in ids:
        assert set(row[row >= 0].tolist()) == {0, 2, 3}
    assert ids[4, 0] == 2 and ids[5, 0] == 3 and scores[4, 0] > 0.999  # peers' keyframes find themselves


def test_format_2_round_trip_keeps_owner_session_and_origins(tmp_path):
    db, own, _ = fleet_db(np.random.default_rng(3))
    db.save(tmp_path / "map")
    man = json.loads((tmp_path / "map" / "manifest.json").read_text())
    assert man["version"] == FORMAT_VERSION == 2 and man["owner"] == {"robot_id": 1, "session": 5}
    assert man["robots"] == [1, 2]
    back = KeyframeDatabase.load(tmp_path / "map", robot_id=1)
    assert (back.robot_id, back.session, back.own_count) == (1, 5, 4)
    np.testing.assert_array_equal(back.origins(), db.origins())
    # the restarted robot continues its own numbering in the same session
    back.add(own[:1], [9 * SEC])
    assert back.origins()[-1].tolist() == [1, 5, 4]


def test_a_map_of_another_robot_is_refused_with_a_clear_message(tmp_path):
    db, _, _ = fleet_db(np.random.default_rng(4))
    db.save(tmp_path / "map")
    before = tree_digest(tmp_path / "map")
    with pytest.raises(DatabaseError, match=r"is the map of robot_id 1, this robot is robot_id 2 \(start with robot_id 1"):
        KeyframeDatabase.load(tmp_path / "map", robot_id=2)
    assert tree_digest(tmp_path / "map") == before


def test_clear_starts_a_new_session():
    db, _, _ = fleet_db(np.random.default_rng(5))
    db.clear()
    assert len(db) == 0 and db.own_count == 0 and db.robot_id == 1 and db.session != 5


@pytest.mark.parametrize("damage", ["owner numbering", "foreign session of the owner", "twice", "no owner"])
def test_damaged_origins_are_refused(tmp_path, damage):
    db, _, _ = fleet_db(np.random.default_rng(6))
    d = tmp_path / "map"
    db.save(d)
    man_path = d / "manifest.json"
    if damage == "no owner":
        man = json.loads(man_path.read_text())
        del man["owner"]
        man_path.write_text(json.dumps(man))
        match = "lacks or has a bad owner"
    else:
        with np.load(d / json.loads(man_path.read_text())["files"]["keyframes"]["name"]) as z:
            arrays = {k: z[k].copy() for k in z.files}
        if damage == "owner numbering":
            arrays["robot_keyframe_ids"][4] = 7
            match = "not numbered 0, 1, 2"
        elif damage == "foreign session of the owner":
            arrays["sessions"][0] = 6
            arrays["robot_keyframe_ids"][1:] = [0, 10, 11, 1, 2]
            match = "another session"
        else:
            arrays["robot_ids"][3], arrays["sessions"][3], arrays["robot_keyframe_ids"][3] = 2, 77, 10
            match = "twice"
        import io

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        replace_data_file(d, "keyframes", buf.getvalue())
    before = tree_digest(d)
    with pytest.raises(DatabaseError, match=match):
        KeyframeDatabase.load(d, robot_id=1)
    assert tree_digest(d) == before


def test_a_format_1_map_loads_as_the_loading_robots_own(tmp_path):
    """The map written by the format-1 code loads, as robot 3's own keyframes 0..5 in a new
    session; saving it writes format 2, which loads again with the same origins."""
    d = tmp_path / "v1"
    shutil.copytree(V1_MAP, d)
    assert json.loads((d / "manifest.json").read_text())["version"] == 1
    before = tree_digest(d)
    db = KeyframeDatabase.load(d, expected_model="test-model-v1", robot_id=3)
    assert tree_digest(d) == before  # loading never writes
    assert len(db) == db.own_count == 6 and db.robot_id == 3
    assert db.origins()[:, 0].tolist() == [3] * 6 and db.origins()[:, 2].tolist() == list(range(6))
    assert db.get(4).pose.x == 4.0 and db.get(4).frame_id == "camera"
    for i in range(6):  # the stored descriptors find themselves
        ids, _, scores = db.search(db.descriptor(i)[None], k=1)
        assert ids[0, 0] == i and scores[0, 0] > 0.999
    db.save(d)
    again = KeyframeDatabase.load(d, robot_id=3)
    assert again.session == db.session and json.loads((d / "manifest.json").read_text())["version"] == 2
    np.testing.assert_array_equal(again.origins(), db.origins())


def test_an_unknown_future_version_is_refused(tmp_path):
    d = tmp_path / "map"
    fleet_db(np.random.default_rng(7))[0].save(d)
    man = json.loads((d / "manifest.json").read_text())
    man["version"] = 3
    (d / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(DatabaseError, match=r"format version 3 is not supported \(this code reads versions 1, 2; "
                                            "a newer salad_ros wrote it\\)"):
        KeyframeDatabase.load(d)
