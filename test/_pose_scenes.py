"""Test scenes with exact geometry for the relative-pose tests (no network, no files but test/data).

* :func:`render` ray-casts textured rectangles into a pinhole (optionally distorted) camera:
  colour and exact depth at pixel centres;
* :func:`room` is a few planes at different depths and orientations;
* :func:`rotated_view` is a camera turning about its centre in front of a photograph (an exact
  homography K R K^-1: the scene is at infinity);
* :func:`aloe_stereo` is a real stereo pair with ground-truth disparity;
* distortion is written here from the model equations (checked against OpenCV's projectPoints
  in the tests), so the rendered images do not depend on the code under test.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import cv2
import numpy as np

DATA = os.path.join(os.path.dirname(__file__), "data")
SIZE = (640, 480)
K = np.array([[500.0, 0.0, 319.5], [0.0, 500.0, 239.5], [0.0, 0.0, 1.0]])


def load_rgb(name: str) -> np.ndarray:
    bgr = cv2.imread(os.path.join(DATA, name), cv2.IMREAD_COLOR)
    assert bgr is not None, name
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def rot(rx: float = 0.0, ry: float = 0.0, rz: float = 0.0) -> np.ndarray:
    """Rotation from x-y-z angles in degrees (applied z first)."""
    return cv2.Rodrigues(np.radians([rx, 0, 0]))[0] @ cv2.Rodrigues(np.radians([0, ry, 0]))[0] @ \
        cv2.Rodrigues(np.radians([0, 0, rz]))[0]


def pose(r: np.ndarray, t: tuple[float, float, float]) -> np.ndarray:
    """4x4 world <- camera."""
    out = np.eye(4)
    out[:3, :3] = r
    out[:3, 3] = t
    return out


def relative(world_from_query: np.ndarray, world_from_match: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth (R, t) with X_match = R X_query + t."""
    m = np.linalg.inv(world_from_match) @ world_from_query
    return m[:3, :3], m[:3, 3]


@dataclass
class Plane:
    """A textured rectangle: corner ``origin``, unit edge directions ``u``, ``v``, size in metres."""

    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    width: float
    height: float
    texture: np.ndarray


def plane(center: tuple[float, float, float], yaw_deg: float, width: float, height: float, texture: np.ndarray,
          pitch_deg: float = 0.0) -> Plane:
    """A plane facing the -z direction (towards a camera at the origin), turned by yaw about y and pitch about x."""
    r = rot(pitch_deg, yaw_deg, 0.0)
    u, v = r @ np.array([1.0, 0, 0]), r @ np.array([0, 1.0, 0])
    origin = np.asarray(center, np.float64) - 0.5 * width * u - 0.5 * height * v
    return Plane(origin, u, v, width, height, texture)


def pinhole_rays(k: np.ndarray):
    def rays(px: np.ndarray) -> np.ndarray:
        return np.column_stack([(px[:, 0] - k[0, 2]) / k[0, 0], (px[:, 1] - k[1, 2]) / k[1, 1]])
    return rays


