#!/usr/bin/env python3
"""Fleet wire benchmark: bytes per shared keyframe, int8 descriptor quality, codec time, DDS latency.

Prints one markdown table of serialized sensor_msgs/PointCloud2 sizes (CDR bytes on the topic)
for a D-dimensional descriptor with N ORB features with and without depth, the cosine between
float32 and int8-dequantised random unit descriptors, encode/decode milliseconds, and with
``--dds M`` the time from publishing M keyframes (reliable QoS) in this process to their being
*searchable* in a second process: received by a :class:`~salad_ros.fleet.member.FleetMember`,
inserted into its pipeline's map (``--map K`` own keyframes already there) and found as the
best match of a query with the same descriptor through the pipeline's detector, over loopback.

    .venv/bin/python bench/bench_fleet.py                        # sizes, cosine, codec time
    .venv/bin/python bench/bench_fleet.py --dds 50 --map 10000   # + publish -> searchable (two processes)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from salad_ros.fleet import (  # noqa: E402
    MAX_MESSAGE_BYTES,
    ModelIdentity,
    SharedFeatures,
    SharedKeyframe,
    decode,
    encode,
    fill_cloud,
    max_features_within,
)
from salad_ros.fleet.quant import dequantize, quantize  # noqa: E402

TOPIC = "/salad_fleet/keyframes"


def keyframe(rng: np.random.Generator, dim: int, n: int, depth: bool, kid: int = 0, stamp_ns: int = 0) -> SharedKeyframe:
    """A keyframe of robot 2 with random content."""
    feats = None
    if n:
        d = rng.uniform(0.5, 10.0, n).astype(np.float32) if depth else None
        feats = SharedFeatures(rng.uniform(-1, 1, (n, 2)).astype(np.float32),
                               rng.integers(0, 256, (n, 32), dtype=np.uint8), d, 250.0)
    return SharedKeyframe(2, 7, kid, stamp_ns, rng.normal(size=dim).astype(np.float32),
                          "robot2/camera_optical", None, feats)


def size_table(dim: int, model: ModelIdentity) -> None:
    rng = np.random.default_rng(0)
    cap = max_features_within(MAX_MESSAGE_BYTES, dim, with_depth=True)
    print(f"| features N | bytes, no depth | bytes, with depth | (D = {dim}, budget {MAX_MESSAGE_BYTES} B) |")
    print("|---:|---:|---:|---|")
    for n in sorted({0, 100, 300, 500, cap}):
        a = encode(keyframe(rng, dim, n, False), model).encoded_size
        b = encode(keyframe(rng, dim, n, True), model).encoded_size if n else a
        print(f"| {n} | {a} | {b} | {'max within budget' if n == cap else ''} |")


def quality_and_speed(dim: int, model: ModelIdentity, count: int) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(count, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cos = np.array([float(dequantize(*quantize(v)) @ v) for v in x])
    print(f"\nint8 cosine over {count} random unit {dim}-D vectors: min {cos.min():.6f}, mean {cos.mean():.6f}")
    kf = keyframe(rng, dim, 500, True)
    reps = 50
    t0 = time.perf_counter()
    for _ in range(reps):
        wire = encode(kf, model)
    t1 = time.perf_counter()
    msg = fill_cloud(NS(header=NS(stamp=NS())), wire, lambda **f: NS(**f))
    for _ in range(reps):
        decode(msg, model)
    t2 = time.perf_counter()
    print(f"encode {1e3 * (t1 - t0) / reps:.2f} ms, decode {1e3 * (t2 - t1) / reps:.2f} ms "
          f"(500 features + depth, {wire.encoded_size} B)")


class _EchoEncoder:
    """Stands in for the model in the receiving pipeline: a query "image" is the descriptor itself."""

    backend, device, input_size = "bench", "cpu", (8, 8)

    def __init__(self, model: ModelIdentity) -> None:
        self.model_name, self.dim = model.name, model.dim

    def encode(self, images, color: str = "rgb") -> np.ndarray:
        return np.stack([np.asarray(i, np.float32).reshape(-1) for i in images])

    def describe(self) -> str:
        return "echo"


def receiving_pipeline(model: ModelIdentity, map_size: int):
    """Robot 1's pipeline with ``map_size`` own random keyframes (flat fp16 index, the default)."""
    from salad_ros.config import load_config
    from salad_ros.fleet.member import FleetMember
    from salad_ros.pipeline import LoopClosurePipeline

    cfg = load_config(overrides={"allow_random_weights": True, "robot_id": 1, "detector.keyframe_min_interval_s": 0.0,
                                 "detector.keyframe_max_similarity": 1.0})
    pipe = LoopClosurePipeline(cfg, encoder=_EchoEncoder(model))
    rng = np.random.default_rng(5)
    for start in range(0, map_size, 1000):  # own keyframes 1 s apart, long before the peers' ones; added to the
        n = min(1000, map_size - start)     # database directly: running 10k searches first would only take time
        stamps = (start + np.arange(n)) * 1_000_000_000
        pipe.database.add(rng.normal(size=(n, model.dim)).astype(np.float32), stamps)
    return pipe, FleetMember(pipe, cfg.fleet)


