"""Training-time image pipeline without torchvision: resize, RandAugment-like ops, normalise.

Every op takes and returns a uint8 ``HxWx3`` RGB array and draws its randomness from a
:class:`numpy.random.Generator` passed in, so that a given seed reproduces the same augmented
batch (resumed runs then see exactly the images an uninterrupted run would have seen).

The op set follows RandAugment (Cubuk et al., 2020): for every image ``num_ops`` ops are
drawn uniformly (with replacement) from :data:`OPS` and applied at a fixed ``magnitude``
(a bin index in ``[0, num_magnitude_bins - 1]``; 9 of 31 by default, i.e. 30 % of each op's
range). Signed ops pick a random sign. Photometric ops: identity, brightness, colour
(saturation), contrast, sharpness, posterize, solarize, autocontrast, equalize. Geometric ops:
rotate, shear x/y, translate x/y. Geometric ops fill the uncovered border by reflection rather
than with black: black wedges would be a cue shared by augmented training images that never
occurs in deployment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from salad_ros.model import IMAGENET_MEAN, IMAGENET_STD

Image = np.ndarray
Op = Callable[[Image, float, np.random.Generator], Image]

# Per-op maximum strength (value at the highest magnitude bin).
MAX_BLEND = 0.9  # brightness/colour/contrast/sharpness factor deviates by up to +-90 %
MAX_ROTATE_DEG = 30.0
MAX_SHEAR = 0.3
MAX_TRANSLATE = 150.0 / 331.0  # fraction of the image side, as in the RandAugment paper's setting
MIN_POSTERIZE_BITS = 4


def _blend(img: Image, other: Image | float, factor: float) -> Image:
    """``other + factor * (img - other)``: factor 1 keeps ``img``, 0 gives ``other``."""
    out = np.asarray(other, dtype=np.float32) + factor * (img.astype(np.float32) - np.asarray(other, dtype=np.float32))
    return np.clip(out, 0, 255).astype(np.uint8)


def _gray(img: Image) -> Image:
    return cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def _signed(m: float, rng: np.random.Generator) -> float:
    return m if rng.random() < 0.5 else -m


def identity(img: Image, m: float, rng: np.random.Generator) -> Image:
    return img


def brightness(img: Image, m: float, rng: np.random.Generator) -> Image:
    return _blend(img, 0.0, 1.0 + _signed(m * MAX_BLEND, rng))


def color(img: Image, m: float, rng: np.random.Generator) -> Image:
    return _blend(img, _gray(img), 1.0 + _signed(m * MAX_BLEND, rng))


def contrast(img: Image, m: float, rng: np.random.Generator) -> Image:
    mean = float(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).mean())
    return _blend(img, mean, 1.0 + _signed(m * MAX_BLEND, rng))


def sharpness(img: Image, m: float, rng: np.random.Generator) -> Image:
    # Blend with a smoothed copy: factor > 1 sharpens, < 1 blurs. Borders stay untouched, as the
    # 3x3 smoothing kernel is undefined there.
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13.0
    smooth = img.copy()
    if img.shape[0] > 2 and img.shape[1] > 2:
        smooth[1:-1, 1:-1] = cv2.filter2D(img, -1, kernel)[1:-1, 1:-1]
    return _blend(img, smooth, 1.0 + _signed(m * MAX_BLEND, rng))


def posterize(img: Image, m: float, rng: np.random.Generator) -> Image:
    bits = 8 - int(round(m * (8 - MIN_POSTERIZE_BITS)))
    mask = np.uint8((0xFF << (8 - bits)) & 0xFF)
    return img & mask


def solarize(img: Image, m: float, rng: np.random.Generator) -> Image:
    # Pixels at or above the threshold are inverted; at strength 0 the threshold lies above
    # 255, so nothing changes (with >= 255 pure white would still flip to black).
    threshold = 256.0 - 256.0 * m
    return np.where(img >= threshold, 255 - img, img).astype(np.uint8)


def autocontrast(img: Image, m: float, rng: np.random.Generator) -> Image:
    lo = img.reshape(-1, 3).min(0).astype(np.float32)
    hi = img.reshape(-1, 3).max(0).astype(np.float32)
    scale = np.where(hi > lo, 255.0 / np.maximum(hi - lo, 1e-6), 1.0)
    offset = np.where(hi > lo, lo, 0.0)
    return np.clip((img.astype(np.float32) - offset) * scale, 0, 255).astype(np.uint8)


def equalize(img: Image, m: float, rng: np.random.Generator) -> Image:
    return np.stack([cv2.equalizeHist(np.ascontiguousarray(img[..., c])) for c in range(3)], axis=-1)


def _warp(img: Image, matrix: np.ndarray) -> Image:
    h, w = img.shape[:2]
    return cv2.warpAffine(img, matrix.astype(np.float64), (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def rotate(img: Image, m: float, rng: np.random.Generator) -> Image:
    h, w = img.shape[:2]
    return _warp(img, cv2.getRotationMatrix2D((w / 2.0, h / 2.0), _signed(m * MAX_ROTATE_DEG, rng), 1.0))


def shear_x(img: Image, m: float, rng: np.random.Generator) -> Image:
    s = _signed(m * MAX_SHEAR, rng)
    h = img.shape[0]
    return _warp(img, np.array([[1.0, s, -s * h / 2.0], [0.0, 1.0, 0.0]]))  # about the centre row


def shear_y(img: Image, m: float, rng: np.random.Generator) -> Image:
    s = _signed(m * MAX_SHEAR, rng)
    w = img.shape[1]
    return _warp(img, np.array([[1.0, 0.0, 0.0], [s, 1.0, -s * w / 2.0]]))


def translate_x(img: Image, m: float, rng: np.random.Generator) -> Image:
    return _warp(img, np.array([[1.0, 0.0, _signed(m * MAX_TRANSLATE * img.shape[1], rng)], [0.0, 1.0, 0.0]]))


def translate_y(img: Image, m: float, rng: np.random.Generator) -> Image:
    return _warp(img, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, _signed(m * MAX_TRANSLATE * img.shape[0], rng)]]))


#: The op set, name -> function(image, strength in [0, 1], rng).
OPS: dict[str, Op] = {
    "identity": identity,
    "brightness": brightness,
    "color": color,
    "contrast": contrast,
    "sharpness": sharpness,
    "posterize": posterize,
    "solarize": solarize,
    "autocontrast": autocontrast,
    "equalize": equalize,
    "rotate": rotate,
    "shear_x": shear_x,
    "shear_y": shear_y,
    "translate_x": translate_x,
    "translate_y": translate_y,
}


@dataclass(frozen=True)
class RandAugment:
    """Apply ``num_ops`` random ops from :data:`OPS` at strength ``magnitude / (num_magnitude_bins - 1)``."""

    num_ops: int = 3
    magnitude: int = 9
    num_magnitude_bins: int = 31

    def __post_init__(self) -> None:
        if self.num_ops < 0:
            raise ValueError(f"num_ops must be >= 0, got {self.num_ops}")
        if not 0 <= self.magnitude < self.num_magnitude_bins:
            raise ValueError(f"magnitude must be in [0, {self.num_magnitude_bins - 1}], got {self.magnitude}")

    @property
    def strength(self) -> float:
        return self.magnitude / max(self.num_magnitude_bins - 1, 1)

    def __call__(self, img: Image, rng: np.random.Generator) -> Image:
        names = list(OPS)
        for _ in range(self.num_ops):
            img = OPS[names[int(rng.integers(len(names)))]](img, self.strength, rng)
        return img


def resize(img: Image, size: int) -> Image:
    """Square resize; area interpolation when shrinking (antialiased), bilinear when enlarging."""
    h, w = img.shape[:2]
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def to_tensor(img: Image) -> torch.Tensor:
    """uint8 RGB ``HxWx3`` -> ImageNet-normalised float ``[3, H, W]`` (same statistics as inference)."""
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


@dataclass(frozen=True)
class TrainTransform:
    """Resize to ``size`` x ``size``, optionally RandAugment, then normalise to a tensor."""

    size: int = 224
    augment: RandAugment | None = RandAugment()

    def __call__(self, img: Image, rng: np.random.Generator) -> torch.Tensor:
        img = resize(img, self.size)
        if self.augment is not None:
            img = self.augment(img, rng)
        return to_tensor(img)