def render(planes: list[Plane], world_from_cam: np.ndarray, k: np.ndarray = K, size: tuple[int, int] = SIZE,
           rays=None, supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8, depth float32 metres with NaN where no plane is hit) of a camera at ``world_from_cam``.

    ``rays`` maps N x 2 pixel coordinates to N x 2 normalised undistorted coordinates (default
    the pinhole K). Colour is rendered at ``supersample`` x resolution and area-averaged (1 is
    enough for textures not much finer than their image and keeps the tests fast)."""
    rays = rays or pinhole_rays(k)
    w, h = size
    colour = _cast(planes, world_from_cam, rays, w, h, supersample, want_colour=True)[0]
    depth = _cast(planes, world_from_cam, rays, w, h, 1, want_colour=False)[1]
    if supersample > 1:
        colour = cv2.resize(colour, (w, h), interpolation=cv2.INTER_AREA)
    return colour, depth


def _cast(planes, world_from_cam, rays, w, h, s, want_colour):
    uu, vv = np.meshgrid((np.arange(w * s) + 0.5) / s - 0.5, (np.arange(h * s) + 0.5) / s - 0.5)
    xy = rays(np.stack([uu.ravel(), vv.ravel()], axis=1))
    r, c = world_from_cam[:3, :3], world_from_cam[:3, 3]
    d = (xy @ r[:, :2].T + r[:, 2]).astype(np.float32)  # world direction of the camera ray (x, y, 1)
    best = np.full(len(d), np.inf, np.float32)
    colour = np.zeros((len(d), 3), np.float32)
    for p in planes:
        n = np.cross(p.u, p.v)
        co = c - p.origin
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = np.float32(-(co @ n)) / (d @ n.astype(np.float32))
        # the hit point relative to the corner is co + lam d; its plane coordinates are a, b
        a = np.float32(co @ p.u) + lam * (d @ p.u.astype(np.float32))
        b = np.float32(co @ p.v) + lam * (d @ p.v.astype(np.float32))
        ok = (lam > 0) & (a >= 0) & (a <= p.width) & (b >= 0) & (b <= p.height) & (lam < best)
        best[ok] = lam[ok]
        if want_colour and ok.any():
            th, tw = p.texture.shape[:2]
            colour[ok] = _sample(p.texture, a[ok] / p.width * tw - 0.5, b[ok] / p.height * th - 0.5)
    depth = np.where(np.isfinite(best), best, np.nan).astype(np.float32).reshape(h * s, w * s)
    return np.clip(colour, 0, 255).astype(np.uint8).reshape(h * s, w * s, 3), depth


def _sample(texture: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear texture look-up at N positions (remap wants maps under 32767 rows: fold into 1024 columns)."""
    n = len(x)
    rows = -(-n // 1024)
    mx = np.zeros(rows * 1024, np.float32)
    my = np.zeros(rows * 1024, np.float32)
    mx[:n], my[:n] = x, y
    out = cv2.remap(texture, mx.reshape(rows, 1024), my.reshape(rows, 1024), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REFLECT)
    return out.reshape(-1, 3)[:n]


def room(textures: list[np.ndarray]) -> list[Plane]:
    """Planes at 2.5-9 m in front of a camera at the origin looking along +z: a back wall, two
    slanted side walls, a floor, and two boxes' fronts at other depths and angles."""
    t = [textures[i % len(textures)] for i in range(6)]
    return [
        plane((0.0, -0.5, 9.0), 0.0, 16.0, 9.0, t[0]),
        plane((-4.5, -0.5, 5.5), -70.0, 8.0, 9.0, t[1]),
        plane((4.5, -0.5, 5.5), 70.0, 8.0, 9.0, t[2]),
        plane((0.0, 1.6, 5.0), 0.0, 12.0, 10.0, t[3], pitch_deg=90.0),
        plane((-1.2, 0.2, 3.0), 25.0, 1.6, 1.4, t[4]),
        plane((1.4, -0.3, 4.2), -30.0, 1.8, 2.0, t[5]),
    ]


def rotated_view(photo: np.ndarray, k_photo: np.ndarray, r: np.ndarray, k: np.ndarray = K,
                 size: tuple[int, int] = SIZE) -> np.ndarray:
    """The view of a camera (``k``) turned by ``r`` (ray_view = r ray_photo) about the centre of the
    camera that took ``photo`` (``k_photo``): the exact homography k r k_photo^-1."""
    h = k @ r @ np.linalg.inv(k_photo)
    return cv2.warpPerspective(photo, h, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


# --- distortion, forward from the model equations and inverted by iteration ------------------

def distort_plumb_bob(xy: np.ndarray, d: np.ndarray) -> np.ndarray:
    """OpenCV's radial-tangential model (k1, k2, p1, p2, k3) on normalised points."""
    k1, k2, p1, p2, k3 = (list(d) + [0.0] * 5)[:5]
    x, y = xy[:, 0], xy[:, 1]
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
    return np.column_stack([x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                            y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y])


def distort_equidistant(xy: np.ndarray, d: np.ndarray) -> np.ndarray:
    """OpenCV's fisheye model (k1..k4) on normalised points: theta_d = theta (1 + k1 theta^2 + ...)."""
    r = np.linalg.norm(xy, axis=1)
    theta = np.arctan(r)
    theta_d = theta * (1 + d[0] * theta ** 2 + d[1] * theta ** 4 + d[2] * theta ** 6 + d[3] * theta ** 8)
    scale = np.where(r > 1e-12, theta_d / np.maximum(r, 1e-12), 1.0)
    return xy * scale[:, None]


def distorted_rays(k: np.ndarray, d: np.ndarray, model: str):
    """Pixel -> normalised undistorted coordinates for a distorted camera (fixed-point inversion)."""
    forward = distort_equidistant if model == "equidistant" else distort_plumb_bob

    def rays(px: np.ndarray) -> np.ndarray:
        target = pinhole_rays(k)(px)
        x = target.copy()
        for _ in range(100):  # mild distortion: the fixed-point iteration contracts quickly
            step = target - forward(x, d)
            x = x + step
            if np.abs(step).max() < 1e-12:
                break
        return x
    return rays


def rotation_error_deg(r_est: np.ndarray, r_true: np.ndarray) -> float:
    c = (np.trace(r_est.T @ r_true) - 1) / 2
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def direction_error_deg(t_est: np.ndarray, t_true: np.ndarray) -> float:
    c = float(t_est @ t_true) / (np.linalg.norm(t_est) * np.linalg.norm(t_true))
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def real_room() -> list[Plane]:
    """:func:`room` with the real photographs on the walls (the street, the aloe, the street
    mirrored so its features do not repeat) and generated texture on the floor and box fronts."""
    from _db_helpers import textured_scene

    street, aloe = load_rgb("leuven.jpg"), load_rgb("aloe_left.jpg")
    return room([street, aloe, street[:, ::-1].copy(), textured_scene(3), textured_scene(4), aloe[:, ::-1].copy()])


#: Loop-closure-like view pairs: (query angles deg, query position m, match angles, match position)
ROOM_CASES = {
    "sideways": ((0, 8, 0), (0.4, 0.0, 0.3), (0, 0, 0), (0.0, 0.0, 0.0)),
    "wide": ((0, -6, 0), (-0.5, 0.0, 0.1), (0, 3, 0), (0.2, 0.0, 0.0)),
    "crossing": ((-3, 5, 2), (0.2, -0.1, -0.5), (2, -6, 0), (-0.3, 0.05, 0.3)),
}


def aloe_stereo(f_ratio: float = 0.9, baseline: float = 0.3):
    """The real aloe stereo pair: (left RGB, right RGB, K, left depth in metres, baseline).

    Rectified, so with any shared pinhole K the left depth Z = f B / d (d = ground-truth
    disparity) reproduces every correspondence with R = I and the right camera at +B on x:
    X_right = X_left - (B, 0, 0). See test/data/README.md."""
    left, right = load_rgb("aloe_left.jpg"), load_rgb("aloe_right.jpg")
    disp = cv2.imread(os.path.join(DATA, "aloe_disparity_x3.png"), cv2.IMREAD_UNCHANGED).astype(np.float32) / 3.0
    h, w = left.shape[:2]
    f = f_ratio * w
    k = np.array([[f, 0.0, (w - 1) / 2], [0.0, f, (h - 1) / 2], [0.0, 0.0, 1.0]])
    depth = np.where(disp > 0, f * baseline / np.maximum(disp, 1e-6), np.nan).astype(np.float32)
    return left, right, k, depth, baseline
