"""Helpers for the node tests and the benchmark: synthetic scenes, image messages, a collector of
the node's outputs, a background executor. Run as a script it is the image publisher process of
the multi-process test:

    python test/_ros_helpers.py publish --topic /cam/image --node /salad_loop_closure --scenes 0,1,2,0
    python test/_ros_helpers.py stream --topic /cam/image --count 30 --rate 10   # 640x480, best effort

Every process that imports this module gets localhost-only discovery before rclpy is imported.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere, installed or not
    sys.path.insert(0, str(ROOT))

from salad_ros.ros_env import ensure_local_ros_env  # noqa: E402

ensure_local_ros_env()

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from _scenes import scene  # noqa: E402,F401 - re-exported for the node tests and benchmarks
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image, PointCloud2  # noqa: E402

from salad_ros.io.images import rgb_to_jpeg, rgb_to_raw  # noqa: E402
from salad_ros.io.messages import ns_to_sec_nanosec, stamp_to_ns  # noqa: E402
from salad_ros.io.table import cloud_to_table  # noqa: E402

NODE = "/salad_loop_closure"
SEC = 1_000_000_000
#: Detector settings under which random-weight ViT-S descriptors give candidates exactly on
#: revisits (re-published identical images score 1.0; distinct synthetic scenes score <= 0.99,
#: measured over 12 scenes: mean 0.89, max 0.989).
TEST_DETECTOR = {
    "detector.min_score": 0.997,
    "detector.keyframe_max_similarity": 0.997,
    "detector.keyframe_min_interval_s": 0.0,
    "detector.consistency_count": 1,
    "detector.exclude_recent_keyframes": 2,
    "detector.exclude_recent_s": 1.5,
    "detector.top_k": 3,
}
#: The small model every node test uses.
TEST_MODEL = {"backbone": "dinov2_vits14", "image_size": 224, "allow_random_weights": True, "device": "cpu"}


def image_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str = "camera", encoding: str = "rgb8") -> Image:
    h, w, step, data = rgb_to_raw(rgb, encoding)
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=0, step=step)
    msg.header.stamp.sec, msg.header.stamp.nanosec = ns_to_sec_nanosec(stamp_ns)
    msg.header.frame_id = frame_id
    msg.data = data
    return msg


def compressed_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str = "camera") -> CompressedImage:
    msg = CompressedImage(format="jpeg", data=rgb_to_jpeg(rgb))
    msg.header.stamp.sec, msg.header.stamp.nanosec = ns_to_sec_nanosec(stamp_ns)
    msg.header.frame_id = frame_id
    return msg


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class Spinner:
    """An executor spinning ``nodes`` in a daemon thread (``with Spinner(ctx, a, b): ...``)."""

    def __init__(self, context: Context | None, *nodes: Node) -> None:
        self.executor = SingleThreadedExecutor(context=context)
        for n in nodes:
            self.executor.add_node(n)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - context shut down under us: stop quietly
                if self._stop.is_set():
                    return
                raise

    def add(self, node: Node) -> None:
        self.executor.add_node(node)

    def __enter__(self) -> Spinner:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.executor.shutdown(timeout_sec=1.0)


class Collector(Node):
    """Publishes images at the node and records its outputs, decoded.

    ``candidates``: list of ``(query_stamp_ns, rows)``; ``keyframes``: list of rows (structured
    arrays from :func:`cloud_to_table`); ``diagnostics``: list of ``{key: value}`` of the node's
    status; ``debug_images``: list of Image messages (only when ``debug=True``).
    """

    def __init__(self, target: str = NODE, *, context: Context | None = None, name: str = "",
                 image_topic: str = "image", compressed: bool = False, debug: bool = False,
                 reliable: bool = True) -> None:
        # unique per target: several collectors may share a context
        super().__init__(name or "salad_test_collector" + re.sub(r"\W", "_", target.rsplit("/", 1)[0]), context=context)
        self.target = target.rstrip("/")
        self._lock = threading.Lock()
        self.candidates: list[tuple[int, np.ndarray]] = []
        self.keyframes: list[np.ndarray] = []
        self.diagnostics: list[dict[str, str]] = []
        self.debug_images: list[Image] = []
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
        msg_type = CompressedImage if compressed else Image
        self.pub = self.create_publisher(msg_type, image_topic + ("/compressed" if compressed else ""), qos)
        self.create_subscription(PointCloud2, f"{self.target}/loop_candidates", self._on_candidates, 100)
        self.create_subscription(PointCloud2, f"{self.target}/keyframes", self._on_keyframes, 100)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        if debug:
            self.create_subscription(Image, f"{self.target}/debug_image", self._on_debug, 5)

    def _on_candidates(self, msg: PointCloud2) -> None:
        with self._lock:
            self.candidates.append((stamp_to_ns(msg.header.stamp), cloud_to_table(msg)))

    def _on_keyframes(self, msg: PointCloud2) -> None:
        with self._lock:
            self.keyframes.append(cloud_to_table(msg))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            # diagnostic_updater's convention: '<node>: <task>' without the leading slash
            if status.name.startswith(self.target.lstrip("/") + ":"):
                with self._lock:
                    level = status.level[0] if isinstance(status.level, (bytes, bytearray)) else int(status.level)
                    self.diagnostics.append({kv.key: kv.value for kv in status.values}
                                            | {"_level": level, "_message": status.message, "_name": status.name,
                                               "_hardware_id": status.hardware_id})

    def _on_debug(self, msg: Image) -> None:
        with self._lock:
            self.debug_images.append(msg)

    def responded_to(self, stamp_ns: int) -> bool:
        """True once the node published a keyframe row or candidates for the image at ``stamp_ns``."""
        sec, nsec = ns_to_sec_nanosec(stamp_ns)
        with self._lock:
            return any(q == stamp_ns for q, _ in self.candidates) or any(
                int(r["stamp_sec"]) == sec and int(r["stamp_nanosec"]) == nsec for rows in self.keyframes for r in rows)

    def wait_for_node(self, timeout: float = 20.0) -> bool:
        """Discovery: the node subscribes to our images and publishes what we listen to."""
        return wait_until(lambda: self.pub.get_subscription_count() > 0
                          and self.count_publishers(f"{self.target}/keyframes") > 0, timeout)

    def last_diagnostics(self) -> dict[str, str] | None:
        with self._lock:
            return self.diagnostics[-1] if self.diagnostics else None

    def candidate_rows(self) -> list[tuple[int, np.ndarray]]:
        with self._lock:
            return list(self.candidates)


def publish_sequence(collector: Collector, scenes: Iterable[int], *, t0_ns: int = 100 * SEC, dt_ns: int = SEC,
                     period: float = 0.3, response_timeout: float = 15.0, compressed: bool = False,
                     processed: Callable[[], int] | None = None) -> list[int]:
    """Publish one image per scene with stamps ``t0 + k*dt``, at most every ``period`` s.

    Before the next image, waits until the node answered the previous one (a keyframe row or
    candidates with its stamp, or ``processed()`` grew), so no frame is dropped as "latest wins"
    behind a slow model. Returns the stamps.
    """
    stamps = []
    for k, i in enumerate(scenes):
        stamp = t0_ns + k * dt_ns
        before = processed() if processed else 0
        t_pub = time.monotonic()
        rgb = scene(i)
        msg = compressed_msg(rgb, stamp) if compressed else image_msg(rgb, stamp)
        collector.pub.publish(msg)
        stamps.append(stamp)
        answered = ((lambda before=before: processed() > before) if processed is not None
                    else (lambda stamp=stamp: collector.responded_to(stamp)))
        # Discovery is asymmetric: we may see the node's subscription before it has matched our
        # publisher, and the first sample is then lost. Resend the first frame (a duplicate is no
        # new keyframe: identical descriptor, novelty rule) until the node answers with its stamp.
        # Only with stamp-specific answers: a processed() count can't tell a duplicate apart.
        resend = k == 0 and processed is None
        ok = wait_until(answered, 3.0 if resend else response_timeout)
        deadline = time.monotonic() + response_timeout
        while not ok and resend and time.monotonic() < deadline:
            collector.pub.publish(msg)
            ok = wait_until(answered, 3.0)
        if not ok:
            raise TimeoutError(f"no answer to scene {i} (stamp {stamp}) within {response_timeout} s")
        time.sleep(max(0.0, period - (time.monotonic() - t_pub)))
    return stamps


def _streamer_main(argv: list[str]) -> int:
    """The camera-like process: ``--count`` frames of ``--size`` rgb8 (or JPEG with ``--compressed``)
    at ``--rate`` Hz with sensor-data QoS (best effort, depth 5; ``--reliable``), without waiting
    for answers; prints how many it sent."""
    import argparse

    p = argparse.ArgumentParser(prog="_ros_helpers.py stream")
    p.add_argument("--topic", required=True)
    p.add_argument("--count", type=int, default=30)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--size", default="640x480", help="WIDTHxHEIGHT")
    p.add_argument("--compressed", action="store_true", help="JPEG CompressedImage on <topic>/compressed")
    p.add_argument("--reliable", action="store_true")
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    rclpy.init()
    node = Node("salad_test_streamer")
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE if args.reliable else ReliabilityPolicy.BEST_EFFORT)
    if args.compressed:
        pub = node.create_publisher(CompressedImage, args.topic + "/compressed", qos)
    else:
        pub = node.create_publisher(Image, args.topic, qos)
    try:
        if not wait_until(lambda: pub.get_subscription_count() > 0, 30.0):
            print("no subscriber", file=sys.stderr)
            return 1
        time.sleep(0.5)  # discovery is asymmetric: let the subscriber match us too
        frames = [np.ascontiguousarray(np.resize(scene(i), (height, width, 3))) for i in range(3)]
        t0 = time.monotonic()
        for k in range(args.count):
            make = compressed_msg if args.compressed else image_msg
            pub.publish(make(frames[k % 3], 100 * SEC + k * SEC // 10))
            time.sleep(max(0.0, t0 + (k + 1) / args.rate - time.monotonic()))
        print(args.count, flush=True)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def _publisher_main(argv: list[str]) -> int:
    """The publisher process: feed scenes to a node running elsewhere, print the stamps."""
    import argparse

    p = argparse.ArgumentParser(prog="_ros_helpers.py publish")
    p.add_argument("--topic", required=True)
    p.add_argument("--node", default=NODE)
    p.add_argument("--scenes", required=True, help="comma-separated scene numbers")
    p.add_argument("--period", type=float, default=0.3)
    p.add_argument("--best-effort", action="store_true")
    args = p.parse_args(argv)
    rclpy.init()
    node = Collector(args.node, name="salad_test_publisher", image_topic=args.topic, reliable=not args.best_effort)
    try:
        with Spinner(None, node):
            if not node.wait_for_node(30.0):
                print("node not discovered", file=sys.stderr)
                return 1
            stamps = publish_sequence(node, [int(s) for s in args.scenes.split(",")], period=args.period)
            print(",".join(str(s) for s in stamps), flush=True)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "publish":
        sys.exit(_publisher_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "stream":
        sys.exit(_streamer_main(sys.argv[2:]))
    sys.exit(f"usage: {sys.argv[0]} publish --topic T --scenes 0,1,2 | stream --topic T [--count N --rate HZ]")
