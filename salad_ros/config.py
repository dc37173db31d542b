"""All parameters of the loop-closure pipeline in one typed tree.

``SaladConfig`` is what ``config/salad_ros.yaml`` holds: model and node settings as flat names
(``weights``, ``backbone``, ``image_size``, ...) and the keyframe database and detector under
``database.*`` and ``detector.*``. The node declares exactly these ROS parameters; offline
replay reads the same file, so both run the same detector with the same settings.

The mechanism behind it (``param``, ``ConfigError``, reading and checking values) is
:mod:`salad_ros.params`; ``ConfigError``, ``DEFAULT_NODE_NAME`` and ``load_params_yaml`` are
re-exported here for users of the schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backends import ModelConfig
from .database import DatabaseConfig
from .detector import DetectorConfig
from .fleet.config import FleetConfig, RobotSettings
from .loop_pose import PoseSettings
from .params import DEFAULT_NODE_NAME, ConfigError, check_fields, from_flat_dict, inline, load_params_yaml, nested, param

__all__ = ["DEFAULT_NODE_NAME", "ConfigError", "NodeConfig", "SaladConfig", "load_config", "load_params_yaml"]


@dataclass
class NodeConfig:
    """Settings of the ROS layer (ignored by offline replay)."""

    image_transport: str = param(
        "raw", "Subscribe to sensor_msgs/Image on 'image' (raw) or CompressedImage on '<image>/compressed' "
        "(compressed; follows a remapping of 'image', as image_transport does)",
        choices=("raw", "compressed"),
    )
    reliable_qos: bool = param(False, "Reliable image subscription instead of sensor-data QoS (best effort, depth 1); "
                                      "qos_overrides.<topic>.subscription.* win over it")
    max_image_pixels: int = param(
        25_000_000, "Largest image accepted, in pixels (width x height; 25 MP = 6000x4000 with margin); larger "
        "frames are refused from their header before decoding and counted as bad_frames.too_large",
        range=(1, 1 << 30),
    )
    pose_source: str = param(
        "none", "Keyframe poses from nav_msgs/Odometry on 'odom', geometry_msgs/PoseStamped on 'pose', or none",
        choices=("none", "odometry", "pose"),
    )
    pose_tolerance: float = param(0.1, "Largest stamp difference (s) between an image and the pose used for it",
                                  range=(0.0, 10.0))
    database_path: str = param("", "Keyframe database directory: loaded at start if present, target of save")
    save_on_shutdown: bool = param(False, "Save the database to database_path when the node shuts down")
    diagnostics_period: float = param(1.0, "Seconds between /diagnostics messages", range=(0.1, 60.0))

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        if self.save_on_shutdown and not self.database_path:
            raise ConfigError("parameter 'save_on_shutdown': true needs a 'database_path' to save to")


@dataclass
class SaladConfig:
    """Every parameter of the node and of offline replay."""

    model: ModelConfig = inline(ModelConfig)
    robot: RobotSettings = inline(RobotSettings)  # robot_id (salad_ros.fleet.config)
    node: NodeConfig = inline(NodeConfig)
    pose: PoseSettings = inline(PoseSettings)  # relative pose of loop candidates (salad_ros.loop_pose)
    database: DatabaseConfig = nested(DatabaseConfig)
    detector: DetectorConfig = nested(DetectorConfig)
    fleet: FleetConfig = nested(FleetConfig)  # multi-robot loop closure (salad_ros.fleet)


def load_config(
    params_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    node_name: str = DEFAULT_NODE_NAME,
) -> SaladConfig:
    """Read ``params_file`` (a ROS 2 parameters YAML) and apply ``overrides`` (dotted names)."""
    values: dict[str, Any] = dict(load_params_yaml(params_file, node_name)) if params_file else {}
    values.update(overrides or {})
    return from_flat_dict(SaladConfig, values)