def subscriber(count: int, model: ModelIdentity, map_size: int) -> None:
    """Child process: receive ``count`` keyframes into a map, time each until a query finds it."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2

    pipe, member = receiving_pipeline(model, map_size)
    rclpy.init()
    node = rclpy.create_node("fleet_bench_sub")
    lat: list[float] = []
    found: list[bool] = []

    def on_msg(msg: PointCloud2) -> None:
        member.receive(msg, len(msg.data))
        query = decode(msg, model).descriptor  # a later frame of the same place, exactly
        result = pipe.process(query, time.time_ns())
        lat.append(time.time() - (msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9))
        found.append(bool(result.matches) and result.matches[0].robot_id == 2)  # the sender (robot 2)

    node.create_subscription(PointCloud2, TOPIC, on_msg, QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    print("ready", flush=True)
    deadline = time.time() + 120
    while len(lat) < count and time.time() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    print(json.dumps({"received": len(lat), "latency_s": lat, "found": sum(found), "stats": member.stats(),
                      "map": pipe.keyframe_count}))
    node.destroy_node()
    rclpy.shutdown()


def dds_latency(count: int, dim: int, model: ModelIdentity, rate_hz: float, map_size: int) -> None:
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2, PointField

    child = subprocess.Popen([sys.executable, __file__, "--role", "sub", "--dds", str(count), "--dim", str(dim),
                              "--model", model.name, "--map", str(map_size)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"  # its map is built
    rclpy.init()
    node = rclpy.create_node("fleet_bench_pub")
    pub = node.create_publisher(PointCloud2, TOPIC, QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    t_end = time.time() + 30
    while pub.get_subscription_count() == 0 and time.time() < t_end:
        time.sleep(0.05)
    rng = np.random.default_rng(2)
    for i in range(count):
        wire = encode(keyframe(rng, dim, 500, True, kid=i, stamp_ns=time.time_ns()), model)
        pub.publish(fill_cloud(PointCloud2(), wire, PointField))
        time.sleep(1.0 / rate_hz)
    out, _ = child.communicate(timeout=150)
    node.destroy_node()
    rclpy.shutdown()
    res = json.loads(out.strip().splitlines()[-1])
    lat = np.array(res["latency_s"]) * 1e3
    print(f"\nDDS loopback, 2 processes, reliable, {count} keyframes of {res['stats']['bytes_in_total'] // count} B "
          f"at {rate_hz} Hz into a map of {map_size} keyframes: received {res['received']}, found as the best "
          f"match {res['found']}; publish -> searchable (received, inserted, a query's top match) median "
          f"{np.median(lat):.1f} ms, p95 {np.percentile(lat, 95):.1f} ms, max {lat.max():.1f} ms; "
          f"rejected {res['stats']['rejected']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=8448)
    ap.add_argument("--model", default="dinov2_salad")
    ap.add_argument("--vectors", type=int, default=500, help="random vectors for the cosine figure")
    ap.add_argument("--dds", type=int, default=0, help="keyframes to send over DDS (0 = skip)")
    ap.add_argument("--rate", type=float, default=5.0, help="keyframes per second over DDS")
    ap.add_argument("--map", type=int, default=1000, help="own keyframes in the receiving map (--dds)")
    ap.add_argument("--role", choices=("main", "sub"), default="main", help=argparse.SUPPRESS)
    args = ap.parse_args()
    model = ModelIdentity(args.model, args.dim)
    if args.role == "sub":
        subscriber(args.dds, model, args.map)
        return
    size_table(args.dim, model)
    quality_and_speed(args.dim, model, args.vectors)
    if args.dds:
        from salad_ros.ros_env import ensure_local_ros_env

        env = ensure_local_ros_env()  # before rclpy is imported; the child inherits it
        print(f"(ROS_DOMAIN_ID {env['ROS_DOMAIN_ID']}, discovery {env['ROS_AUTOMATIC_DISCOVERY_RANGE']})",
              file=sys.stderr)
        dds_latency(args.dds, args.dim, model, args.rate, args.map)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
