"""Keep DDS traffic of scripts and tests on this machine.

Call :func:`ensure_local_ros_env` before the first ``import rclpy`` in any process that may start
ROS (bench scripts, test helper processes). It imports nothing from ROS itself.
"""

from __future__ import annotations

import os
import random

#: Set to 1 to keep an inherited ``ROS_DOMAIN_ID`` (e.g. to watch a bench run from another shell).
KEEP_DOMAIN_FLAG = "SALAD_KEEP_DOMAIN"


def ensure_local_ros_env() -> dict[str, str]:
    """Restrict discovery to localhost and pick a random ``ROS_DOMAIN_ID`` (1-100).

    An inherited domain is kept only when ``SALAD_KEEP_DOMAIN=1`` or when the parent already
    restricted discovery to localhost (a test run or ``scripts/ros_env.sh`` chose the domain, and
    child processes must share it to see each other). Returns the two values in effect.
    """
    inherited_local = os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") == "LOCALHOST"
    keep = os.environ.get(KEEP_DOMAIN_FLAG) == "1" or inherited_local
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    if not (keep and os.environ.get("ROS_DOMAIN_ID")):
        os.environ["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 100))
    return {k: os.environ[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID")}
