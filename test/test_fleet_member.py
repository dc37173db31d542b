"""FleetMember: two or three robots' pipelines sharing keyframes as the fleet topic carries them
(messages built, serialised-size counted and decoded exactly as on DDS, handed over in memory)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest
from _hostile import manifest_files, replace_data_file
from _pose_scenes import aloe_stereo
from _scripted import EVERY_FRAME_A_KEYFRAME, ScriptedEncoder

from salad_ros.config import load_config
from salad_ros.fleet import FleetMessageError, ModelIdentity, SharedKeyframe, encode, fill_cloud
from salad_ros.fleet.config import FleetConfig
from salad_ros.fleet.member import FleetMember
from salad_ros.geometry.camera import CameraModel
from salad_ros.params import ConfigError
from salad_ros.pipeline import LoopClosurePipeline

SEC = 1_000_000_000


def robot(robot_id: int, places: Sequence[int], path: str = "", dim: int = 16, **overrides) -> LoopClosurePipeline:
    cfg = load_config(overrides={**EVERY_FRAME_A_KEYFRAME, "robot_id": robot_id, "database_path": path, **overrides})
    return LoopClosurePipeline(cfg, encoder=ScriptedEncoder(places, dim))


def member(pipe: LoopClosurePipeline, clock=None, **fleet) -> FleetMember:
    cfg = dataclasses.replace(pipe.cfg.fleet, **fleet)
    return FleetMember(pipe, cfg, clock=clock) if clock else FleetMember(pipe, cfg)


def cloud(wire):
    """The PointCloud2 a subscriber gets (any object with its attributes)."""
    return fill_cloud(NS(header=NS(stamp=NS())), wire, lambda **f: NS(**f))


def deliver(wire, *receivers: FleetMember) -> list:
    out = []
    for r in receivers:
        try:
            out.append(r.receive(cloud(wire), wire.encoded_size))
        except FleetMessageError as exc:
            out.append(exc.kind)
    return out


def drive(pipe: LoopClosurePipeline, me: FleetMember, n: int, t0: int, *peers: FleetMember, **kw) -> list:
    """``n`` frames through ``pipe``; every keyframe is published to ``peers`` at once."""
    results = []
    for i in range(n):
        r = pipe.process(np.zeros((48, 64, 3), np.uint8), t0 + i * SEC, **kw)
        if r.is_keyframe:
            deliver(me.on_keyframe(r.robot_keyframe_id), *peers)
        results.append(r)
    return results


def test_robot_1_finds_loops_against_robot_0s_keyframes():
    a, b = robot(0, [0, 1, 2, 7]), robot(1, [5, 1, 6, 0])
    ma, mb = member(a), member(b)
    drive(a, ma, 3, 0, mb)
    assert b.keyframe_count == 3 and b.own_keyframe_count == 0
    res = drive(b, mb, 4, 10 * SEC, ma)
    # robot 1's own keyframes are numbered 0..3 although robot 0's three came first in its map
    assert [r.robot_keyframe_id for r in res] == [0, 1, 2, 3] and [r.keyframe_id for r in res] == [3, 4, 5, 6]
    loops = [(r.robot_keyframe_id, c.match_robot_id, c.match_keyframe_id, c.match_id) for r in res for c in r.candidates]
    assert loops == [(1, 0, 1, 1), (3, 0, 0, 0)]
    # ... and robot 0 got robot 1's keyframes; its own loops are named with its own robot id
    assert a.keyframe_count == 7 and ma.stats()["peer.1.keyframes"] == 4
    r = drive(a, ma, 1, 20 * SEC, mb)
    assert r[0].robot_keyframe_id == 3 and r[0].keyframe_id == 7


def test_a_loop_between_robots_is_verified_and_posed_from_the_shared_features():
    """The real aloe stereo pair: robot 0 saw the left view (with depth), robot 1 sees the right
    one. Robot 1 has no image of robot 0's keyframe, only the ORB features and depths that came
    with it on the wire, and gets the right metric pose: the right camera 0.3 m along +x."""
    left, right, k, depth, baseline = aloe_stereo()
    h, w = left.shape[:2]
    cam = CameraModel(k=k, width=w, height=h)
    verify = {"detector.verify": True, "detector.min_score": 0.5}
    a, b = robot(0, [0], **verify), robot(1, [0], **verify)
    ma, mb = member(a), member(b)
    ra = a.process(left, 0, camera=cam, depth=depth)
    wire = ma.on_keyframe(ra.robot_keyframe_id)
    assert wire.encoded_size <= 32_000
    shared = [f for f in wire.fields if f.name in ("kp", "kp_depth", "kp_orb")]
    assert [f.count for f in shared] == [2 * ma.max_features, ma.max_features, 32 * ma.max_features]
    assert deliver(wire, mb) == [0]
    rb = b.process(right, SEC, camera=cam)  # no depth on robot 1: PnP uses robot 0's shared depths
    (c,) = rb.candidates
    assert (c.match_robot_id, c.match_keyframe_id, c.verified) == (0, 0, True) and c.inliers >= 20
    pose = c.relative_pose
    assert pose.status == 2, pose.reason
    # X_match(left) = X_query(right) + (B, 0, 0)
    np.testing.assert_allclose(pose.translation, [baseline, 0.0, 0.0], atol=0.03)
    assert np.degrees(np.arccos(np.clip((np.trace(pose.rotation) - 1) / 2, -1, 1))) < 1.0


def test_robots_with_different_camera_mounts_get_the_pose_between_their_bases(tmp_path, caplog):
    """Robot 0's camera sits 0.2 m forward and 1.1 m up, robot 1's is tilted and off to the side:
    the inter-robot pose between base frames uses each robot's own mount (robot 0's came with its
    keyframe), also after robot 1 restarts with its saved map."""
    from salad_ros.geometry.transforms import invert_transform, make_transform, transform_from_xyz_quat

    left, right, k, depth, baseline = aloe_stereo()
    cam = CameraModel(k=k, width=left.shape[1], height=left.shape[0])
    mounts = {0: "0.2 0.0 1.1 -0.5 0.5 -0.5 0.5", 1: "-0.1 0.3 0.6 -0.45451948 0.45451948 -0.54167522 0.54167522"}
    path = str(tmp_path / "r1")
    a = robot(0, [0], **{"detector.min_score": 0.5, "camera_to_base": mounts[0]})
    b = robot(1, [0], path, **{"detector.min_score": 0.5, "camera_to_base": mounts[1]})
    ma, mb = member(a), member(b)
    a.process(left, 0, camera=cam, depth=depth)
    wire = ma.on_keyframe(0)
    deliver(wire, mb)
    (c,) = b.process(right, SEC, camera=cam).candidates
    e_m, e_q = (transform_from_xyz_quat([float(v) for v in mounts[r].split()]) for r in (0, 1))
    t_cam = make_transform(np.eye(3), [baseline, 0.0, 0.0])  # X_left = X_right + (B, 0, 0)
    expected = e_m @ t_cam @ invert_transform(e_q)
    assert c.relative_pose.status == 2
    np.testing.assert_allclose(c.relative_pose.matrix(), expected, atol=0.04)
    same_mount = e_q @ t_cam @ invert_transform(e_q)  # what assuming robot 0 is mounted like us would give
    assert np.linalg.norm(c.relative_pose.translation - same_mount[:3, 3]) > 0.3
    b.save()
    b2 = robot(1, [], path, **{"detector.min_score": 0.5, "camera_to_base": mounts[1]})
    again = b2.relative_pose(1, 0)
    np.testing.assert_allclose(again.matrix(), c.relative_pose.matrix(), atol=1e-6)
    # a map whose stored mount was damaged by hand: a warning, and robot 0 counts as mounted like robot 1
    records = json.loads((Path(path) / manifest_files(Path(path))["records"]["name"]).read_text())
    assert records["metadata"][0] == {"camera_to_base": [float(v) for v in mounts[0].split()]}
    records["metadata"][0]["camera_to_base"] = [1.0, 2.0]
    replace_data_file(Path(path), "records", json.dumps(records).encode())
    b3 = robot(1, [], path, **{"detector.min_score": 0.5, "camera_to_base": mounts[1]})
    assert "keyframe 0 of robot 0: bad camera_to_base [1.0, 2.0]" in caplog.text
    np.testing.assert_allclose(b3.relative_pose(1, 0).matrix(), same_mount, atol=0.04)


def test_without_shared_features_an_inter_robot_candidate_cannot_be_verified():
    left, right, k, depth, _ = aloe_stereo()
    cam = CameraModel(k=k, width=left.shape[1], height=left.shape[0])
    verify = {"detector.verify": True, "detector.min_score": 0.5}
    a, b = robot(0, [0], **verify), robot(1, [0], **verify)
    ma, mb = member(a, share_features=False), member(b)
    a.process(left, 0, camera=cam, depth=depth)
    wire = ma.on_keyframe(0)
    assert {f.name for f in wire.fields}.isdisjoint({"kp", "kp_orb", "kp_depth"}) and wire.encoded_size < 1000
    deliver(wire, mb)
    rb = b.process(right, SEC, camera=cam)
    (c,) = rb.rejected  # no thumbnail, no features: verify_missing_thumbnail = reject
    assert c.match_robot_id == 0 and c.reason.startswith("unverifiable")


def test_bad_messages_are_counted_and_change_nothing():
    a, b = robot(0, [0, 1]), robot(1, [])
    ma, mb = member(a), member(b)
    drive(a, ma, 2, 0)
    good = ma.message(1)
    dim = b.dim
    other_model = encode(SharedKeyframe(0, a.session, 5, 3 * SEC, np.eye(dim, dtype=np.float32)[3]),
                         ModelIdentity("another-model", dim))
    own_id = encode(SharedKeyframe(1, b.session + 1, 0, SEC, np.eye(dim, dtype=np.float32)[3]), mb.model)
    truncated = cloud(good)
    truncated.data = truncated.data[:-5]
    echo = encode(SharedKeyframe(1, b.session, 0, SEC, np.eye(dim, dtype=np.float32)[3]), mb.model)
    early = encode(SharedKeyframe(0, a.session, 2, 0, np.eye(dim, dtype=np.float32)[4]), mb.model)  # before id 1
    assert deliver(good, mb) == [0]
    assert deliver(good, mb) == ["duplicate"]
    assert deliver(other_model, mb) == ["other_model"]
    assert deliver(own_id, mb) == ["own_robot_id"]
    assert deliver(early, mb) == ["out_of_order"]
    assert deliver(echo, mb) == [None]  # our own message coming back: ignored, no error
    with pytest.raises(FleetMessageError, match="malformed"):
        mb.receive(truncated, 100)
    with pytest.raises(FleetMessageError, match="malformed"):
        mb.on_request([1, 2, 3], 12)
    s = mb.stats()
    assert {k: s[f"rejected.{k}"] for k in ("duplicate", "other_model", "own_robot_id", "out_of_order", "malformed")} \
        == {"duplicate": 1, "other_model": 1, "own_robot_id": 1, "out_of_order": 1, "malformed": 2}
    assert s["own_echoes"] == 1 and s["peer.0.keyframes"] == 1
    assert b.keyframe_count == 1 and b.keyframe_origins()[0].tolist() == [[0, a.session, 1]]


def test_restarted_robots_keep_their_session_and_nothing_is_duplicated(tmp_path):
    """Robot 0 saves its map and restarts: it continues its numbering in the same session, so
    robot 1 refuses its re-sent keyframes as duplicates. Robot 1 restarts with its map holding
    robot 0's keyframes: it does not ask for them again, and refuses them when they come."""
    p0, p1 = str(tmp_path / "r0"), str(tmp_path / "r1")
    a, b = robot(0, [0, 1, 2], p0), robot(1, [3], p1)
    ma, mb = member(a), member(b)
    drive(a, ma, 3, 0, mb)
    drive(b, mb, 1, 5 * SEC, ma)
    a.save(), b.save()
    session_a = a.session
    a2, b2 = robot(0, [4], p0), robot(1, [], p1)
    assert a2.session == session_a and a2.own_keyframe_count == 3 and a2.keyframe_count == 4
    ma2, mb2 = member(a2), member(b2)
    assert deliver(ma2.message(2), mb) == ["duplicate"]  # re-sent after the restart
    assert deliver(ma2.message(2), mb2) == ["duplicate"]  # the restored map has it: not asked, refused
    res = drive(a2, ma2, 1, 9 * SEC, mb2)
    assert res[0].robot_keyframe_id == 3 and b2.keyframe_count == 5
    assert ma2.stats().get("peer.1.keyframes", 0) == 0  # robot 1's keyframe came with the map, not again
    # robot 1 asks nothing of robot 0's lineage below what it holds
    missing = [q for q in mb2.registry.missing() if q[0] == 0]
    assert missing == [(0, session_a, 4, (1 << 32) - 1)]


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_late_robot_catches_up_within_the_bandwidth_budget():
    """Robots 0 and 1 map together; robot 2 starts late: its first request (after
    ``first_request_s``) makes both re-publish their keyframes, within ``max_bytes_per_s``."""
    clock = Clock()
    a, b, c = robot(0, list(range(6)), dim=3000), robot(1, list(range(6, 10)), dim=3000), robot(2, [], dim=3000)
    fleet = {"first_request_s": 1.0, "max_bytes_per_s": 1000.0, "max_message_bytes": 4096}
    ma, mb = member(a, clock, **fleet), member(b, clock, **fleet)
    drive(a, ma, 6, 0, mb)
    drive(b, mb, 4, 10 * SEC, ma)
    clock.t = 100.0  # long after the live traffic: the buckets are full again
    mc = member(c, clock, **fleet)
    assert mc.request() is None  # discovery time first
    clock.t += 1.0
    req = mc.request()
    assert req is not None and req.missing == ()  # knows no lineage yet: everything of everybody
    sent: list = []
    for m in (ma, mb):
        assert m.on_request(req.to_data(), 4 * len(req.to_data())) > 0
        m.answer(sent.append)
    size = sent[0].encoded_size
    burst = max(4 * 4096, 1000.0)  # the bucket: 4 messages' worth
    per_robot = -(-burst // size)  # until the bucket is empty, the last message into debt
    assert per_robot == 5 and len(sent) == 5 + 4  # robot 0: 5 of its 6; robot 1: all 4
    for w in sent:
        deliver(w, mc)
    assert c.keyframe_count == 9 and mc.registry.behind() is False  # robot 0's newest is not known yet
    assert ma.answer(sent.append) == 0 and ma.stats()["republish_pending"] == 1  # the budget is spent
    clock.t += 30.0  # refilled: the rest goes out
    for m in (ma, mb):
        m.answer(sent.append)
    for w in sent[len(sent) - (10 - c.keyframe_count):]:
        deliver(w, mc)
    assert c.keyframe_count == 10 and mc.stats()["keyframes_received"] == 10
    assert {tuple(o[:1]) for o in c.keyframe_origins()[0].tolist()} == {(0,), (1,)}
    assert not mc.registry.behind()


def test_the_message_budget_trims_features_and_must_hold_the_descriptor():
    a = robot(0, [0])
    assert member(a, max_features=500).max_features == 500
    small = member(a, max_features=500, max_message_bytes=4096)
    assert 0 < small.max_features < 500
    assert member(a, share_features=False).max_features == 0
    with pytest.raises(ConfigError, match="fleet.max_message_bytes"):
        FleetMember(NS(model_name="m", dim=8448, robot_id=0, session=1), FleetConfig(max_message_bytes=4096))
