"""Procedural building fronts for the demo scene (:mod:`salad_ros.evaluation.demo_bag`): plaster
with stains, a window grid, cornices, a door and a sign with lettering, drawn from a seeded
generator so the same seed gives the same facade, byte for byte.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Facade texture resolution [px per m] (the renderer maps wall metres to texture pixels with it).
WALL_PX_PER_M = 40.0


def smooth_noise(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Smooth noise in [-1, 1] with features about ``scale`` pixels large."""
    small = rng.uniform(-1, 1, (max(2, int(h / scale) + 2), max(2, int(w / scale) + 2))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    px = np.uint8([[[int(h) % 180, int(s * 255), int(v * 255)]]])
    return cv2.cvtColor(px, cv2.COLOR_HSV2RGB)[0, 0].astype(float)


LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"


def make_facade(rng: np.random.Generator, w: int, h: int, photo: np.ndarray | None = None) -> np.ndarray:
    """One building front: plaster colour with stains, window grid, door, cornices and a sign."""
    img = _plaster(rng, w, h)
    floor_h, frame = _draw_windows(img, rng, w, h)
    gy = int(h - floor_h)
    _draw_ground_floor(img, rng, gy, floor_h, frame)
    ppm = WALL_PX_PER_M
    # A few shapes (posters, graffiti, round windows): distinctive local structure.
    for _ in range(int(rng.integers(1, 4))):
        col = tuple(int(c) for c in _hsv(rng.uniform(0, 180), rng.uniform(0.4, 1), rng.uniform(0.3, 1)))
        cxy = (int(rng.uniform(0, w)), int(rng.uniform(gy, h - 0.3 * ppm)))
        if rng.random() < 0.5:
            cv2.circle(img, cxy, int(rng.uniform(0.2, 0.5) * ppm), col, -1)
        else:
            pts = (np.array(cxy) + rng.uniform(-0.8, 0.8, (int(rng.integers(3, 6)), 2)) * ppm).astype(np.int32)
            cv2.polylines(img, [pts], True, col, 3)
    if photo is not None:  # a mural from a real photograph
        ph, pw = photo.shape[:2]
        mw = int(min(w * 0.7, 4 * ppm))
        mh = max(8, int(mw * ph / pw))
        my = max(0, gy - mh - int(0.3 * ppm))
        mx = int(rng.uniform(0, max(1, w - mw)))
        img[my : my + mh, mx : mx + mw] = cv2.resize(photo, (mw, mh), interpolation=cv2.INTER_AREA)[: h - my, : w - mx]
    return img


def _plaster(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """The bare wall: a plaster colour with stains, on some facades a bay of another colour."""
    base = _hsv(rng.uniform(0, 180), rng.uniform(0.15, 0.6), rng.uniform(0.45, 0.9))
    img = np.ones((h, w, 3), np.float32) * base
    img *= (1 + 0.08 * smooth_noise(rng, h, w, 40))[..., None] * (1 + 0.04 * smooth_noise(rng, h, w, 6))[..., None]
    # Vertical material change on some facades (a different coloured bay).
    if rng.random() < 0.5:
        x0 = int(rng.uniform(0.1, 0.6) * w)
        bay = _hsv(rng.uniform(0, 180), rng.uniform(0.1, 0.5), rng.uniform(0.3, 0.8))
        img[:, x0 : x0 + int(rng.uniform(0.15, 0.35) * w)] = bay * (1 + 0.05 * smooth_noise(rng, h, 2, 20))[:, :1, None]
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw_windows(img: np.ndarray, rng: np.random.Generator, w: int, h: int) -> tuple[float, tuple[int, ...]]:
    """The window grid above the ground floor, with cornices; returns the storey height [px]
    and the frame colour (the door uses it too)."""
    ppm = WALL_PX_PER_M
    floor_h = rng.uniform(2.8, 3.6) * ppm
    n_cols = max(1, int(w / (rng.uniform(1.4, 2.6) * ppm)))
    win_w = rng.uniform(0.35, 0.7) * w / n_cols
    win_h = rng.uniform(0.35, 0.65) * floor_h
    glass = _hsv(rng.uniform(90, 130), rng.uniform(0.2, 0.6), rng.uniform(0.15, 0.45))
    frame = tuple(int(c) for c in _hsv(rng.uniform(0, 180), rng.uniform(0, 0.3), rng.uniform(0.2, 0.95)))
    arched = rng.random() < 0.3
    y_top = int(h - floor_h)
    while y_top - floor_h > 0.2 * ppm:
        y0 = int(y_top - floor_h + (floor_h - win_h) / 2)
        for c in range(n_cols):
            x0 = int((c + 0.5) * w / n_cols - win_w / 2)
            x1, y1 = int(x0 + win_w), int(y0 + win_h)
            shade = glass * rng.uniform(0.7, 1.4)
            cv2.rectangle(img, (x0, y0), (x1, y1), tuple(int(v) for v in np.clip(shade, 0, 255)), -1)
            if arched:
                cv2.ellipse(img, ((x0 + x1) // 2, y0), ((x1 - x0) // 2, int(win_w / 3)), 0, 180, 360,
                            tuple(int(v) for v in np.clip(shade, 0, 255)), -1)
            cv2.rectangle(img, (x0, y0), (x1, y1), frame, 2)
            cv2.line(img, ((x0 + x1) // 2, y0), ((x0 + x1) // 2, y1), frame, 1)
        y_top -= int(floor_h)
        if rng.random() < 0.35:  # cornice band between some storeys
            cv2.rectangle(img, (0, y_top - 3), (w, y_top + 3), frame, -1)
    return floor_h, frame


def _draw_ground_floor(img: np.ndarray, rng: np.random.Generator, gy: int, floor_h: float,
                       frame: tuple[int, ...]) -> None:
    """Ground floor (top at row ``gy``): a door and a sign board with lettering."""
    h, w = img.shape[:2]
    ppm = WALL_PX_PER_M
    door_x = int(rng.uniform(0.05, 0.8) * w)
    door_w, door_h = int(rng.uniform(0.9, 1.6) * ppm), int(rng.uniform(2.1, 2.6) * ppm)
    door_col = tuple(int(c) for c in _hsv(rng.uniform(0, 180), rng.uniform(0.3, 0.9), rng.uniform(0.2, 0.7)))
    cv2.rectangle(img, (door_x, h - door_h), (door_x + door_w, h), door_col, -1)
    cv2.rectangle(img, (door_x, h - door_h), (door_x + door_w, h), frame, 3)
    sign_col = tuple(int(c) for c in _hsv(rng.uniform(0, 180), rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0)))
    text_col = (255, 255, 255) if sum(sign_col) < 380 else (20, 20, 20)
    sx0 = int(rng.uniform(0.0, 0.3) * w)
    sx1 = min(w - 2, sx0 + int(rng.uniform(0.4, 0.8) * w))
    sy0 = gy + int(0.15 * floor_h)
    sy1 = sy0 + int(rng.uniform(0.18, 0.3) * floor_h)
    cv2.rectangle(img, (sx0, sy0), (sx1, sy1), sign_col, -1)
    word = "".join(rng.choice(list(LETTERS), int(rng.integers(3, 7))))
    scale = (sy1 - sy0) / 32.0
    cv2.putText(img, word, (sx0 + 6, sy1 - int(0.25 * (sy1 - sy0))), cv2.FONT_HERSHEY_DUPLEX, scale, text_col,
                max(1, int(2 * scale)), cv2.LINE_AA)
