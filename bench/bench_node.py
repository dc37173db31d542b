#!/usr/bin/env python3
"""End-to-end latency of the loop-closure node: Image publish -> candidate receipt.

The node runs in this process with a timed encoder, so each frame's latency splits into

* ``model``    - the encoder's own forward pass;
* ``overhead`` - everything else (end-to-end minus model): DDS in and out, decoding, the
  hand-over to the worker, keyframe decision, database search and insert, table publishing;
* ``search``   - of which the detector + database (``pipeline.process`` minus model);
* ``ros``      - of which the ROS layer alone (end-to-end minus ``pipeline.process``).

The database is filled directly with N random unit descriptors plus the descriptors of the
query scenes, so every query frame is a keyframe with one candidate. Target: median overhead
<= 15 ms. Discovery stays on localhost in a random ROS domain.

    .venv/bin/python bench/bench_node.py                      # ViT-S/224 random weights, 1k and 10k
    .venv/bin/python bench/bench_node.py --sizes 1000,10000 --fp16 --json /tmp/bench_node.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "test")]

from salad_ros.ros_env import ensure_local_ros_env  # noqa: E402

ensure_local_ros_env()  # before rclpy is imported

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from _ros_helpers import image_msg, scene  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image, PointCloud2  # noqa: E402

from salad_ros.backends import Encoder, ModelConfig, create_encoder  # noqa: E402
from salad_ros.io.messages import stamp_to_ns  # noqa: E402
from salad_ros.node import LoopClosureNode  # noqa: E402

SEC = 1_000_000_000
TARGET_MS = 15.0


class TimedEncoder(Encoder):
    """Delegates to an encoder and remembers how long the last ``encode`` took."""

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner
        self.backend, self.dim, self.input_size = inner.backend, inner.dim, inner.input_size
        self.model_name, self.device = inner.model_name, inner.device
        self.last = 0.0

    def encode(self, images, color: str = "rgb") -> np.ndarray:
        t0 = time.perf_counter()
        out = self.inner.encode(images, color)
        self.last = time.perf_counter() - t0
        return out

    def heatmap(self, image, color: str = "rgb"):
        return self.inner.heatmap(image, color)


class Spin:
    """One executor per node in its own thread, as two processes would have."""

    def __init__(self, context: Context, node: Node) -> None:
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(node)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.executor.shutdown(timeout_sec=1)


class Probe(Node):
    """Publishes query images and timestamps candidate arrivals by query stamp."""

    def __init__(self, context: Context, ns: str) -> None:
        super().__init__("salad_bench_probe", namespace=ns, context=context)
        self.pub = self.create_publisher(Image, f"{ns}/image", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        self.arrived: dict[int, float] = {}
        self.create_subscription(PointCloud2, f"{ns}/salad_loop_closure/loop_candidates", self._on_candidates, 10)

    def _on_candidates(self, msg: PointCloud2) -> None:
        self.arrived[stamp_to_ns(msg.header.stamp)] = time.perf_counter()  # first thing: the receipt time


def _wait(pred, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.0005)
    return False


def run_size(ctx: Context, encoder: TimedEncoder, size: int, args: argparse.Namespace) -> dict:
    ns = f"/bench_{size}"
    params = {
        "backbone": args.backbone, "image_size": args.image_size, "allow_random_weights": not args.weights,
        "weights": args.weights, "device": args.device, "reliable_qos": True,
        "database.index": args.index, "database.fp16": args.fp16,
        "detector.min_score": 0.997, "detector.keyframe_max_similarity": 0.997,
        "detector.keyframe_min_interval_s": 0.0, "detector.consistency_count": 1,
        "detector.exclude_recent_keyframes": 0, "detector.exclude_recent_s": 0.0, "detector.top_k": 5,
    }
    node = LoopClosureNode(context=ctx, namespace=ns, encoder=encoder,
                           parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    # The map: random unit descriptors (cosine ~0 to everything) with the query scenes' own
    # descriptors in the middle, all stamped long before the queries.
    rng = np.random.default_rng(size)
    scenes = [scene(i) for i in range(args.scenes)]
    own = encoder.inner.encode(scenes)
    rand = rng.standard_normal((size - len(own), encoder.dim)).astype(np.float32)
    rand /= np.linalg.norm(rand, axis=1, keepdims=True)
    half = len(rand) // 2
    desc = np.concatenate([rand[:half], own, rand[half:]])
    t0 = time.perf_counter()
    node.pipeline.database.add(desc, np.arange(len(desc), dtype=np.int64) * SEC)
    fill_s = time.perf_counter() - t0
    probe = Probe(ctx, ns)
    spins = [Spin(ctx, node), Spin(ctx, probe)]
    rows = []
    try:
        if not _wait(lambda: probe.pub.get_subscription_count() > 0
                     and probe.count_publishers(f"{ns}/salad_loop_closure/loop_candidates") > 0, 30):
            raise RuntimeError("node not discovered")
        msgs = [image_msg(s, 0) for s in scenes]
        base = (size + 10_000) * SEC
        for k in range(args.warmup + args.frames):
            msg = msgs[k % len(msgs)]
            stamp = base + k * SEC
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, SEC)
            processed = node.stats.processed
            t_pub = time.perf_counter()
            probe.pub.publish(msg)
            if not _wait(lambda stamp=stamp: stamp in probe.arrived, 60):
                raise RuntimeError(f"no candidate for frame {k} at database size {size}")
            _wait(lambda processed=processed: node.stats.processed > processed, 5)  # stats are updated right after process()
            e2e = probe.arrived[stamp] - t_pub
            process = node.stats.latencies[-1]
            if k >= args.warmup:
                rows.append({"e2e": e2e, "model": encoder.last, "process": process})
            time.sleep(args.gap)  # latency, not throughput: let the node go idle
    finally:
        for s in spins:
            s.close()
        probe.destroy_node()
        node.destroy_node()

    def med(key_fn) -> float:
        return 1000.0 * statistics.median(key_fn(r) for r in rows)

    def p90(key_fn) -> float:
        return 1000.0 * float(np.percentile([key_fn(r) for r in rows], 90))

    overhead = lambda r: r["e2e"] - r["model"]  # noqa: E731
    return {
        "database_size": size + args.warmup,  # approx. size during the measured frames
        "fill_seconds": round(fill_s, 2),
        "frames": len(rows),
        "e2e_ms_median": round(med(lambda r: r["e2e"]), 2),
        "model_ms_median": round(med(lambda r: r["model"]), 2),
        "overhead_ms_median": round(med(overhead), 2),
        "overhead_ms_p90": round(p90(overhead), 2),
        "search_ms_median": round(med(lambda r: r["process"] - r["model"]), 2),
        "ros_ms_median": round(med(lambda r: r["e2e"] - r["process"]), 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000", help="database sizes, comma-separated")
    p.add_argument("--frames", type=int, default=30, help="measured frames per size")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--scenes", type=int, default=10, help="distinct query scenes")
    p.add_argument("--gap", type=float, default=0.05, help="idle seconds between frames")
    p.add_argument("--backbone", default="dinov2_vits14")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--weights", default="", help="checkpoint (default: random weights)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--index", default="flat", choices=("flat", "hnsw", "ivfpq"))
    p.add_argument("--fp16", action="store_true", help="float16 database storage")
    p.add_argument("--json", help="write the results here too")
    p.add_argument("--check", action="store_true", help=f"exit 1 when a median overhead exceeds {TARGET_MS} ms")
    args = p.parse_args(argv)

    encoder = TimedEncoder(create_encoder(ModelConfig(
        weights=args.weights, allow_random_weights=not args.weights, backbone=args.backbone,
        image_size=args.image_size, device=args.device)))
    ctx = Context()
    rclpy.init(context=ctx)
    results = []
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            r = run_size(ctx, encoder, size, args)
            results.append(r)
            print(json.dumps(r), flush=True)
    finally:
        rclpy.shutdown(context=ctx)
    print(f"\n{encoder.model_name} on {encoder.device}, database {args.index}{' fp16' if args.fp16 else ''}")
    print(f"{'keyframes':>10} {'e2e':>8} {'model':>8} {'overhead':>9} {'(p90)':>8} {'search':>8} {'ros':>6}  (ms, median)")
    for r in results:
        print(f"{r['database_size']:>10} {r['e2e_ms_median']:>8.1f} {r['model_ms_median']:>8.1f} "
              f"{r['overhead_ms_median']:>9.1f} {r['overhead_ms_p90']:>8.1f} {r['search_ms_median']:>8.1f} "
              f"{r['ros_ms_median']:>6.1f}")
    ok = all(r["overhead_ms_median"] <= TARGET_MS for r in results)
    print(f"target: median overhead <= {TARGET_MS} ms: {'met' if ok else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
