"""config/salad_ros.yaml: every parameter, each with a comment, defaults, loadable by both the
offline loader and rcl."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from salad_ros.config import SaladConfig, load_config
from salad_ros.params import DEFAULT_NODE_NAME, ConfigError, iter_specs, load_params_yaml, to_flat_dict

CONFIG = Path(__file__).resolve().parent.parent / "config" / "salad_ros.yaml"
SPECS = {s.name: s for s in iter_specs(SaladConfig)}


def test_yaml_holds_every_parameter_and_nothing_else():
    data = yaml.safe_load(CONFIG.read_text())
    assert list(data) == [DEFAULT_NODE_NAME] and list(data[DEFAULT_NODE_NAME]) == ["ros__parameters"]
    flat = load_params_yaml(CONFIG)
    assert sorted(flat) == sorted(SPECS)


def test_yaml_values_are_the_defaults():
    flat = load_params_yaml(CONFIG)
    for name, value in flat.items():
        default = SPECS[name].default
        assert value == default and type(value) is type(default), name  # 0.0 not 0 for floats


def test_every_parameter_has_a_comment():
    lines = CONFIG.read_text().splitlines()
    leaf = re.compile(r"^(\s+)(\w+):\s*\S")  # "key: value" (sections have no value)
    for i, line in enumerate(lines):
        m = leaf.match(line)
        if m:
            block, j = [], i - 1
            while lines[j].strip().startswith("#"):
                block.append(lines[j].strip("# "))
                j -= 1
            assert len(" ".join(block)) > 10, f"no comment above '{m.group(2)}'"


def test_loads_with_load_config():
    with pytest.raises(ConfigError, match="parameter 'weights' is empty"):
        load_config(CONFIG)  # shipped without weights: the node refuses until they are given
    cfg = load_config(CONFIG, {"weights": "dino_salad.ckpt"})
    expected = {name: s.default for name, s in SPECS.items()} | {"weights": "dino_salad.ckpt"}
    assert to_flat_dict(cfg) == expected


def test_rcl_reads_the_same_values_and_types():
    """The ROS side parses the file itself (rcl_yaml_param_parser): same names, values, types."""
    rclpy = pytest.importorskip("rclpy", reason="rclpy not installed: the ROS side of the params file is untested")
    from rclpy.context import Context
    from rclpy.node import Node

    context = Context()
    rclpy.init(context=context, args=["--ros-args", "--params-file", str(CONFIG)])
    try:
        node = Node(DEFAULT_NODE_NAME, context=context)
        overrides = {n: p.value for n, p in node._parameter_overrides.items()}
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    ours = load_params_yaml(CONFIG)
    assert overrides == ours
    assert all(type(overrides[n]) is type(ours[n]) for n in ours)
