"""mcap chunk checksums: bags written here carry them, and a chunk whose bytes were overwritten is
named in a warning and skipped (its message count said), not replayed as if intact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from salad_ros.evaluation import demo_bag, replay
from salad_ros.io import bags
from salad_ros.io.bags import BagReader, BagWriter

pytestmark = pytest.mark.timeout(300)

SEC = 1_000_000_000


def write_bag(path: Path, n: int = 24) -> Path:
    """``n`` 320x240 raw images (230 kB each: several 1 MiB chunks) and odometry."""
    rng = np.random.default_rng(0)
    with BagWriter(path, "mcap") as w:
        for i in range(n):
            t = i * SEC // 2
            w.write("/odom", t, bags.odometry_msg(bags_pose(i), t))
            w.write("/cam", t + 1000, bags.image_msg(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), t))
    return path


def bags_pose(i: int):
    from salad_ros.database import Pose

    return Pose(float(i), 0.0, 0.0)


def overwrite_middle(mcap: Path, count: int = 200, seed: int = 1) -> None:
    data = bytearray(mcap.read_bytes())
    mid = len(data) // 2
    data[mid : mid + count] = np.random.default_rng(seed).integers(0, 256, count, dtype=np.uint8).tobytes()
    mcap.write_bytes(bytes(data))


def test_written_bags_carry_chunk_checksums_that_readers_verify(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "bag")
    with BagReader(bag) as r:
        assert r.damaged is None and "checksums verified" in r.integrity
        assert len(list(r.messages(["/cam"]))) == 24


def test_overwritten_bytes_are_found_and_their_chunk_skipped(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "bag")
    overwrite_middle(next(bag.glob("*.mcap")))
    with BagReader(bag) as r:
        assert r.damaged is not None and "CRC" in r.damaged and "chunk at byte" in r.damaged
        got = list(r.messages(["/cam", "/odom"]))  # no exception: the damaged chunk is skipped
    skipped = int(r.damaged.split(" messages")[0].rsplit(" ", 1)[-1])
    assert 0 < skipped < 48 and len(got) == 48 - skipped
    assert [m.index for m in got] == list(range(len(got)))


def test_replay_of_a_damaged_mcap_warns_and_scores_the_rest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import yaml
    from test_replay import PARAMS, TinyEncoder

    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"salad_loop_closure": {"ros__parameters": PARAMS}}))
    bag = tmp_path / "demo"
    demo_bag.generate(bag, frames=40, size=(320, 240), supersample=1)
    overwrite_middle(next(bag.glob("*.mcap")))
    out = tmp_path / "out"
    code = replay.main([str(bag), "--image-topic", demo_bag.IMAGE_TOPIC, "--gt-topic", demo_bag.ODOM_TOPIC,
                        "--params", str(params), "--allow-random-weights", "--out", str(out), "--no-progress"],
                       encoder=TinyEncoder())
    err = capsys.readouterr().err
    assert code == 0
    assert "salad_replay: warning:" in err and "CRC" in err and "skipped" in err
    report = json.loads((out / "report.json").read_text())
    assert report["bag_damage"] and 0 < report["frames_processed"] < 40
