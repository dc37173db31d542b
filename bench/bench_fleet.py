#!/usr/bin/env python3
"""Fleet wire benchmark: bytes per shared keyframe, int8 descriptor quality, codec time, DDS latency.

Prints one markdown table of serialized sensor_msgs/PointCloud2 sizes (CDR bytes on the topic)
for a D-dimensional descriptor with N ORB features with and without depth, the cosine between
float32 and int8-dequantised random unit descriptors, encode/decode milliseconds, and with
``--dds M`` the time from publishing M keyframes (reliable QoS) in this process to their
being decoded and admitted by a :class:`PeerRegistry` in a second process, over loopback.

    .venv/bin/python bench/bench_fleet.py                 # sizes, cosine, codec time
    .venv/bin/python bench/bench_fleet.py --dds 50        # + loopback latency (two processes)
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
    PeerRegistry,
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


def subscriber(count: int, dim: int, model_name: str) -> None:
    """Child process: admit ``count`` keyframes, print latency statistics as JSON."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2

    rclpy.init()
    node = rclpy.create_node("fleet_bench_sub")
    reg = PeerRegistry(1, 11, ModelIdentity(model_name, dim))
    lat: list[float] = []

    def on_msg(msg: PointCloud2) -> None:
        kf = reg.receive(msg, len(msg.data))
        lat.append(time.time() - kf.stamp_ns * 1e-9)

    node.create_subscription(PointCloud2, TOPIC, on_msg, QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    deadline = time.time() + 120
    while len(lat) < count and time.time() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    print(json.dumps({"received": len(lat), "latency_s": lat, "stats": reg.stats()}))
    node.destroy_node()
    rclpy.shutdown()


def dds_latency(count: int, dim: int, model: ModelIdentity, rate_hz: float) -> None:
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2, PointField

    child = subprocess.Popen([sys.executable, __file__, "--role", "sub", "--dds", str(count), "--dim", str(dim),
                              "--model", model.name], stdout=subprocess.PIPE, text=True)
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
    print(f"\nDDS loopback, 2 processes, reliable, {count} keyframes at {rate_hz} Hz: received {res['received']}, "
          f"publish -> admitted median {np.median(lat):.1f} ms, p95 {np.percentile(lat, 95):.1f} ms, "
          f"max {lat.max():.1f} ms; rejected {res['stats']['rejected']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=8448)
    ap.add_argument("--model", default="dinov2_salad")
    ap.add_argument("--vectors", type=int, default=500, help="random vectors for the cosine figure")
    ap.add_argument("--dds", type=int, default=0, help="keyframes to send over DDS (0 = skip)")
    ap.add_argument("--rate", type=float, default=5.0, help="keyframes per second over DDS")
    ap.add_argument("--role", choices=("main", "sub"), default="main", help=argparse.SUPPRESS)
    args = ap.parse_args()
    model = ModelIdentity(args.model, args.dim)
    if args.role == "sub":
        subscriber(args.dds, args.dim, args.model)
        return
    size_table(args.dim, model)
    quality_and_speed(args.dim, model, args.vectors)
    if args.dds:
        from salad_ros.ros_env import ensure_local_ros_env

        env = ensure_local_ros_env()  # before rclpy is imported; the child inherits it
        print(f"(ROS_DOMAIN_ID {env['ROS_DOMAIN_ID']}, discovery {env['ROS_AUTOMATIC_DISCOVERY_RANGE']})",
              file=sys.stderr)
        dds_latency(args.dds, args.dim, model, args.rate)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
