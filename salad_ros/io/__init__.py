"""Input/output without ROS: image message decoding and rosbag reading."""
