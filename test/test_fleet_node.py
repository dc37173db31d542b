"""The node's fleet side (salad_ros.node_fleet) over real DDS (loopback, random domain; conftest.py).

With ``fleet.enable`` false the node has no fleet topic. In-process: a node with
``fleet.enable`` and ``robot_id: 1`` beside a test "peer" node that publishes hand-made fleet
keyframes (descriptors the node's own encoder gives for known scenes) and listens to the node's
fleet traffic. Processes: three ``loop_closure_node`` processes (robots 0, 1 and a late robot 2)
finding loops between robots, catching up, and a restart of robot 0 with its saved map keeping
its session. ViT-S with random weights, as in test_node.py; about 25 s on 2 cores.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _ros_helpers import (
    SEC,
    TEST_DETECTOR,
    TEST_MODEL,
    Collector,
    Spinner,
    image_msg,
    publish_sequence,
    scene,
    wait_until,
)
from rclpy.context import Context
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import UInt32MultiArray
from std_srvs.srv import Trigger
from test_node_processes import start_node, stop, write_params

from salad_ros.fleet import ModelIdentity, SharedKeyframe, decode, encode, fill_cloud
from salad_ros.fleet.catchup import CatchUpRequest
from salad_ros.fleet.peers import ID_END
from salad_ros.geometry.pose import Pose
from salad_ros.node import LoopClosureNode, StartupError

T0 = 100 * SEC
PEER_SESSION = 0xABCD


@pytest.fixture(scope="module")
def encoder():
    """One ViT-S encoder shared by this module's in-process nodes."""
    from salad_ros.backends import ModelConfig, create_encoder

    return create_encoder(ModelConfig(**TEST_MODEL))


def make_node(ctx: Context, namespace: str, encoder, **params) -> LoopClosureNode:
    values = {**TEST_MODEL, **TEST_DETECTOR, "reliable_qos": True, "diagnostics_period": 0.2, **params}
    return LoopClosureNode(context=ctx, namespace=namespace, encoder=encoder,
                           parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])


class Peer(Node):
    """A fake fleet member: publishes keyframe messages and requests, records the fleet traffic."""

    def __init__(self, ctx: Context, topic: str, request_topic: str) -> None:
        super().__init__("salad_test_fleet_peer", context=ctx)
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = self.create_publisher(PointCloud2, topic, qos)
        self.request_pub = self.create_publisher(UInt32MultiArray, request_topic, qos)
        self._lock = threading.Lock()
        self.clouds: list[PointCloud2] = []
        self.requests: list[list[int]] = []
        self.create_subscription(PointCloud2, topic, self._on_cloud, qos)
        self.create_subscription(UInt32MultiArray, request_topic, self._on_request, qos)

    def _on_cloud(self, msg: PointCloud2) -> None:
        with self._lock:
            self.clouds.append(msg)

    def _on_request(self, msg: UInt32MultiArray) -> None:
        with self._lock:
            self.requests.append([int(v) for v in msg.data])

    def keyframes_of(self, robot_id: int, session: int, model: ModelIdentity) -> list[SharedKeyframe]:
        """Decoded keyframes of lineage ``(robot_id, session)`` seen on the topic."""
        with self._lock:
            clouds = list(self.clouds)
        out = []
        for msg in clouds:
            try:
                kf = decode(msg, model)
            except ValueError:
                continue  # the malformed ones this test sent itself
            if (kf.robot_id, kf.session) == (robot_id, session):
                out.append(kf)
        return out


def cloud(kf: SharedKeyframe, model: ModelIdentity) -> PointCloud2:
    return fill_cloud(PointCloud2(), encode(kf, model), PointField)


def peer_keyframe(encoder, scene_id: int, keyframe_id: int, robot_id: int = 0, session: int = PEER_SESSION,
                  stamp_ns: int | None = None) -> SharedKeyframe:
    """A keyframe of another robot whose descriptor is what the node computes for ``scene(scene_id)``;
    its pose is in that robot's map frame (far from anything of ours)."""
    desc = np.asarray(encoder.encode([scene(scene_id)]), np.float32)[0]
    return SharedKeyframe(robot_id, session, keyframe_id, (50 + keyframe_id) * SEC if stamp_ns is None else stamp_ns,
                          desc, "robot0/camera", Pose(1000.0 + keyframe_id, 0.0, 0.0))


