"""Parameters of multi-robot operation: the robot's fleet id (``robot_id``) and ``fleet.*``.

``robot_id`` is a plain parameter because it names the robot's own keyframes in its map even
with the fleet off (a saved map remembers its robot). ``fleet.*`` say whether and how the node
shares keyframes with its peers; with ``fleet.enable`` false nothing is published or received
and the node behaves exactly as a single robot.
"""

from __future__ import annotations

from dataclasses import dataclass

from salad_ros.params import ConfigError, check_fields, param

from .wire import MAX_MESSAGE_BYTES

PREFIX = "fleet."


@dataclass
class RobotSettings:
    """The robot's identity in a fleet (flat parameter ``robot_id``)."""

    robot_id: int = param(0, "This robot's id in the fleet: tags its keyframes in the map and on the fleet topic; "
                          "every robot of a fleet needs its own", range=(0, (1 << 32) - 2))

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class FleetConfig:
    """Keyframe sharing between robots over ROS 2 (parameters ``fleet.*``)."""

    enable: bool = param(False, "Share keyframes with the other robots of the fleet and find loops between robots "
                         "(false: single-robot behaviour)")
    topic: str = param("/salad_fleet/keyframes", "Global topic every robot publishes its keyframes on and "
                       "subscribes to (sensor_msgs/PointCloud2, one row per keyframe)")
    request_topic: str = param("/salad_fleet/requests", "Global topic of catch-up requests: a robot that lacks "
                               "keyframes asks, their owners re-publish them (std_msgs/UInt32MultiArray)")
    share_features: bool = param(True, "Send each keyframe's local features (and their depth) with its descriptor, "
                                 "so peers can verify loops and estimate relative poses")
    max_features: int = param(500, "Local features sent per keyframe at most (fewer when max_message_bytes binds)",
                              range=(0, 10000))
    max_message_bytes: int = param(MAX_MESSAGE_BYTES, "Largest fleet message in bytes (serialized); features are "
                                   "dropped until a keyframe fits", range=(4096, 1 << 20))
    max_bytes_per_s: float = param(200_000.0, "Bandwidth of re-publishing for catch-up [bytes/s]; live keyframes "
                                   "always go out and count against it", range=(1000.0, 1e9))
    catch_up: bool = param(True, "Ask peers for the keyframes this robot lacks (at start, after gaps) and answer "
                           "their requests")
    first_request_s: float = param(2.0, "Seconds after start before the first catch-up request (discovery)",
                                   range=(0.0, 3600.0))
    request_interval_s: float = param(5.0, "Seconds between catch-up requests while keyframes are missing",
                                      range=(0.5, 3600.0))
    idle_request_s: float = param(60.0, "Seconds between catch-up requests otherwise (finds robots never heard "
                                  "from; 0 = only at start and after gaps)", range=(0.0, 86400.0))
    queue_depth: int = param(100, "Reliable QoS history depth of the fleet topics", range=(1, 10000))

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        """Cross-field rules; raises :class:`ConfigError` naming the parameter."""
        for name in ("topic", "request_topic"):
            value = getattr(self, name)
            if self.enable and not value.startswith("/"):
                raise ConfigError(f"parameter '{PREFIX}{name}': must be a global name (start with '/') so that "
                                  f"every robot's node meets there, got {value!r}")
        if self.enable and self.topic == self.request_topic:
            raise ConfigError(f"parameter '{PREFIX}request_topic': must differ from {PREFIX}topic")
