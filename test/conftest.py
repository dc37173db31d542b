"""Shared test setup.

Every process that starts rclpy during the tests keeps DDS discovery on loopback and uses a
random domain, so parallel runs don't see each other and nothing multicasts onto the network.
Set here, before any test imports rclpy; child processes inherit it.
"""

import os
import random

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 100))
os.environ.setdefault("OMP_NUM_THREADS", "2")