def diag_is(col: Collector, **expected: str) -> bool:
    d = col.last_diagnostics() or {}
    return all(d.get(k.replace("__", ".")) == v for k, v in expected.items())


def test_incoming_bytes_are_the_serialized_sizes():
    """The node counts received bytes from the message's fields, without serializing it again."""
    from rclpy.serialization import serialize_message
    from std_msgs.msg import MultiArrayDimension

    from salad_ros.node_fleet import cloud_size, request_size

    for data in ([], [1, 2, 3, 0], CatchUpRequest.of(3, 4, [(1, 2, 0, 5)] * 3).to_data()):
        msg = UInt32MultiArray(data=data)
        assert request_size(msg) == len(serialize_message(msg))
        msg.layout.dim = [MultiArrayDimension(label="ab", size=2, stride=4), MultiArrayDimension(label="", size=1)]
        assert request_size(msg) == len(serialize_message(msg))
    kf = SharedKeyframe(0, 1, 2, 3 * SEC, np.ones(64, np.float32), "cam")
    msg = cloud(kf, ModelIdentity("m", 64))
    assert cloud_size(msg) == len(serialize_message(msg))


# ---------------------------------------------------------------------------------------------
# Fleet off: nothing changes


def test_fleet_off_creates_no_fleet_topics_and_fleet_parameters_are_read_only(ctx, encoder):
    node = make_node(ctx, "/single", encoder)
    try:
        assert node._fleet is None
        time.sleep(0.3)  # let the graph settle (own entities appear at once; this is a margin)
        topics = [t for t, _ in node.get_publisher_names_and_types_by_node(node.get_name(), node.get_namespace())]
        topics += [t for t, _ in node.get_subscriber_names_and_types_by_node(node.get_name(), node.get_namespace())]
        assert topics and not [t for t in topics if "fleet" in t], topics
        assert not [t for t, _ in node.get_topic_names_and_types() if t.startswith("/salad_fleet")]
        assert not [kv.key for kv in node.diagnostics_status().values if kv.key.startswith("fleet")]
        # declared, read-only: sharing is set up once at start-up
        for name in ("robot_id", "fleet.enable", "fleet.topic", "fleet.max_bytes_per_s", "fleet.queue_depth"):
            assert node.describe_parameter(name).read_only, name
        assert not node.set_parameters([Parameter("fleet.enable", value=True)])[0].successful
        assert node.get_parameter("fleet.topic").value == "/salad_fleet/keyframes"
    finally:
        node.destroy_node()


def test_fleet_settings_refused_at_start_up_with_one_line(ctx, encoder):
    cases = [({"fleet.max_message_bytes": 4096}, "parameter 'fleet.max_message_bytes': 4096 bytes cannot hold a 8448-D"),
             ({"fleet.topic": "fleet"}, "parameter 'fleet.topic': must be a global name")]
    for params, message in cases:
        with pytest.raises(StartupError) as info:
            make_node(ctx, "/badfleet", encoder, **{"fleet.enable": True, **params})
        assert str(info.value).startswith(message) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# Fleet on, in-process


@dataclass
class Rig:
    """Robot 1's node, a collector of its outputs and a fake robot 0, spinning together."""

    node: LoopClosureNode
    col: Collector
    peer: Peer
    model: ModelIdentity
    encoder: Any
    peers: list[SharedKeyframe]  # robot 0's keyframes 0, 1, 2: scenes 5, 6, 7

    def processed(self) -> int:
        return self.node.stats.processed

    def mine(self) -> list[SharedKeyframe]:
        """Robot 1's keyframes as the fake peer got them over the fleet topic."""
        return self.peer.keyframes_of(1, self.node.pipeline.session, self.model)


