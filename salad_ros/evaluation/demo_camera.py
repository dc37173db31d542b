"""The demo camera's intrinsics and exact depth: ``/camera/camera_info`` and an aligned depth image.

The demo renderer (:class:`~salad_ros.evaluation.demo_bag.Scene`) is an ideal pinhole: pixel
``(u, v)`` (ROS convention, centres at integers) sees the ray ``((u + 0.5 - w/2) / f,
(v + 0.5 - h/2) / f, 1)`` in the camera optical frame with ``f = (w/2) / tan(hfov/2)``, so
``K = [[f, 0, w/2 - 0.5], [0, f, h/2 - 0.5], [0, 0, 1]]`` and no distortion. Its depth at a
pixel centre is exact: the forward distance to the wall the column's ray hits when the pixel
sees a wall (``cam_h - y * depth`` within the wall's height), ``cam_h / y`` on the street, and
nothing (0 / NaN) for the sky. The colour is rendered supersampled and area-averaged, so at wall
edges colour and depth differ by a blend; the pose features reject keypoints on such edges.

The odometry of the demo is the camera's position with its heading (x forward, z up): the
camera optical frame sits in that base frame with no offset, turned by :data:`CAMERA_TO_BASE`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..io.bags import default_typestore, header

CAMERA_INFO_TOPIC = "/camera/camera_info"
DEPTH_TOPIC = "/camera/depth/image_raw"
#: The optical frame (x right, y down, z forward) in the odometry's base frame (x forward, z up):
#: ``camera_to_base`` for the demo, ``x y z qx qy qz qw``.
CAMERA_TO_BASE = "0 0 0 -0.5 0.5 -0.5 0.5"
HFOV_DEG = 90.0
#: Depth encodings the demo writes: 16UC1 millimetres (what most RGB-D drivers send) or 32FC1 metres.
DEPTH_ENCODINGS = ("16UC1", "32FC1", "none")


def camera_matrix(size: tuple[int, int], hfov_deg: float = HFOV_DEG) -> np.ndarray:
    """K of the demo camera for an image of ``size = (width, height)``."""
    w, h = size
    f = (w / 2) / math.tan(math.radians(hfov_deg) / 2)
    return np.array([[f, 0.0, w / 2 - 0.5], [0.0, f, h / 2 - 0.5], [0.0, 0.0, 1.0]])


def render_depth(scene: Any, x: float, y: float, yaw: float, cam_h: float, size: tuple[int, int],
                 hfov_deg: float = HFOV_DEG) -> np.ndarray:
    """Depth (float32 metres along the optical axis, NaN = sky) at the pixel centres of the
    image :meth:`Scene.render` draws from the same pose."""
    w, h = size
    f = (w / 2) / math.tan(math.radians(hfov_deg) / 2)
    xn = (np.arange(w) + 0.5 - w / 2) / f
    yn = ((np.arange(h) + 0.5 - h / 2) / f).astype(np.float32)
    fwd = np.array([math.cos(yaw), math.sin(yaw)])
    right = np.array([math.sin(yaw), -math.cos(yaw)])
    dirs = fwd[None, :] + xn[:, None] * right[None, :]
    hit, depth, has_wall, _ = scene._cast_rays(np.array([x, y]), dirs)
    hgt = cam_h - yn[:, None] * depth[None, :]
    is_wall = has_wall[None, :] & (hgt >= 0) & (hgt <= scene.heights[hit].astype(np.float32)[None, :])
    floor = np.where(yn > 0, cam_h / np.maximum(yn, 1e-6), np.nan).astype(np.float32)
    return np.where(is_wall, depth[None, :], floor[:, None]).astype(np.float32)


def camera_info_msg(k: np.ndarray, size: tuple[int, int], stamp_ns: int, frame_id: str = "camera") -> Any:
    """sensor_msgs/CameraInfo (rosbags) of a distortion-free pinhole camera."""
    t = default_typestore().types
    p = np.zeros((3, 4))
    p[:, :3] = k
    return t["sensor_msgs/msg/CameraInfo"](
        header=header(stamp_ns, frame_id), height=size[1], width=size[0], distortion_model="plumb_bob",
        d=np.zeros(5), k=np.asarray(k, np.float64).ravel(), r=np.eye(3).ravel(), p=p.ravel(), binning_x=0,
        binning_y=0, roi=t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                              do_rectify=False))


def depth_image_msg(depth: np.ndarray, stamp_ns: int, encoding: str = "16UC1", frame_id: str = "camera") -> Any:
    """sensor_msgs/Image of depth in metres: ``16UC1`` millimetres (0 = none; beyond 65.5 m
    also 0) or ``32FC1`` metres (NaN = none)."""
    if encoding == "16UC1":
        mm = np.rint(np.nan_to_num(depth, nan=0.0) * 1000.0)
        arr = np.where((mm > 0) & (mm <= 65535), mm, 0).astype("<u2")
    elif encoding == "32FC1":
        arr = np.asarray(depth, "<f4")
    else:
        raise ValueError(f"depth encoding must be 16UC1 or 32FC1, got {encoding!r}")
    return default_typestore().types["sensor_msgs/msg/Image"](
        header=header(stamp_ns, frame_id), height=arr.shape[0], width=arr.shape[1], encoding=encoding,
        is_bigendian=0, step=arr.shape[1] * arr.itemsize, data=np.frombuffer(arr.tobytes(), np.uint8))
