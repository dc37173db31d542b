"""The same bag gives the same keyframes and loop candidates through ``salad_replay`` (batched
inference) and through the live node (rclpy in-process, fed frame by frame), both reading the
same parameters file.

Random-weight ViT-S at 126 px on a 16-frame demo bag; one encoder object is shared by both to
save building it twice (the node and replay each build their pipeline and database from the
file). Random descriptors of the dusk lap are all alike (cosine >= 0.97), so with
``min_score`` 0.9 and ``consistency_count`` 2 there are accepted and rejected candidates alike.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from _ros_helpers import Collector, Spinner, image_msg, wait_until  # sets the local ROS env first

from salad_ros.evaluation import demo_bag, replay  # noqa: E402
from salad_ros.io.bags import BagReader  # noqa: E402
from salad_ros.io.images import msg_to_rgb  # noqa: E402
from salad_ros.io.messages import ns_to_sec_nanosec  # noqa: E402
from salad_ros.node import LoopClosureNode  # noqa: E402

PARAMS = {
    "backbone": "dinov2_vits14",
    "image_size": 126,
    "allow_random_weights": True,
    "device": "cpu",
    "batch_size": 5,  # replay batches do not line up with anything: 16 = 5 + 5 + 5 + 1
    "reliable_qos": True,
    "detector": {
        "keyframe_max_similarity": 1.0,
        "keyframe_min_interval_s": 0.0,
        "exclude_recent_keyframes": 2,
        "exclude_recent_s": 3.0,
        "min_score": 0.9,
        "top_k": 3,
        "consistency_count": 2,
        "consistency_id_window": 3,
    },
}




def test_replay_and_node_agree(ctx, tmp_path):
    bag = tmp_path / "bag"
    demo_bag.generate(bag, frames=16, size=(160, 120), supersample=1)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": PARAMS}}))

    from salad_ros.backends import create_encoder
    from salad_ros.config import load_config

    encoder = create_encoder(load_config(params).model)

    # Offline: salad_replay with the parameters file.
    out = tmp_path / "replay"
    code = replay.main([str(bag), "--image-topic", demo_bag.IMAGE_TOPIC, "--params", str(params), "--out", str(out),
                        "--no-progress", "--no-plots"], encoder=encoder)
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["keyframes"] == 16
    with (out / "candidates.csv").open() as f:
        offline = [(r["query_stamp"], int(r["query_keyframe"]), int(r["match_keyframe"]), r["match_stamp"],
                    int(r["rank"]), float(r["score"])) for r in csv.DictReader(f)]
    assert offline, "the settings must give some candidates"

    # Live: the node with the same file, fed the bag's images one at a time.
    with BagReader(bag) as r:
        frames = [(m.stamp_ns, msg_to_rgb(m.msg)) for m in r.messages([demo_bag.IMAGE_TOPIC])]
    node = LoopClosureNode(context=ctx, namespace="/rvn", encoder=encoder,
                           cli_args=["--ros-args", "--params-file", str(params)])
    col = Collector("/rvn/salad_loop_closure", context=ctx, image_topic="/rvn/image")
    try:
        assert node.cfg.detector.min_score == 0.9 and node.cfg.model.image_size == 126
        with Spinner(ctx, node, col):
            assert col.wait_for_node()
            for k, (stamp, rgb) in enumerate(frames):
                col.pub.publish(image_msg(rgb, stamp))
                assert wait_until(lambda k=k: node.stats.processed > k, 30.0), f"frame {k} not processed"
            assert wait_until(lambda: sum(len(rows) for rows in col.keyframes) == len(frames), 10.0)
            expected_rows = len(offline)
            assert wait_until(lambda: sum(len(rows) for _, rows in col.candidate_rows()) >= expected_rows, 10.0)
    finally:
        node.destroy_node()
        col.destroy_node()

    def stamp(sec: int, nsec: int) -> str:
        return f"{sec}.{nsec:09d}"

    live = []
    for query_ns, rows in sorted(col.candidate_rows(), key=lambda qr: qr[0]):
        for row in rows:
            live.append((stamp(*ns_to_sec_nanosec(query_ns)), int(row["query_id"]), int(row["match_id"]),
                         stamp(int(row["match_stamp_sec"]), int(row["match_stamp_nanosec"])), int(row["rank"]),
                         float(row["score"])))
    assert [c[:5] for c in live] == [c[:5] for c in offline]
    assert [c[5] for c in live] == pytest.approx([c[5] for c in offline], abs=1e-4)
    with (out / "keyframes.csv").open() as f:
        offline_kf = [(int(r["keyframe"]), r["stamp"]) for r in csv.DictReader(f)]
    live_kf = [(int(r["keyframe_id"]), stamp(int(r["stamp_sec"]), int(r["stamp_nanosec"])))
               for rows in col.keyframes for r in rows]
    assert live_kf == offline_kf
    assert Path(out / "report.json").exists()