def test_peer_keyframes_found_refused_counted_and_own_keyframes_shared(ctx, encoder, capfd):
    """Robot 1 gets robot 0's keyframes (searchable within 1 s, even while its worker encodes),
    finds a loop with one (match_robot_id 0, match_id = robot 0's keyframe id), refuses and
    counts bad messages without touching the map, shares its own keyframes, asks for and
    answers catch-up, and starts a new session on reset."""
    topic, request_topic = "/fleet_t1/keyframes", "/fleet_t1/requests"
    node = make_node(ctx, "/f1", encoder, robot_id=1, pose_source="odometry", **{
        "fleet.enable": True, "fleet.topic": topic, "fleet.request_topic": request_topic,
        "fleet.first_request_s": 0.5, "fleet.idle_request_s": 1.0,
        f"qos_overrides.{topic}.subscription.depth": 7})
    rig = Rig(node, Collector("/f1/salad_loop_closure", context=ctx, image_topic="/f1/image", debug=True),
              Peer(ctx, topic, request_topic), ModelIdentity(node.pipeline.model_name, node.pipeline.dim), encoder,
              [peer_keyframe(encoder, 5 + k, k) for k in range(3)])
    try:
        assert node._fleet.keyframe_sub.qos_profile.depth == 7  # qos_overrides reach the fleet topics
        with Spinner(ctx, node, rig.col, rig.peer):
            assert rig.col.wait_for_node()
            assert wait_until(lambda: rig.peer.pub.get_subscription_count() > 0
                              and rig.peer.count_publishers(topic) >= 2
                              and rig.peer.request_pub.get_subscription_count() > 0
                              and node._debug_pub.get_subscription_count() > 0, 10)
            _peer_keyframes_searchable_at_once(rig)
            _bad_messages_refused_and_counted(rig)
            log = capfd.readouterr().err
            assert f"fleet: robot 1, session {node.pipeline.session:08x}; keyframes on {topic} (8448-D int8" in log
            for line in ("fleet keyframe from unknown sender (malformed, 1 so far)", "from robot 0 (other_model, 1 so",
                         "from robot 1 (own_robot_id, 1 so far)", "from robot 0 (out_of_order, 1 so far)",
                         "catch-up request from unknown sender (malformed, 2 so far)"):
                assert line in log, (line, log)
            assert "(malformed, 3 so far)" not in log  # the next malformed keyframe within 10 s: counted, not logged
            assert "duplicate" not in log  # normal with broadcast catch-up answers: debug level only
            _own_keyframes_shared_and_catch_up(rig, _inter_robot_loop_found(rig))
            _reset_starts_a_new_session(rig)
    finally:
        node.destroy_node()
        rig.col.destroy_node()
        rig.peer.destroy_node()


def _peer_keyframes_searchable_at_once(rig: Rig) -> None:
    """Each of robot 0's keyframes is published while robot 1's worker encodes an image (holding
    the pipeline lock) and is in the map within 1 s (a few ms here)."""
    node = rig.node
    latencies, worker_busy = [], []

    def searchable(kf: SharedKeyframe) -> bool:
        if node.pipeline.database.find(0, PEER_SESSION, kf.keyframe_id) is None:
            return False
        worker_busy.append(node._pipeline_lock.locked())
        return True

    for k, kf in enumerate(rig.peers):
        before, received = node.stats.processed, node.stats.received
        rig.col.pub.publish(image_msg(scene(k), T0 + k * SEC))
        assert wait_until(lambda n=received: node.stats.received > n, 5)
        wait_until(node._pipeline_lock.locked, 2, interval=0.001)  # the worker took it: encoding
        t_pub = time.monotonic()
        rig.peer.pub.publish(cloud(kf, rig.model))
        assert wait_until(lambda kf=kf: searchable(kf), 5, interval=0.002)
        latencies.append(time.monotonic() - t_pub)
        assert wait_until(lambda b=before: rig.processed() > b, 10)
    print(f"peer keyframe searchable after {[round(t * 1e3, 1) for t in latencies]} ms, "
          f"worker encoding meanwhile: {worker_busy}")
    assert max(latencies) < 1.0, latencies
    assert any(worker_busy)  # it did not wait for the pipeline lock
    assert node.pipeline.keyframe_count == 6  # 3 own, 3 of robot 0


