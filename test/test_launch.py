"""launch/loop_closure.launch.py: with launch_ros where it is importable (a ROS install), and
everywhere against minimal stand-ins of the few launch classes it uses."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from salad_ros.params import DEFAULT_NODE_NAME, load_params_yaml

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_FILE = ROOT / "launch" / "loop_closure.launch.py"
ARGUMENTS = {"image_topic", "params_file", "weights", "namespace", "use_sim_time", "robot_id", "fleet"}


def load_launch_module(name: str = "salad_launch_under_test") -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- stand-ins: record what the launch file builds ----------------------------------------------

class _Recorder:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration:
    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context[self.name]


@pytest.fixture
def stub_launch(monkeypatch):
    launch = types.ModuleType("launch")
    launch.LaunchDescription = type("LaunchDescription", (_Recorder,), {})
    actions = types.ModuleType("launch.actions")
    actions.DeclareLaunchArgument = type("DeclareLaunchArgument", (_Recorder,), {})
    actions.OpaqueFunction = type("OpaqueFunction", (_Recorder,), {})
    substitutions = types.ModuleType("launch.substitutions")
    substitutions.LaunchConfiguration = _LaunchConfiguration
    launch_ros = types.ModuleType("launch_ros")
    ros_actions = types.ModuleType("launch_ros.actions")
    ros_actions.Node = type("Node", (_Recorder,), {})
    for name, module in {"launch": launch, "launch.actions": actions, "launch.substitutions": substitutions,
                         "launch_ros": launch_ros, "launch_ros.actions": ros_actions}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return load_launch_module("salad_launch_stubbed")


def _run(module, **given):
    """Arguments as launch would resolve them (defaults + given), then the node action."""
    ld = module.generate_launch_description()
    entities = ld.args[0]
    declared = {e.args[0]: e.kwargs["default_value"] for e in entities if type(e).__name__ == "DeclareLaunchArgument"}
    context = {**declared, **given}
    opaque = [e for e in entities if type(e).__name__ == "OpaqueFunction"][0]
    (node,) = opaque.kwargs["function"](context)
    return declared, node.kwargs


def test_arguments_and_defaults(stub_launch):
    declared, node = _run(stub_launch)
    assert set(declared) == ARGUMENTS
    assert Path(declared["params_file"]) == ROOT / "config" / "salad_ros.yaml"
    assert node["package"] == "salad_ros" and node["executable"] == "loop_closure_node"
    assert node["name"] == DEFAULT_NODE_NAME and node["namespace"] == ""
    (params,) = node["parameters"]
    # the shipped file's values, handed over as a dict (namespace-proof), weights untouched
    assert params == {**load_params_yaml(ROOT / "config" / "salad_ros.yaml"), "use_sim_time": False}
    assert dict(node["remappings"]) == {"image": "image"}  # compressed: the node reads <image>/compressed
    assert float(node["sigkill_timeout"]) >= 30  # the save on shutdown is not cut short


def test_arguments_reach_the_node(stub_launch, tmp_path):
    params_file = tmp_path / "p.yaml"
    params_file.write_text(f"{DEFAULT_NODE_NAME}:\n  ros__parameters:\n    image_size: 224\n"
                           "    detector:\n      min_score: 0.6\n")
    _, node = _run(stub_launch, image_topic="/cam/image_raw", params_file=str(params_file),
                   weights="/w/dino_salad.ckpt", namespace="robot1", use_sim_time="true", robot_id="1", fleet="true")
    assert node["namespace"] == "robot1"
    assert node["parameters"] == [{"image_size": 224, "detector.min_score": 0.6,
                                   "weights": "/w/dino_salad.ckpt", "use_sim_time": True, "robot_id": 1,
                                   "fleet.enable": True}]
    assert dict(node["remappings"]) == {"image": "/cam/image_raw"}


def test_generate_launch_description_with_launch_ros():
    pytest.importorskip("launch_ros", reason="launch_ros is not importable here (it comes with a ROS install; "
                                             "the stand-in tests above cover the file's logic)")
    from launch.actions import DeclareLaunchArgument

    from launch import LaunchContext, LaunchDescription

    module = load_launch_module()
    ld = module.generate_launch_description()
    assert isinstance(ld, LaunchDescription)
    assert {a.name for a in ld.entities if isinstance(a, DeclareLaunchArgument)} == ARGUMENTS
    context = LaunchContext()
    for arg in ld.get_launch_arguments():
        context.launch_configurations[arg.name] = arg.default_value[0].perform(context) if arg.default_value else ""
    context.launch_configurations["weights"] = "/w/dino_salad.ckpt"
    (node,) = module._node(context)
    from launch_ros.actions import Node

    assert isinstance(node, Node)
