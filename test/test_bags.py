"""rosbag2 reading/writing (sqlite3 and mcap, Image and CompressedImage), bad bags, TUM files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from salad_ros.database import Pose
from salad_ros.io import bags
from salad_ros.io.bags import BagError, BagReader, BagReadError, BagWriter, TopicNotFoundError
from salad_ros.io.images import msg_to_rgb
from salad_ros.io.messages import pose_from_msg
from salad_ros.io.trajectory import Trajectory, TrajectoryError, read_tum, write_tum

SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC


def frame(i: int, h: int = 24, w: int = 32) -> np.ndarray:
    """Smooth (so JPEG keeps it close) and different for every ``i``."""
    rng = np.random.default_rng(i)
    return cv2.resize(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)


def write_bag(path: Path, storage: str, n: int = 20, compressed: bool = False, pose_type: str = "odom") -> Path:
    """``n`` images on /cam (stamps T0 + i * 0.5 s, logged 1 ms later) and poses at 10 Hz."""
    with BagWriter(path, storage) as w:
        for k in range(n * 5):
            t = T0 + k * SEC // 10
            pose = Pose(0.1 * k, 0.0, 0.0)
            msg = {"odom": bags.odometry_msg, "pose": bags.pose_stamped_msg, "cov": bags.pose_cov_stamped_msg}[pose_type]
            w.write("/gt", t, msg(pose, t))
            if k % 5 == 0:
                i = k // 5
                img = bags.compressed_image_msg(frame(i), t) if compressed else bags.image_msg(frame(i), t, encoding="bgr8")
                w.write("/cam", t + 1_000_000, img)
    return path


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("compressed", [False, True])
def test_round_trip(tmp_path, storage, compressed):
    bag = write_bag(tmp_path / "bag", storage, compressed=compressed)
    with BagReader(bag) as r:
        assert r.storage == storage and r.salvaged is None
        topics = r.topics
        assert topics["/cam"].msgtype == (bags.COMPRESSED_IMAGE if compressed else bags.IMAGE)
        assert (topics["/cam"].count, topics["/gt"].count) == (20, 100)
        msgs = list(r.messages(["/cam"]))
        assert [m.index for m in msgs] == list(range(20))
        assert [m.stamp_ns for m in msgs] == [T0 + i * SEC // 2 for i in range(20)]  # header stamp
        assert msgs[0].log_time_ns == T0 + 1_000_000
        rgb = msg_to_rgb(msgs[3].msg)
        if compressed:
            assert rgb.shape == (24, 32, 3) and np.abs(rgb.astype(int) - frame(3)).mean() < 8
        else:
            assert np.array_equal(rgb, frame(3))
        both = list(r.messages(["/cam", "/gt"]))
        assert len(both) == 120 and all(a.log_time_ns <= b.log_time_ns for a, b in zip(both, both[1:]))


@pytest.mark.parametrize("kind", ["odom", "pose", "cov"])
def test_pose_types(tmp_path, kind):
    bag = write_bag(tmp_path / "bag", "mcap", n=2, pose_type=kind)
    with BagReader(bag) as r:
        m = list(r.messages(["/gt"]))[7]
    assert pose_from_msg(m.msg) == Pose(0.1 * 7, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def test_single_storage_file(tmp_path):
    bag = write_bag(tmp_path / "bag", "mcap", n=3)
    with BagReader(next(bag.glob("*.mcap"))) as r:
        assert len(list(r.messages(["/cam"]))) == 3


def test_missing_topic_lists_topics(tmp_path):
    bag = write_bag(tmp_path / "bag", "sqlite3", n=2)
    with BagReader(bag) as r:
        with pytest.raises(TopicNotFoundError) as e:
            r.require_topic("/camera/image_raw", bags.IMAGE_TYPES, "image topic")
        text = str(e.value)
        assert "image topic '/camera/image_raw' is not in bag" in text
        assert "/cam  sensor_msgs/msg/Image  (2 messages)" in text and "/gt   nav_msgs/msg/Odometry" in text
        assert "image topic candidates (Image or CompressedImage): /cam" in text
        with pytest.raises(TopicNotFoundError, match="'/gt' .* has type nav_msgs/msg/Odometry; expected"):
            r.require_topic("/gt", bags.IMAGE_TYPES, "image topic")


def test_truncated_mcap_reports_last_good_message(tmp_path):
    """A recorder killed mid-write leaves an mcap without footer: what precedes the cut is read
    by a linear scan, then the error names the last message read intact."""
    bag = write_bag(tmp_path / "bag", "mcap")
    f = next(bag.glob("*.mcap"))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) * 6 // 10])
    with BagReader(bag) as r:
        assert "File end magic is invalid" in r.salvaged
        got = []
        with pytest.raises(BagReadError) as e:
            for m in r.messages(["/cam", "/gt"]):
                got.append(m)
    assert 10 < len(got) < 120 and e.value.last_good_index == got[-1].index == len(got) - 1
    assert e.value.last_good_time_ns == got[-1].log_time_ns
    assert f"truncated or damaged: reading stopped after message index {len(got) - 1}" in str(e.value)
    assert np.array_equal(msg_to_rgb(next(m for m in got if m.topic == "/cam").msg), frame(0))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_unreadable_bags(tmp_path, storage):
    bag = write_bag(tmp_path / "bag", storage, n=3)
    f = next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))
    f.write_bytes(f.read_bytes()[:40])
    with pytest.raises(BagError, match=r"cannot open bag .*no message could be read"):
        BagReader(bag).open()
    with pytest.raises(BagError, match="does not exist"):
        BagReader(tmp_path / "nope").open()
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BagError, match="is not a rosbag2"):
        BagReader(tmp_path / "notes.txt").open()


def test_tum_read_write_and_pairing(tmp_path):
    poses = [Pose(float(i), 2.0 * i, 0.5, 0.0, 0.0, 0.0, 1.0) for i in range(5)]
    stamps = [T0 + i * SEC // 10 + 7 for i in range(5)]
    path = tmp_path / "gt.tum"
    write_tum(path, stamps, poses)
    traj = read_tum(path)
    assert traj.stamps_ns.tolist() == stamps  # ns-exact despite the decimal seconds
    assert traj.pose(3) == poses[3]
    idx, dt = traj.nearest([T0 - SEC, T0 + 140_000_000, T0 + 160_000_000], tolerance_ns=60_000_000)
    assert idx.tolist() == [-1, 1, 2] and dt[0] == SEC + 7
    assert traj.lookup([T0 + 10 * SEC], SEC) == [None]
    shuffled = Trajectory(np.array(stamps[::-1]), np.array([[p.x, p.y, p.z, 0, 0, 0, 1] for p in poses[::-1]]))
    assert shuffled.stamps_ns.tolist() == stamps and shuffled.pose(0).x == 0.0


@pytest.mark.parametrize("line,message", [
    ("1.0 1 2 3 0 0 0", "expected 8 values 'stamp tx ty tz qx qy qz qw', got 7"),
    ("abc 1 2 3 0 0 0 1", "stamp 'abc' is not a number of seconds"),
    ("1.0 1 x 3 0 0 0 1", "'x' is not a number"),
    ("1.0 1 2 nan 0 0 0 1", "NaN or infinite"),
    ("1.0 1 2 3 0 0 0 0", "quaternion (qx qy qz qw) has norm 0, expected 1"),
])
def test_tum_bad_line_is_named(tmp_path, line, message):
    path = tmp_path / "bad.tum"
    path.write_text("# stamp tx ty tz qx qy qz qw\n0.5 0 0 0 0 0 0 1\n\n" + line + "\n2.0 0 0 0 0 0 0 1\n")
    with pytest.raises(TrajectoryError) as e:
        read_tum(path)
    assert str(e.value).startswith(f"{path}:4: ") and message in str(e.value)


def test_tum_empty_or_missing(tmp_path):
    (tmp_path / "empty.tum").write_text("# nothing\n")
    with pytest.raises(TrajectoryError, match="has no poses"):
        read_tum(tmp_path / "empty.tum")
    with pytest.raises(TrajectoryError, match="cannot read trajectory file"):
        read_tum(tmp_path / "missing.tum")