def _bad_messages_refused_and_counted(rig: Rig) -> None:
    """One message of every refusal kind (and a malformed request): counted, nothing added."""
    node, model, peer = rig.node, rig.model, rig.peer
    bad = cloud(rig.peers[0], model)
    bad.data = bytes(bad.data)[:-1]  # truncated
    for msg in (bad, cloud(rig.peers[0], ModelIdentity("another/model", model.dim)),  # malformed, other_model
                cloud(rig.peers[0], model),  # duplicate
                cloud(peer_keyframe(rig.encoder, 8, 0, robot_id=1, session=77), model),  # our robot id
                cloud(peer_keyframe(rig.encoder, 8, 3, stamp_ns=10 * SEC), model)):  # stamped before keyframe 2
        peer.pub.publish(msg)
    peer.request_pub.publish(UInt32MultiArray(data=[7, 1, 2]))  # malformed catch-up request
    assert wait_until(lambda: diag_is(rig.col, fleet__rejected__other_model="1", fleet__rejected__duplicate="1",
                                      fleet__rejected__own_robot_id="1", fleet__rejected__out_of_order="1",
                                      fleet__rejected__malformed="2"), 5), rig.col.last_diagnostics()
    node._fleet._on_keyframe_msg(None)  # anything else going wrong: counted as malformed, no crash
    assert node._fleet.member.stats()["rejected.malformed"] == 3
    assert node.pipeline.keyframe_count == 6


def _inter_robot_loop_found(rig: Rig) -> list[int]:
    """Robot 1 at robot 0's place (scene 5 = robot 0's keyframe 0), then at its own first place:
    a candidate naming robot 0's keyframe, one naming its own; a marker edge for the own one only."""
    node, col = rig.node, rig.col
    stamps = publish_sequence(col, [5, 0], t0_ns=T0 + 10 * SEC, processed=rig.processed)
    assert wait_until(lambda: len(col.candidate_rows()) == 2 and len(col.debug_images) >= 5, 10)
    rows = dict(col.candidate_rows())
    peer_loop, own_loop = rows[stamps[0]], rows[stamps[1]]
    assert peer_loop["match_robot_id"].tolist() == [0] and peer_loop["match_id"].tolist() == [0]
    assert peer_loop["query_id"].tolist() == [3] and peer_loop["score"][0] > 0.999
    assert (int(peer_loop["match_stamp_sec"][0]), int(peer_loop["match_stamp_nanosec"][0])) == (50, 0)
    assert own_loop["match_robot_id"].tolist() == [1] and own_loop["match_id"].tolist() == [0]
    # markers: robot 0's poses are in another map frame, so neither spheres nor edges for them;
    # map ids interleave own and peers' keyframes by arrival
    db, session = node.pipeline.database, node.pipeline.session
    assert [(q, m) for q, m, _ in node._pose_io.markers._edges] == [(db.find(1, session, 4), db.find(1, session, 0))]
    of_peer = db.origins()[:, 0] == 0
    assert of_peer.sum() == 3 and np.isfinite(node.pipeline.keyframe_poses()[of_peer]).all()
    assert np.isnan(node.pipeline.keyframe_poses(own_only=True)[of_peer]).all()
    return stamps


def _own_keyframes_shared_and_catch_up(rig: Rig, stamps: list[int]) -> None:
    """Robot 1's keyframes went out (its id, session, numbering, descriptors); it asks for what it
    lacks of robot 0 and answers a late joiner's request with everything it has."""
    node, peer = rig.node, rig.peer
    assert wait_until(lambda: len(rig.mine()) == 5, 5), [k.keyframe_id for k in rig.mine()]
    assert [k.keyframe_id for k in rig.mine()] == [0, 1, 2, 3, 4]
    assert [k.stamp_ns for k in rig.mine()] == [T0, T0 + SEC, T0 + 2 * SEC, *stamps]
    want = np.asarray(rig.encoder.encode([scene(0)]), np.float32)[0]
    assert float(rig.mine()[0].descriptor @ want / np.linalg.norm(want)) > 0.999

    def last_request() -> CatchUpRequest | None:
        sent = [r for r in peer.requests if r[:2] == [1, 1]]  # version 1, robot 1 (not our malformed one)
        return CatchUpRequest.from_data(sent[-1]) if sent else None

    expected = CatchUpRequest(1, node.pipeline.session, ((0, PEER_SESSION, 3, ID_END),))
    assert wait_until(lambda: last_request() == expected, 5), last_request()
    peer.request_pub.publish(UInt32MultiArray(data=CatchUpRequest.of(9, 1, []).to_data()))  # robot 9 knows nothing
    assert wait_until(lambda: len(rig.mine()) == 10, 5)
    assert [k.keyframe_id for k in rig.mine()[5:]] == [0, 1, 2, 3, 4]

    assert wait_until(lambda: diag_is(rig.col, fleet__republished="5", fleet__keyframes_sent="5"), 5)
    d = rig.col.last_diagnostics()
    assert d["fleet.robot_id"] == "1" and d["fleet.session"] == f"{node.pipeline.session:08x}"
    assert d["fleet.peers_seen"] == "1" and d["fleet.keyframes_received"] == "3"
    assert d["fleet.peer.0.keyframes"] == "3" and d["fleet.rejected"] == "7"
    assert float(d["fleet.bytes_per_keyframe"]) > node.pipeline.dim  # int8 descriptor and the rest
    assert float(d["fleet.bytes_in_per_s"]) > 0 and float(d["fleet.bytes_out_per_s"]) > 0
    assert d["database_size"] == "8"


