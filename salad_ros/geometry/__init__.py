"""Two-view geometry without ROS: rotations, camera models, pose features and pose solvers."""
