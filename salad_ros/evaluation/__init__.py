"""Offline evaluation: rosbag replay through the loop-closure pipeline, metrics, plots, demo data.

``salad_replay`` (:mod:`.replay`) and ``salad_demo_bag`` (:mod:`.demo_bag`) are the entry
points; :mod:`.metrics` and :mod:`.plots` work on plain arrays. Nothing here imports rclpy.
"""