def _reset_starts_a_new_session(rig: Rig) -> None:
    """After ~/reset_database robot 0's keyframes are no duplicates of the forgotten map."""
    node = rig.node
    old_session = node.pipeline.session
    assert call(rig.col.create_client(Trigger, "/f1/salad_loop_closure/reset_database")).success
    assert node.pipeline.keyframe_count == 0 and node.pipeline.session != old_session
    assert node._fleet.member.registry.session == node.pipeline.session
    rig.peer.pub.publish(cloud(rig.peers[0], rig.model))
    assert wait_until(lambda: node.pipeline.keyframe_count == 1, 5)
    assert node._fleet.member.stats()["rejected"] == 0


def call(client) -> Trigger.Response:
    assert client.wait_for_service(timeout_sec=10)
    future = client.call_async(Trigger.Request())
    assert wait_until(future.done, 10)
    return future.result()


# ---------------------------------------------------------------------------------------------
# Three node processes


def _session_of(output: str) -> str:
    found = re.findall(r"fleet: robot \d+, session ([0-9a-f]{8})", output)
    assert found, output[-3000:]
    return found[-1]


class Fleet:
    """Node processes of robots 0, 1, 2 (namespaces /robot<r>) and the test's view of them."""

    def __init__(self, ctx: Context, tmp_path: Path) -> None:
        self.params = write_params(tmp_path / "params.yaml", diagnostics_period=0.2, **{
            "fleet.enable": True, "fleet.first_request_s": 0.5, "fleet.request_interval_s": 0.5,
            "fleet.idle_request_s": 1.0})
        self.procs: dict[int, subprocess.Popen] = {}
        self.cols = {r: Collector(f"/robot{r}/salad_loop_closure", context=ctx, image_topic=f"/robot{r}/image")
                     for r in range(3)}
        self.requester = Node("salad_test_fleet_requester", context=ctx)
        self.request_pub = self.requester.create_publisher(
            UInt32MultiArray, "/salad_fleet/requests", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.db0 = tmp_path / "map0"

    def start(self, r: int) -> None:
        """Robot ``r``'s node; robot 0 keeps its map in ``db0`` (saved on shutdown)."""
        extra = ("-p", f"database_path:={self.db0}", "-p", "save_on_shutdown:=true") if r == 0 else ()
        self.procs[r] = start_node("--params-file", str(self.params), "-r", f"__ns:=/robot{r}",
                                   "-p", f"robot_id:={r}", *extra)

    def feed(self, r: int, scenes: list[int], t0_ns: int) -> list[int]:
        assert self.cols[r].wait_for_node(60), f"robot {r} not discovered"
        return publish_sequence(self.cols[r], scenes, t0_ns=t0_ns, period=0.0)

    def diag(self, r: int, key: str) -> str | None:
        return (self.cols[r].last_diagnostics() or {}).get(key)

    def fleet_diag(self) -> list[dict[str, Any]]:
        """The robots' fleet.* and database values (for assertion messages)."""
        return [{k: v for k, v in (c.last_diagnostics() or {}).items() if k.startswith(("fleet", "data"))}
                for c in self.cols.values()]

    def close(self) -> None:
        for c in self.cols.values():
            c.destroy_node()
        self.requester.destroy_node()
        for r, proc in self.procs.items():
            if proc.poll() is None:
                proc.kill()
                out, err = proc.communicate()
                print(f"--- robot {r} (killed) ---\n{(out + err)[-4000:]}")  # shown when the test failed


def test_three_robots_find_inter_robot_loops_catch_up_and_a_restart_keeps_its_session(ctx, tmp_path):
    """Robots 0 and 1 (separate processes, namespaces /robot0 and /robot1, global fleet topics)
    see the same places: robot 1's candidates name robot 0's keyframes. Robot 2 starts late and
    gets every earlier keyframe through catch-up. Robot 0 restarts with its saved map: same
    session, it continues its keyframe numbers, and peers refuse its re-sent keyframes as
    duplicates instead of storing them twice."""
    fleet = Fleet(ctx, tmp_path)
    try:
        fleet.start(0)
        fleet.start(1)
        with Spinner(ctx, fleet.requester, *fleet.cols.values()):
            fleet.feed(0, [0, 1, 2], T0)
            assert wait_until(lambda: fleet.diag(1, "fleet.peer.0.keyframes") == "3", 30), fleet.fleet_diag()
            stamps = fleet.feed(1, [0, 1, 2], 1000 * SEC)
            col1 = fleet.cols[1]
            assert wait_until(lambda: len(col1.candidate_rows()) == 3, 10), col1.candidate_rows()
            for k, (q, rows) in enumerate(col1.candidate_rows()):
                assert q == stamps[k] and rows["match_robot_id"].tolist() == [0]
                assert rows["match_id"].tolist() == [k] and rows["query_id"].tolist() == [k]
                assert (int(rows["match_stamp_sec"][0]), int(rows["match_stamp_nanosec"][0])) == (100 + k, 0)
            assert not fleet.cols[0].candidate_rows()  # robot 0 was first everywhere

            # robot 2 joins late: catch-up brings it what robots 0 and 1 published before
            fleet.start(2)
            assert wait_until(lambda: diag_is(fleet.cols[2], fleet__peer__0__keyframes="3",
                                              fleet__peer__1__keyframes="3", database_size="6"), 40), fleet.fleet_diag()
            _restart_keeps_the_session(fleet)
        for r, proc in fleet.procs.items():
            code, seconds, output = stop(proc, signal.SIGINT)
            assert code == 0 and seconds < 5.0 and "Traceback" not in output, (r, output[-3000:])
            assert f"fleet: robot {r}, session" in output
            assert "refused a fleet" not in output  # the duplicates of broadcast answers are no warning
    finally:
        fleet.close()


def _restart_keeps_the_session(fleet: Fleet) -> None:
    """Robot 0 restarts with its saved map (its 3 keyframes and robot 1's 3): same session; what it
    re-sends is refused as duplicates; its next keyframe is number 3 of the same lineage."""
    code, _, output = stop(fleet.procs[0], signal.SIGTERM)
    assert code == 0 and "saved 6 keyframes" in output, output[-3000:]
    session = _session_of(output)
    fleet.start(0)
    assert wait_until(lambda: diag_is(fleet.cols[0], database_size="6", fleet__session=session), 40), fleet.fleet_diag()
    duplicates = {r: int(fleet.diag(r, "fleet.rejected.duplicate")) for r in range(3)}

    def refused_all() -> bool:  # robot 0 refuses robot 1's 3, robot 1 robot 0's 3, robot 2 both
        return all(int(fleet.diag(r, "fleet.rejected.duplicate")) >= duplicates[r] + need
                   for r, need in ((0, 3), (1, 3), (2, 6)))

    # A request of an unknown robot makes everyone re-send everything. Repeated: the restarted
    # robot's answers are lost to peers whose subscriptions it has not matched yet.
    for _ in range(10):
        fleet.request_pub.publish(UInt32MultiArray(data=CatchUpRequest.of(9, 1, []).to_data()))
        if wait_until(refused_all, 1.0):
            break
    assert refused_all(), fleet.fleet_diag()
    assert all(diag_is(fleet.cols[r], database_size="6", fleet__peer__0__sessions="1") for r in (1, 2))
    fleet.feed(0, [3], 2000 * SEC)
    for r in (1, 2):
        assert wait_until(lambda r=r: diag_is(fleet.cols[r], fleet__peer__0__keyframes="4",
                                              fleet__peer__0__sessions="1", database_size="7"), 10), fleet.fleet_diag()
