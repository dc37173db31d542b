"""salad_ros: visual loop-closure detection with DINOv2 SALAD for ROS 2.

The core (``salad_ros.model``, ``database``, ``detector``, ``evaluation``) imports no rclpy;
only ``salad_ros.node`` does.
"""

__version__ = "0.1.0"
