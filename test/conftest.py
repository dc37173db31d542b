"""Shared test setup.

Every process that starts rclpy during the tests keeps DDS discovery on loopback and uses a
random domain, so parallel runs don't see each other and nothing multicasts onto the network.
Set here, before any test imports rclpy; child processes inherit it.
"""

import os
import random

import pytest

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 100))
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="module")
def ctx():
    """An rclpy context of the test module's own, initialised and shut down around it."""
    import rclpy  # only the ROS tests pay for importing rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)
