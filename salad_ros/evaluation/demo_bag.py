"""``salad_demo_bag``: write a rosbag2 of a camera driving two laps around a textured city block.

The scene is a rectangular block of buildings inside a ring of buildings, a street between
them. Every facade has its own procedural texture (colour, window grid, door, cornices, a sign
with lettering, stains) and height, so places are distinguishable; the street has lane paint,
kerbs and manholes. A ray-casting renderer draws walls, street and sky in true perspective.

Lap 1 is driven at noon in the middle of the street. Lap 2 is driven at dusk (lower, warmer,
other-side sun, darker, noisier), a little slower (frames fall between lap 1's), with the
camera shifted sideways by up to 1.2 m, 10 cm higher and yawing by a few degrees: the same
places seen again under a different light and a small viewpoint change, which is what a loop
detector must recognise. Ground truth is nav_msgs/Odometry at 20 Hz on ``/odom`` (the camera's
position, heading as a z rotation), images are sensor_msgs/Image rgb8 on ``/camera/image_raw``
(or CompressedImage JPEG on ``/camera/image_raw/compressed`` with ``--compressed``), with the
camera's intrinsics on ``/camera/camera_info`` and its exact depth, aligned to the image, on
``/camera/depth/image_raw`` (16UC1 mm by default; :mod:`.demo_camera`).

With ``--robot N`` (N >= 1) the bag is another robot's drive through the same city, in the same
world frame: it starts elsewhere on the route, drives its first lap the other way round
(clockwise), turns and drives its second lap counter-clockwise like robot 0, under other times
of day (morning, overcast, evening), in other lanes and at another camera height, its stamps
``N * 0.25 s`` after robot 0's. Only its second lap sees robot 0's places from robot 0's
direction, which is what lets a place-recognition descriptor find loops between the robots;
:mod:`.demo_drive` has the details. Robot 0 (the default) is the bag described above.

Everything is seeded: the same arguments give byte-identical messages.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..database import Pose
from ..io.bags import BagWriter, compressed_image_msg, image_msg, odometry_msg
from ..io.trajectory import write_tum
from .demo_camera import (
    CAMERA_INFO_TOPIC,
    CAMERA_TO_BASE,
    DEPTH_ENCODINGS,
    DEPTH_TOPIC,
    camera_info_msg,
    camera_matrix,
    depth_image_msg,
    render_depth,
)
from .demo_drive import DAY, DUSK, SPEEDS, Drive, Light
from .demo_facades import WALL_PX_PER_M, make_facade, smooth_noise

__all__ = [  # DAY, DUSK, Drive, Light and SPEEDS live in .demo_drive and are importable from here as before
    "BLOCK_HALF", "COMPRESSED_TOPIC", "DAY", "DUSK", "IMAGE_TOPIC", "ODOM_TOPIC", "SPEEDS", "STREET", "Drive", "Light",
    "Scene", "generate", "load_photos", "main", "make_clouds", "make_street",
]

IMAGE_TOPIC = "/camera/image_raw"
COMPRESSED_TOPIC = "/camera/image_raw/compressed"
ODOM_TOPIC = "/odom"

# Scene geometry [m]: inner block half-sizes, street width, corner radius of the driving line.
BLOCK_HALF = (15.0, 9.0)
STREET = 8.0
FLOOR_PX_PER_M = 40.0
ODOM_RATE_HZ = 20.0


@dataclass
class Wall:
    a: np.ndarray  # start (x, y)
    b: np.ndarray  # end
    height: float
    texture_row: int  # first atlas row of its texture
    normal: np.ndarray  # unit, pointing into the street


class Scene:
    """Facade segments with their textures in one atlas, a street texture and a sky panorama."""

    def __init__(self, seed: int, photos: Sequence[np.ndarray] = ()) -> None:
        rng = np.random.default_rng(seed)
        bx, by = BLOCK_HALF
        inner = [(-bx, -by), (bx, -by), (bx, by), (-bx, by)]
        ox, oy = bx + STREET, by + STREET
        outer = [(-ox, -oy), (ox, -oy), (ox, oy), (-ox, oy)]
        self.walls: list[Wall] = []
        textures: list[np.ndarray] = []
        for ring, inward in ((inner, False), (outer, True)):
            for k in range(4):
                a, b = np.array(ring[k], float), np.array(ring[(k + 1) % 4], float)
                length = float(np.linalg.norm(b - a))
                n_facades = max(1, round(length / rng.uniform(5.0, 7.5)))
                # Jittered cut points: facades of unequal width, none narrower than ~3 m.
                cuts = np.clip((np.arange(1, n_facades) + rng.uniform(-0.3, 0.3, n_facades - 1)) / n_facades, 0, 1)
                bounds = np.r_[0.0, cuts, 1.0]
                d = (b - a) / length
                # Both rings run counter-clockwise, so the left normal points into each ring: into
                # the street for the outer ring, into the block for the inner one.
                normal = np.array([-d[1], d[0]]) if inward else np.array([d[1], -d[0]])
                for s0, s1 in zip(bounds[:-1], bounds[1:], strict=True):
                    p, q = a + s0 * (b - a), a + s1 * (b - a)
                    height = float(rng.uniform(4.5, 10.0))
                    w_px = int(round(np.linalg.norm(q - p) * WALL_PX_PER_M))
                    h_px = int(round(height * WALL_PX_PER_M))
                    photo = photos[len(textures) % len(photos)] if photos else None
                    tex = make_facade(rng, w_px, h_px, photo)
                    # Texture u runs a->b, which is right-to-left seen from the street on the
                    # outer ring: mirror those so lettering reads correctly.
                    textures.append(np.ascontiguousarray(tex[:, ::-1]) if inward else tex)
                    self.walls.append(Wall(p, q, height, 0, normal))
        # Stack the textures into one atlas (2 px gaps so bilinear lookups don't bleed).
        width = max(t.shape[1] for t in textures)
        rows, row = [], 0
        for wall, tex in zip(self.walls, textures, strict=True):
            wall.texture_row = row
            pad = np.zeros((tex.shape[0] + 2, width, 3), np.uint8)
            pad[: tex.shape[0], : tex.shape[1]] = tex
            rows.append(pad)
            row += pad.shape[0]
        self.atlas = np.concatenate(rows, axis=0)
        self.a = np.array([w.a for w in self.walls])
        self.b = np.array([w.b for w in self.walls])
        self.heights = np.array([w.height for w in self.walls])
        self.rows = np.array([w.texture_row for w in self.walls], float)
        self.normals = np.array([w.normal for w in self.walls])
        self.floor_origin = np.array([-ox - 1.0, -oy - 1.0])
        self.floor = make_street(rng, ox + 1.0, oy + 1.0)
        self.clouds = make_clouds(rng)

    # -- the driving line: a rounded rectangle around the block, counter-clockwise

    @property
    def route_length(self) -> float:
        bx, by = BLOCK_HALF
        r = STREET / 2
        return 4 * (bx + by) + 2 * math.pi * r

    def route(self, s: float, lateral: float = 0.0) -> tuple[float, float, float]:
        """(x, y, heading) at arc length ``s`` with ``lateral`` metres to the right of the line."""
        bx, by = BLOCK_HALF
        r = STREET / 2
        s = s % self.route_length
        # Straights start at the bottom middle, going +x; corners turn left around block corners.
        pieces = [("line", bx), ("arc", (bx, -by)), ("line", 2 * by), ("arc", (bx, by)), ("line", 2 * bx),
                  ("arc", (-bx, by)), ("line", 2 * by), ("arc", (-bx, -by)), ("line", bx)]
        x, y, heading = 0.0, -by - r, 0.0
        for kind, arg in pieces:
            if kind == "line":
                step = min(s, arg)
                x, y = x + step * math.cos(heading), y + step * math.sin(heading)
                s -= step
                if s <= 0 and step < arg:
                    break
            else:
                arc = r * math.pi / 2
                step = min(s, arc)
                cx, cy = arg
                start = heading - math.pi / 2  # angle of the position around the corner centre
                ang = start + step / r
                x, y = cx + r * math.cos(ang), cy + r * math.sin(ang)
                heading += step / r
                s -= step
                if s <= 0 and step < arc:
                    break
        x += lateral * math.sin(heading)
        y -= lateral * math.cos(heading)
        return x, y, heading

    # -- rendering

    def render(self, x: float, y: float, yaw: float, cam_h: float, light: Light, size: tuple[int, int],
               rng: np.random.Generator, hfov_deg: float = 90.0, supersample: int = 2) -> np.ndarray:
        """RGB uint8 image ``size = (width, height)`` from camera at (x, y) with heading ``yaw``."""
        w_out, h_out = size
        W, H = w_out * supersample, h_out * supersample
        f = (W / 2) / math.tan(math.radians(hfov_deg) / 2)
        xn = ((np.arange(W) + 0.5 - W / 2) / f).astype(np.float32)  # per column
        yn = ((np.arange(H) + 0.5 - H / 2) / f).astype(np.float32)  # per row, downwards positive
        fwd = np.array([math.cos(yaw), math.sin(yaw)])
        right = np.array([math.sin(yaw), -math.cos(yaw)])
        dirs = fwd[None, :] + xn[:, None].astype(np.float64) * right[None, :]  # [W, 2]; forward part 1 => t = depth
        p = np.array([x, y])

        hit, depth, has_wall, tex_u = self._cast_rays(p, dirs)
        is_wall, wall_img = self._draw_walls(hit, depth, has_wall, tex_u, yn, cam_h)
        is_floor, zf, floor_img = self._draw_street(p, dirs, yn, cam_h, is_wall, wall_img)
        sky, horizon = self._draw_sky(xn, yn, yaw, light, (W, H))
        gain, haze = self._shading(hit, depth, zf, is_wall, is_floor, light)
        # Composite with OpenCV's masked copy (much faster than numpy's broadcasting where()), then
        # downsample before shading: gain and haze are smooth except at wall edges, where
        # averaging them after the resize changes nothing visible and saves 3/4 of the work.
        surface = floor_img
        cv2.copyTo(wall_img, is_wall.view(np.uint8), surface)
        img = sky
        cv2.copyTo(surface.astype(np.float32), (is_wall | is_floor).view(np.uint8), img)
        gain = gain.astype(np.float32)
        if supersample > 1:
            img = cv2.resize(img, (w_out, h_out), interpolation=cv2.INTER_AREA)
            gain = cv2.resize(gain, (w_out, h_out), interpolation=cv2.INTER_AREA)
            haze = cv2.resize(haze, (w_out, h_out), interpolation=cv2.INTER_AREA)
        return _develop(img, gain, haze, horizon, light, rng)

    def _cast_rays(self, p: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For every column's ray: the wall it hits, its depth, whether it hits one, texture u."""
        # Ray / segment intersection for every column and wall: P + t D = A + u (B - A).
        e = self.b - self.a
        ap = self.a - p
        denom = dirs[:, None, 0] * e[None, :, 1] - dirs[:, None, 1] * e[None, :, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (ap[None, :, 0] * e[None, :, 1] - ap[None, :, 1] * e[None, :, 0]) / denom
            u = (ap[None, :, 0] * dirs[:, None, 1] - ap[None, :, 1] * dirs[:, None, 0]) / denom
        valid = (np.abs(denom) > 1e-12) & (t > 1e-3) & (u >= 0) & (u <= 1)
        t = np.where(valid, t, np.inf)
        hit = np.argmin(t, axis=1)
        cols = np.arange(len(dirs))
        depth = t[cols, hit]
        has_wall = np.isfinite(depth)
        depth = np.where(has_wall, depth, 1e6).astype(np.float32)
        seg_len = np.linalg.norm(e[hit], axis=1)
        tex_u = (u[cols, hit] * seg_len * WALL_PX_PER_M).astype(np.float32)
        return hit, depth, has_wall, tex_u

    def _draw_walls(self, hit: np.ndarray, depth: np.ndarray, has_wall: np.ndarray, tex_u: np.ndarray,
                    yn: np.ndarray, cam_h: float) -> tuple[np.ndarray, np.ndarray]:
        """Which pixels see a wall, and the wall texture looked up for every pixel."""
        # Walls: a pixel at row y sees height h = cam_h - yn * depth on its column's wall.
        H, W = len(yn), len(depth)
        hgt = cam_h - yn[:, None] * depth[None, :]  # [H, W]
        wall_h = self.heights[hit].astype(np.float32)
        is_wall = has_wall[None, :] & (hgt >= 0) & (hgt <= wall_h[None, :])
        tex_v = (self.rows[hit].astype(np.float32) + wall_h * WALL_PX_PER_M)[None, :] - hgt * WALL_PX_PER_M
        wall_img = cv2.remap(self.atlas, np.broadcast_to(tex_u, (H, W)), tex_v.astype(np.float32), cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
        return is_wall, wall_img

    def _draw_street(self, p: np.ndarray, dirs: np.ndarray, yn: np.ndarray, cam_h: float, is_wall: np.ndarray,
                     wall_img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Which pixels see the street, the ground distance per row, and the street texture."""
        # Street: where each pixel below the horizon row sees the ground (upper half: no floor).
        H = len(yn)
        is_floor = (yn[:, None] > 0) & ~is_wall
        zf = np.where(yn > 0, cam_h / np.maximum(yn, 1e-6), 1e4).astype(np.float32)  # per row
        low = H // 2
        gx = ((p[0] - self.floor_origin[0]) + zf[low:, None] * dirs[None, :, 0]) * FLOOR_PX_PER_M
        gy = ((p[1] - self.floor_origin[1]) + zf[low:, None] * dirs[None, :, 1]) * FLOOR_PX_PER_M
        floor_img = np.zeros_like(wall_img)
        floor_img[low:] = cv2.remap(self.floor, gx.astype(np.float32), gy.astype(np.float32), cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REFLECT)
        return is_floor, zf, floor_img

    def _draw_sky(self, xn: np.ndarray, yn: np.ndarray, yaw: float, light: Light,
                  size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The sky image (float32) and the lap's horizon colour."""
        # Sky: gradient by elevation plus a cloud panorama indexed by azimuth, so clouds stay
        # put in the world as the camera turns. It is smooth: computed on a 1/8 grid, upscaled.
        xs, ys = xn[4::8], yn[4::8]
        az = ((yaw - np.arctan(xs)) % (2 * math.pi)) / (2 * math.pi) * self.clouds.shape[1]
        el = np.arctan2(-ys[:, None], np.sqrt(1 + xs[None, :] ** 2))
        cl_y = np.clip(el, 0, math.pi / 2) * ((self.clouds.shape[0] - 1) / (math.pi / 2))
        cloud = cv2.remap(self.clouds, np.broadcast_to(az.astype(np.float32), el.shape), cl_y.astype(np.float32),
                          cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
        frac = np.clip(el * (3 / math.pi), 0, 1).astype(np.float32)
        horizon = np.array(light.sky_horizon, np.float32)
        top = np.array(light.sky_top, np.float32)
        sky = horizon + frac[..., None] * (top - horizon)
        sky += cloud[..., None] * (horizon * 1.08 - sky)
        return cv2.resize(sky, size, interpolation=cv2.INTER_LINEAR), horizon

    def _shading(self, hit: np.ndarray, depth: np.ndarray, zf: np.ndarray, is_wall: np.ndarray, is_floor: np.ndarray,
                 light: Light) -> tuple[np.ndarray, np.ndarray]:
        """Per-pixel gain and haze fraction: Lambertian walls under the lap's sun, distance haze."""
        sun = np.array([math.cos(light.sun_azimuth), math.sin(light.sun_azimuth)]) * math.cos(light.sun_elevation)
        wall_shade = (light.ambient + light.diffuse * np.clip(self.normals[hit] @ sun, 0, None)).astype(np.float32)
        floor_shade = np.float32(light.ambient + light.diffuse * math.sin(light.sun_elevation) + 0.15)
        fog_w = (1 - np.exp(-depth / 140.0)).astype(np.float32)  # per column
        fog_f = (1 - np.exp(-np.minimum(zf, 200.0) / 140.0)).astype(np.float32)  # per row
        gain = np.where(is_wall, (wall_shade * (1 - fog_w))[None, :], np.where(is_floor, floor_shade * (1 - fog_f)[:, None], 1))
        haze = np.where(is_wall, fog_w[None, :], np.where(is_floor, fog_f[:, None], 0)).astype(np.float32)
        return gain, haze


def _develop(img: np.ndarray, gain: np.ndarray, haze: np.ndarray, horizon: np.ndarray, light: Light,
             rng: np.random.Generator) -> np.ndarray:
    """Shade and haze the composited float image, then the lap's colour, gamma and sensor noise."""
    img *= gain[..., None]
    img += haze[..., None] * horizon
    img = cv2.convertScaleAbs(img)  # saturating float -> uint8
    # Colour temperature and gamma of the lap as one lookup table per channel.
    levels = np.arange(256, dtype=np.float64) / 255.0
    lut = np.stack([255 * np.clip(levels * g, 0, 1) ** light.gamma for g in light.tint], axis=1)
    img = cv2.LUT(img, np.rint(lut).astype(np.uint8).reshape(256, 1, 3))
    noise = rng.standard_normal(img.shape, dtype=np.float32) * light.noise
    return np.clip(img + noise + 0.5, 0, 255).astype(np.uint8)


# -- procedural textures (facades: :mod:`.demo_facades`)


def make_street(rng: np.random.Generator, half_x: float, half_y: float) -> np.ndarray:
    """Asphalt with dashed centre line, kerbs/sidewalks along the buildings, manholes, crossings."""
    ppm = FLOOR_PX_PER_M
    w, h = int(2 * half_x * ppm), int(2 * half_y * ppm)
    asphalt = 95 + 12 * smooth_noise(rng, h, w, 30) + 8 * smooth_noise(rng, h, w, 3)
    img = np.repeat(asphalt[..., None], 3, axis=2).astype(np.float32)
    img = np.clip(img, 0, 255).astype(np.uint8)

    def px(x: float, y: float) -> tuple[int, int]:
        return int((x + half_x) * ppm), int((y + half_y) * ppm)

    bx, by = BLOCK_HALF
    ox, oy = bx + STREET, by + STREET
    walk = (150, 147, 140)
    for r_x, r_y, off in ((bx, by, 1.5), (ox, oy, -1.5)):  # sidewalks 1.5 m wide along both rings
        cv2.rectangle(img, px(-r_x - off, -r_y - off), px(r_x + off, r_y + off), walk, int(1.5 * ppm))
    cv2.rectangle(img, px(-bx - 1.5, -by - 1.5), px(bx + 1.5, by + 1.5), (200, 200, 195), 2)
    # Dashed centre line along the driving path (rounded rectangle offset STREET/2 from the block).
    r = STREET / 2
    path = []
    for corner, a0 in (((bx, -by), -90), ((bx, by), 0), ((-bx, by), 90), ((-bx, -by), 180)):
        for a in np.linspace(a0, a0 + 90, 12):
            path.append((corner[0] + r * math.cos(math.radians(a)), corner[1] + r * math.sin(math.radians(a))))
    path.append(path[0])
    pts = np.array([px(*q) for q in path], float)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.r_[0, np.cumsum(seg)]
    dash = 3.0 * ppm
    for d0 in np.arange(0, s[-1], 2 * dash):
        a = np.array([np.interp(d0, s, pts[:, 0]), np.interp(d0, s, pts[:, 1])])
        b = np.array([np.interp(d0 + dash, s, pts[:, 0]), np.interp(d0 + dash, s, pts[:, 1])])
        cv2.line(img, tuple(a.astype(int)), tuple(b.astype(int)), (225, 210, 120), 3)
    for _ in range(14):  # manholes and patches
        x = rng.uniform(-ox, ox)
        y = rng.uniform(-oy, oy)
        cv2.circle(img, px(x, y), int(0.4 * ppm), (70, 70, 72), -1)
    for xc in (-bx / 2, bx / 3):  # two zebra crossings on the long sides
        for yc in (-by - r, by + r):
            for k in range(6):
                x0 = xc + (k - 3) * 0.8
                cv2.rectangle(img, px(x0, yc - r), px(x0 + 0.4, yc + r), (230, 230, 230), -1)
    return cv2.GaussianBlur(img, (3, 3), 0)


def make_clouds(rng: np.random.Generator) -> np.ndarray:
    """Cloud cover panorama (float32 0..1), 360 degrees wide, horizon (row 0) to zenith."""
    n = smooth_noise(rng, 128, 1024, 40) + 0.5 * smooth_noise(rng, 128, 1024, 12)
    n[:, -24:] = n[:, :24]  # join the seam at 0/360 degrees
    return np.clip((n - 0.2) * 1.5, 0, 0.85).astype(np.float32)


def load_photos(directory: str | Path) -> list[np.ndarray]:
    files = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    photos = []
    for f in files:
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if bgr is not None:
            photos.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return photos


def _write_odometry(bag: BagWriter, drive: Drive, times: np.ndarray, start_ns: int, gt_stamps: list[int],
                    gt_poses: list[Pose]) -> None:
    """Odometry samples at ``times`` (s after ``start_ns``), also kept for the TUM file."""
    for tk in times:
        stamp = start_ns + int(round(tk * 1e9))
        pose = drive.pose(float(tk))
        bag.write(ODOM_TOPIC, stamp, odometry_msg(pose, stamp))
        gt_stamps.append(stamp)
        gt_poses.append(pose)


def generate(
    out_dir: str | Path,
    frames: int = 160,
    seed: int = 0,
    size: tuple[int, int] = (640, 480),
    storage: str = "mcap",
    compressed: bool = False,
    tum: str | Path | None = None,
    photos: Sequence[np.ndarray] = (),
    supersample: int = 2,
    start_ns: int = 1_700_000_000_000_000_000,
    progress: bool = False,
    depth: str = "16UC1",
    robot: int = 0,
) -> dict[str, object]:
    """Write the demo bag of robot ``robot`` (0: the original drive; N >= 1: another robot of a
    fleet, :mod:`.demo_drive`); returns a summary (topics, frame count, duration, lap frame
    counts, the robot's start, directions and lights).

    Every image comes with a CameraInfo and, unless ``depth`` is ``none``, a depth image of
    that encoding, both stamped like the image. Robot N's stamps start ``N * 0.25 s`` after
    ``start_ns``."""
    if depth not in DEPTH_ENCODINGS:
        raise ValueError(f"depth must be one of {DEPTH_ENCODINGS}, got {depth!r}")
    out_dir = Path(out_dir)
    scene = Scene(seed, photos)
    drive = Drive(scene, robot)  # ValueError for robot < 0
    plan = drive.plan
    start_ns += plan.stamp_offset_ns
    T = drive.duration
    frame_times = [T * i / frames for i in range(frames)]
    odom_times = np.arange(0.0, T + 1e-9, 1.0 / ODOM_RATE_HZ)
    image_topic = COMPRESSED_TOPIC if compressed else IMAGE_TOPIC
    laps = [0, 0]
    gt_stamps: list[int] = []
    gt_poses: list[Pose] = []
    iterator = range(frames)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="rendering", unit="frame", file=sys.stderr)
    with BagWriter(out_dir, storage) as bag:
        k = 0  # next odometry sample
        for i in iterator:
            t = frame_times[i]
            # Odometry up to and including this frame's time, so the bag is in time order.
            k_next = int(np.searchsorted(odom_times, t, side="right"))
            _write_odometry(bag, drive, odom_times[k:k_next], start_ns, gt_stamps, gt_poses)
            k = k_next
            x, y, yaw, h, lap = drive.state(t)
            laps[lap] += 1
            rng = np.random.default_rng([seed, i] if robot == 0 else [seed, robot, i])
            rgb = scene.render(x, y, yaw, h, plan.lights[lap], size, rng, supersample=supersample)
            stamp = start_ns + int(round(t * 1e9))
            msg = compressed_image_msg(rgb, stamp, "camera") if compressed else image_msg(rgb, stamp, "camera")
            bag.write(image_topic, stamp, msg)
            bag.write(CAMERA_INFO_TOPIC, stamp, camera_info_msg(camera_matrix(size), size, stamp))
            if depth != "none":
                bag.write(DEPTH_TOPIC, stamp, depth_image_msg(render_depth(scene, x, y, yaw, h, size), stamp, depth))
        _write_odometry(bag, drive, odom_times[k:], start_ns, gt_stamps, gt_poses)
    if tum:
        write_tum(tum, gt_stamps, gt_poses)
    return _summary(out_dir, storage, image_topic, depth, laps, drive, start_ns)


def _summary(out_dir: Path, storage: str, image_topic: str, depth: str, laps: list[int], drive: Drive,
             start_ns: int) -> dict[str, object]:
    """What :func:`generate` wrote, for the summary line and callers."""
    return {
        "bag": str(out_dir),
        "image_topic": image_topic,
        "odom_topic": ODOM_TOPIC,
        "camera_info_topic": CAMERA_INFO_TOPIC,
        "depth_topic": DEPTH_TOPIC if depth != "none" else None,
        "camera_to_base": CAMERA_TO_BASE,
        "frames": sum(laps),
        "frames_per_lap": laps,
        "duration_s": drive.duration,
        "route_length_m": drive.scene.route_length,
        "storage": storage,
        "robot": drive.robot,
        "start_m": drive.start_m,
        "directions": list(drive.plan.directions),
        "lights": [light.name for light in drive.plan.lights],
        "lap_starts_s": [0.0, drive.lap_times[0]],
        "start_ns": start_ns,  # the first stamp: the robot's offset included
    }


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _summary_line(info: dict, seconds: float) -> str:
    lap1, lap2 = info["frames_per_lap"]
    (dir1, dir2), (light1, light2) = info["directions"], info["lights"]
    return (
        f"wrote {info['bag']} ({info['storage']}): robot {info['robot']} starting {info['start_m']:.1f} m along the "
        f"{info['route_length_m']:.0f} m route: {info['frames']} images on {info['image_topic']} "
        f"({lap1} on lap 1 {dir1} in {light1} light, {lap2} on lap 2 {dir2} in {light2} light), "
        f"odometry on {info['odom_topic']}, camera_info on {info['camera_info_topic']}"
        + (f", depth on {info['depth_topic']}" if info["depth_topic"] else "")
        + f", {info['duration_s']:.0f} s, {2 * info['route_length_m']:.0f} m in {seconds:.1f} s; "
        f"camera_to_base '{info['camera_to_base']}'"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="salad_demo_bag",
        description="Write a rosbag2 of a camera driving two laps around a textured city block "
        "(second lap at dusk, shifted viewpoint) with nav_msgs/Odometry ground truth.",
    )
    parser.add_argument("out_dir", help="bag directory to create (must not exist)")
    parser.add_argument("--frames", type=int, default=160, help="images over both laps (default 160)")
    parser.add_argument("--seed", type=int, default=0, help="scene and noise seed (default 0)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    parser.add_argument("--compressed", action="store_true",
                        help=f"write sensor_msgs/CompressedImage (JPEG) on {COMPRESSED_TOPIC} instead of raw rgb8")
    parser.add_argument("--tum", metavar="FILE", help="also write the ground truth as a TUM trajectory file")
    parser.add_argument("--photos", metavar="DIR", help="paste photographs from DIR (jpg/png) onto the facades as murals")
    parser.add_argument("--supersample", type=int, default=2, choices=(1, 2, 3),
                        help="render at N x the size and downsample (anti-aliasing; default 2)")
    parser.add_argument("--depth", choices=DEPTH_ENCODINGS, default="16UC1",
                        help=f"aligned depth on {DEPTH_TOPIC}: 16UC1 mm (default), 32FC1 m, or none")
    parser.add_argument("--robot", type=_non_negative_int, default=0, metavar="N",
                        help="0 (default): the demo drive; N >= 1: another robot of a fleet in the same city and world "
                        "frame (other start, first lap clockwise, other times of day, stamps N * 0.25 s later)")
    args = parser.parse_args(argv)
    if args.frames < 2:
        parser.error("--frames must be at least 2")
    if Path(args.out_dir).exists():
        print(f"salad_demo_bag: {args.out_dir} exists already; remove it or choose another directory", file=sys.stderr)
        return 2
    if args.photos and not Path(args.photos).is_dir():
        print(f"salad_demo_bag: error: --photos {args.photos}: no such folder", file=sys.stderr)
        return 2
    try:
        photos = load_photos(args.photos) if args.photos else []
    except OSError as exc:  # e.g. a folder it may not read
        print(f"salad_demo_bag: error: --photos {args.photos}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if args.photos and not photos:
        print(f"salad_demo_bag: no readable jpg/png images in {args.photos}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    info = generate(args.out_dir, args.frames, args.seed, (args.width, args.height), args.storage, args.compressed,
                    args.tum, photos, args.supersample, progress=sys.stderr.isatty(), depth=args.depth, robot=args.robot)
    print(_summary_line(info, time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
