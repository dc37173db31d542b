"""The node's relative-pose side in-process (rclpy on loopback, random domain; see conftest.py):
camera_info + depth + image in, candidate rows with pose columns out, bad or missing pose input
counted in /diagnostics, ``~/loop_markers`` for a late subscriber (transient local), and the
ROS-free pairing of frames with their companions.

The encoder is a lookup (a rendered view -> its place), so candidates appear exactly on the
revisit of the rendered room; the geometry is the real estimator's on exact renders.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys

import numpy as np
from _ros_helpers import SEC, TEST_DETECTOR, TEST_MODEL, Collector, Spinner, image_msg, wait_until

sys.path.insert(0, os.path.dirname(__file__))

from _pose_scenes import ROOM_CASES, K, pose, real_room, relative, render, rot  # noqa: E402
from _pose_scenes import rotation_error_deg as rot_err  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from salad_ros.geometry.transforms import quaternion_to_matrix  # noqa: E402
from salad_ros.io.messages import ns_to_sec_nanosec  # noqa: E402
from salad_ros.node import LoopClosureNode  # noqa: E402
from salad_ros.pose_inputs import CompanionSync, PoseInputs  # noqa: E402

T0 = 100 * SEC
NS = "/lpose"


class PlaceEncoder:
    """Descriptor = one-hot of the place an image was registered as (by content hash)."""

    backend, device, input_size, dim = "test", "cpu", (8, 8), 8
    model_name = "place-lookup"

    def __init__(self) -> None:
        self.places: dict[bytes, int] = {}

    def register(self, rgb: np.ndarray, place: int) -> None:
        self.places[hashlib.sha1(rgb.tobytes()).digest()] = place

    def encode(self, images, color: str = "rgb") -> np.ndarray:
        eye = np.eye(self.dim, dtype=np.float32)
        return np.stack([eye[self.places[hashlib.sha1(np.ascontiguousarray(im).tobytes()).digest()]] for im in images])

    def describe(self) -> str:
        return "place lookup"


@functools.cache
def views():
    """match view, an unrelated view, query view (rgb, depth) and the true (R, t)."""
    aq, tq, am, tm = ROOM_CASES["sideways"]
    planes = real_room()
    world_q, world_m = pose(rot(*aq), tq), pose(rot(*am), tm)
    other = render(planes, pose(rot(0, 90, 0), (0.0, 0.0, 0.0)))  # the right-hand wall: nothing in common
    return render(planes, world_m), other, render(planes, world_q), relative(world_q, world_m)


def camera_info(stamp_ns: int, k: np.ndarray = K, size=(640, 480)) -> CameraInfo:
    msg = CameraInfo(width=size[0], height=size[1], distortion_model="plumb_bob")
    msg.k = [float(v) for v in np.asarray(k, float).ravel()]
    msg.header.stamp.sec, msg.header.stamp.nanosec = ns_to_sec_nanosec(stamp_ns)
    msg.header.frame_id = "camera"
    return msg


def depth_msg(depth: np.ndarray, stamp_ns: int, encoding: str = "32FC1") -> Image:
    arr = depth.astype(np.float32) if encoding == "32FC1" else np.nan_to_num(depth * 1000).astype(np.uint16)
    msg = Image(height=arr.shape[0], width=arr.shape[1], encoding=encoding, is_bigendian=0, step=arr.strides[0])
    msg.data = arr.tobytes()
    msg.header.stamp.sec, msg.header.stamp.nanosec = ns_to_sec_nanosec(stamp_ns)
    msg.header.frame_id = "camera"
    return msg


def odometry(stamp_ns: int, x: float) -> Odometry:
    o = Odometry()
    o.header.stamp.sec, o.header.stamp.nanosec = ns_to_sec_nanosec(stamp_ns)
    o.header.frame_id = "odom_test"
    o.pose.pose.position.x = x
    o.pose.pose.orientation.w = 1.0
    return o


def test_candidates_carry_poses_bad_input_is_counted_and_markers_reach_a_late_subscriber(ctx):
    (m_rgb, m_depth), (o_rgb, o_depth), (q_rgb, q_depth), (r, t) = views()
    others = [np.ascontiguousarray(o_rgb + np.uint8(k)) for k in range(4)]  # four distinct unrelated places
    enc = PlaceEncoder()
    for rgb, place in [(m_rgb, 0), (q_rgb, 0)] + [(o, 1 + k) for k, o in enumerate(others)]:
        enc.register(rgb, place)
    params = {**TEST_MODEL, **TEST_DETECTOR, "detector.exclude_recent_keyframes": 1, "reliable_qos": True,
              "diagnostics_period": 0.25, "pose_source": "odometry", "pose_tolerance": 0.05,
              "detector.keyframe_min_distance_m": 0.0, "detector.keyframe_min_rotation_deg": 0.0}
    node = LoopClosureNode(context=ctx, namespace=NS, encoder=enc,
                           parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    col = Collector(f"{NS}/salad_loop_closure", context=ctx, image_topic=f"{NS}/image")
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    info_pub = col.create_publisher(CameraInfo, f"{NS}/camera_info", reliable)
    depth_pub = col.create_publisher(Image, f"{NS}/depth", reliable)
    odom_pub = col.create_publisher(Odometry, f"{NS}/odom", reliable)
    # (rgb, depth: encoding / "small" / None, K or None) per frame, one second apart
    plan = [
        (m_rgb, "32FC1", K),  # 0: the match keyframe, metric depth
        (others[0], "16UC1", K),
        (q_rgb, "32FC1", K),  # 2: revisit of 0 -> status 2
        (others[1], None, K),  # 3: no depth on an existing depth stream -> missing_depth
        (q_rgb, "32FC1", np.zeros((3, 3))),  # 4: zero K -> invalid_camera_info: status 0, no features kept
        (others[2], "32FC1", K),
        (q_rgb, "small", K),  # 6: depth of another size -> depth_size_mismatch; PnP on the matches' depth
        (others[3], "32FC1", K),
        (q_rgb, "32FC1", None),  # 8: no camera_info: the last valid one serves (latched camera_info)
    ]
    depth_of = {id(m_rgb): m_depth, id(q_rgb): q_depth}
    try:
        with Spinner(ctx, node, col):
            assert col.wait_for_node()
            assert wait_until(lambda: all(p.get_subscription_count() > 0 for p in (info_pub, depth_pub, odom_pub)), 10)
            # the companion streams announce themselves before the first frame
            info_pub.publish(camera_info(T0 - SEC))
            depth_pub.publish(depth_msg(m_depth, T0 - SEC))
            assert wait_until(lambda: node._pose_io.sync.streams == ("camera_info", "depth"), 10)
            for k, (rgb, enc_name, kmat) in enumerate(plan):
                stamp = T0 + k * SEC
                n = len(node._poses)
                odom_pub.publish(odometry(stamp, 2.0 * k))
                assert wait_until(lambda n=n: len(node._poses) == n + 1, 10)
                if kmat is not None:
                    info_pub.publish(camera_info(stamp, kmat))
                if enc_name == "small":
                    depth_pub.publish(depth_msg(np.ones((240, 320), np.float32), stamp))
                elif enc_name is not None:
                    depth_pub.publish(depth_msg(depth_of.get(id(rgb), o_depth), stamp, enc_name))
                before = node.stats.processed
                col.pub.publish(image_msg(rgb, stamp))
                assert wait_until(lambda before=before: node.stats.processed > before, 20), f"frame {k}"
            assert wait_until(lambda: len(col.candidate_rows()) == 4, 10), col.candidate_rows()
            rows = {q: rr for q, rr in col.candidate_rows()}
            assert sorted(rows) == [T0 + k * SEC for k in (2, 4, 6, 8)]
            good = rows[T0 + 2 * SEC][0]
            assert (int(good["query_id"]), int(good["match_id"])) == (2, 0) and good["pose_status"] == 2
            q = np.array([good["qx"], good["qy"], good["qz"], good["qw"]])
            assert rot_err(quaternion_to_matrix(q), r) < 1.0
            assert np.linalg.norm([good["tx"] - t[0], good["ty"] - t[1], good["tz"] - t[2]]) < 0.05
            assert 0 < good["rotation_std_rad"] < 0.02 and 0 < good["translation_std_m"] < 0.05
            bad_k = rows[T0 + 4 * SEC]
            assert bad_k["pose_status"].tolist() == [0, 0] and bad_k["qw"].tolist() == [1.0, 1.0]
            assert np.isinf(bad_k["translation_std_m"]).all() and bad_k["tx"].tolist() == [0.0, 0.0]
            # keyframe 4 had no usable camera: candidates against it have no pose
            assert rows[T0 + 6 * SEC]["match_id"].tolist() == [0, 2, 4]
            assert rows[T0 + 6 * SEC]["pose_status"].tolist() == [2, 2, 0]
            assert rows[T0 + 8 * SEC]["match_id"].tolist() == [0, 2, 4]  # detector.top_k 3
            assert rows[T0 + 8 * SEC]["pose_status"].tolist() == [2, 2, 0], "the earlier camera_info served"

            def diag_ok() -> bool:
                d = col.last_diagnostics() or {}
                return d.get("frames_processed") == str(len(plan)) and d.get("pose_estimates") == "5"
            assert wait_until(diag_ok, 5), col.last_diagnostics()
            d = col.last_diagnostics()
            assert d["pose_input.invalid_camera_info"] == "1" and d["pose_input.depth_size_mismatch"] == "1"
            assert d["pose_input.missing_depth"] == "1" and d["pose_input.missing_camera_info"] == "0"
            assert d["pose_input.no_match_features"] == "2" and d["pose_status.2"] == "5"
            assert 0 < float(d["pose_estimation_mean_ms"]) < 2000 and d["pose_features_stored"] == str(len(plan) - 1)
            assert d["processing_errors"] == "0" and d["pose_estimation"] == "on"

            # a late subscriber still gets the markers: transient local
            got: list[MarkerArray] = []
            qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
            col.create_subscription(MarkerArray, f"{NS}/salad_loop_closure/loop_markers", got.append, qos)
            assert wait_until(lambda: got and len(got[-1].markers[2].points) == 2 * 9, 10), got
            kf, verified, unverified = got[-1].markers
            assert kf.header.frame_id == "odom_test" and kf.type == Marker.SPHERE_LIST
            assert [p.x for p in kf.points] == [2.0 * k for k in range(len(plan))]
            assert verified.action == Marker.DELETE, "detector.verify is off: every edge is unverified"
            assert unverified.type == Marker.LINE_LIST  # 1 + 2 + 3 + 3 edges
    finally:
        node.destroy_node()
        col.destroy_node()


# --------------------------------------------------------------------------------------------
# ROS-free pairing


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_frames_pass_at_once_without_companion_streams():
    sync = CompanionSync(0, 0.3, clock=FakeClock())
    out = sync.add_frame(5, "f")
    assert [(s.stamp_ns, s.frame, s.companions) for s in out] == [(5, "f", {})]


def test_frames_wait_for_companions_within_a_wall_clock_bound():
    clock = FakeClock()
    sync = CompanionSync(10, 0.3, stale_s=5.0, clock=clock)
    assert sync.add_companion("camera_info", 100, "ci100") == []
    assert sync.streams == ("camera_info",)
    out = sync.add_frame(100, "f100")
    assert [(s.frame, s.get("camera_info")) for s in out] == [("f100", "ci100")]
    assert sync.add_frame(200, "f200") == [], "waits for its camera_info"
    clock.now = 0.2
    assert sync.expire() == []
    clock.now = 0.31
    out = sync.expire()
    assert [(s.frame, s.get("camera_info")) for s in out] == [("f200", None)], "goes on without after the bound"
    # depth starts: the matcher now waits for both; a depth within tolerance pairs
    sync.add_companion("depth", 305, "d305")
    sync.add_companion("camera_info", 300, "ci300")
    out = sync.add_frame(300, "f300")
    assert [(s.frame, s.get("camera_info"), s.get("depth")) for s in out] == [("f300", "ci300", "d305")]
    # streams that stop publishing are no longer waited for
    clock.now = 10.0
    out = sync.add_frame(400, "f400")
    assert [s.frame for s in out] == ["f400"] and sync.streams == ()


def test_pose_inputs_decode_check_count_and_fall_back_to_the_latched_camera_info():
    (m_rgb, m_depth), _, _, _ = views()
    inputs = PoseInputs()
    shape = m_rgb.shape
    cam, depth = inputs.resolve(shape, "camera", camera_info(0), depth_msg(m_depth, 0, "16UC1"))
    assert cam is not None and np.allclose(cam.matrix, K) and depth.dtype == np.float32
    assert np.nanmax(np.abs(depth - m_depth)) < 0.001  # millimetres
    cam2, depth2 = inputs.resolve(shape, "camera", None, None)
    assert cam2 is cam and depth2 is None, "latched camera_info serves later frames"
    assert inputs.resolve(shape, "other_camera", None, None, depth_expected=False) == (None, None)
    inputs.resolve(shape, "camera", camera_info(0, size=(320, 240)), depth_msg(np.zeros((480, 640)), 0))
    nan_k = camera_info(0, K * np.nan)
    inputs.resolve(shape, "camera", nan_k, depth_msg(np.ones((10, 10)), 0))
    bad_enc = Image(height=2, width=2, encoding="mono8", step=2, data=bytes(4))
    inputs.resolve(shape, "camera", None, bad_enc)
    assert inputs.snapshot() == {"missing_camera_info": 1, "missing_depth": 1, "invalid_camera_info": 1,
                                 "image_size_mismatch": 1, "depth_size_mismatch": 1, "depth_encoding": 1,
                                 "empty_depth": 1}


def test_marker_array_of_positions_and_edges():
    from salad_ros.markers import build_markers

    pos = np.array([[0, 0, 0], [1, 0, 0], [np.nan] * 3, [3, 0, 0]], float)
    msg = build_markers(pos, [(3, 0, True), (3, 1, False), (2, 0, True), (9, 0, False)], "map", None)
    kf, ver, unver = msg.markers
    assert [p.x for p in kf.points] == [0.0, 1.0, 3.0] and kf.header.frame_id == "map"
    assert [(p.x) for p in ver.points] == [3.0, 0.0] and [(p.x) for p in unver.points] == [3.0, 1.0]
    empty = build_markers(np.zeros((0, 3)), [], "map", None)
    assert all(m.action == Marker.DELETE for m in empty.markers)
