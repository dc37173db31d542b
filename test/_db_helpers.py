"""Synthetic data for the database / detector / verification tests (no files, no network).

* :func:`textured_scene` draws a random, feature-rich image (shapes, lines, text, texture);
* :func:`warp_pair` gives the same scene seen through a known homography;
* :class:`LoopStream` is a SALAD-like descriptor stream for a robot driving a closed loop
  several times (see its docstring for the similarity model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np


def textured_scene(seed: int, height: int = 480, width: int = 640) -> np.ndarray:
    """An RGB uint8 image full of corners and blobs, different for every seed."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    img = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    img = cv2.GaussianBlur(img, (0, 0), 3)
    for _ in range(60):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 4)
        if kind == 0:
            pts = rng.integers(0, [width, height], (int(rng.integers(3, 7)), 2)).astype(np.int32)
            cv2.fillPoly(img, [pts], color)
        elif kind == 1:
            c = tuple(int(v) for v in rng.integers(0, [width, height]))
            cv2.circle(img, c, int(rng.integers(5, 40)), color, -1)
        elif kind == 2:
            p1 = tuple(int(v) for v in rng.integers(0, [width, height]))
            p2 = tuple(int(v) for v in rng.integers(0, [width, height]))
            cv2.line(img, p1, p2, color, int(rng.integers(1, 5)))
        else:
            org = tuple(int(v) for v in rng.integers(0, [width, height]))
            text = "".join(chr(int(c)) for c in rng.integers(65, 91, 5))
            cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, float(rng.uniform(0.6, 1.6)), color, 2)
    return img


def known_homography(width: int = 640, height: int = 480, angle_deg: float = 8.0,
                     scale: float = 0.9, persp: float = 1.5e-4) -> np.ndarray:
    """A moderate viewpoint change: rotation + zoom about the centre plus a little perspective."""
    rot = cv2.getRotationMatrix2D((width / 2, height / 2), angle_deg, scale)
    h = np.vstack([rot, [0.0, 0.0, 1.0]])
    p = np.array([[1, 0, 0], [0, 1, 0], [persp, -persp / 2, 1]], dtype=np.float64)
    return p @ h


def warp_pair(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, image warped by H, H)."""
    a = textured_scene(seed)
    h = known_homography(a.shape[1], a.shape[0])
    b = cv2.warpPerspective(a, h, (a.shape[1], a.shape[0]), borderMode=cv2.BORDER_REFLECT)
    return a, b, h


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@dataclass
class Frame:
    index: int
    stamp_ns: int
    position: float  #: path coordinate along the loop [m], modulo the loop length
    lap: int
    descriptor: np.ndarray
    injected: bool = False  #: an aliased frame that looks like another place
    appearance: float = 0.0  #: path coordinate the descriptor shows (= position unless injected)


@dataclass
class LoopStream:
    """A robot drives a closed loop of ``length_m`` metres ``laps`` times at ``speed`` m/s.

    Frame descriptors mimic SALAD's cosine structure (unit-norm, ``dim``-D):
    ``normalize(a*mu + b*g(s) + c*h_lap(s) + e*n)`` where ``mu`` is a direction shared by all
    images, ``g`` a smooth per-place field along the path (random anchors every metre,
    interpolated), ``h_lap`` a smooth per-lap appearance change and ``n`` per-frame noise.
    With the default weights, a revisit of the same spot scores ~0.6-0.7, unrelated places
    ~0.25 and consecutive frames of one lap are highly similar, as with real descriptors.
    """

    dim: int = 8448
    length_m: float = 121.37  # not a multiple of the frame spacing: laps do not line up exactly
    laps: float = 2.0
    speed: float = 1.0
    rate_hz: float = 2.0
    weights: tuple[float, float, float, float] = (0.25, 0.45, 0.2, 0.1)  # a^2, b^2, c^2, e^2
    seed: int = 0
    inject_every_s: float = 0.0  #: if > 0, on the first lap replace one frame this often by an alias
    frames: list[Frame] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        n_anchor = int(math.ceil(self.length_m)) + 1
        mu = unit(rng.standard_normal(self.dim))
        place = unit(rng.standard_normal((n_anchor, self.dim)))
        n_laps = int(math.ceil(self.laps))
        lap_fields = unit(rng.standard_normal((n_laps, n_anchor, self.dim)))
        wa, wb, wc, we = (math.sqrt(w) for w in self.weights)
        n_frames = int(self.laps * self.length_m / self.speed * self.rate_hz)
        noise = unit(rng.standard_normal((n_frames, self.dim)))

        def field_at(anchors: np.ndarray, s: float) -> np.ndarray:
            i = int(math.floor(s)) % (n_anchor - 1)
            f = s - math.floor(s)
            return unit((1 - f) * anchors[i] + f * anchors[(i + 1) % (n_anchor - 1)])

        next_inject = self.inject_every_s if self.inject_every_s > 0 else math.inf
        for k in range(n_frames):
            t = k / self.rate_hz
            dist = t * self.speed
            lap = int(dist // self.length_m)
            s = dist % self.length_m
            d = unit(wa * mu + wb * field_at(place, s) + wc * field_at(lap_fields[lap], s) + we * noise[k])
            injected = False
            appearance = s
            if t >= next_inject and 40.0 < dist < self.length_m:
                # perceptual aliasing: this frame looks like a spot 30-60 m behind on this lap
                alias_s = (s - 30.0 - 30.0 * rng.random()) % self.length_m
                d = unit(wa * mu + wb * field_at(place, alias_s) + wc * field_at(lap_fields[lap], alias_s) + we * noise[k])
                injected = True
                appearance = alias_s
                next_inject = t + self.inject_every_s
            self.frames.append(Frame(k, int(round(t * 1e9)), s, lap, d, injected, appearance))

    def loop_distance(self, s1: float, s2: float) -> float:
        d = abs(s1 - s2) % self.length_m
        return min(d, self.length_m - d)
