"""Image preprocessing shared by every inference backend.

uint8 ``HxWx3`` images (RGB or BGR, said explicitly) become an ImageNet-normalised float
tensor ``[B, 3, H', W']`` at the model's input size. The resize is bilinear with antialiasing
(what PIL-based training pipelines do), computed on the target device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .backbone import PATCH_SIZE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def input_size(size: int | tuple[int, int], round_to_patch: bool = False) -> tuple[int, int]:
    """Validate an input size ``(height, width)`` (an int means square).

    Sizes must be multiples of the 14 px patch; with ``round_to_patch`` they are rounded to
    the nearest multiple instead of refused.
    """
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    if h % PATCH_SIZE or w % PATCH_SIZE:
        if not round_to_patch:
            raise ValueError(
                f"image size {h}x{w} is not a multiple of the patch size {PATCH_SIZE} "
                f"(nearest valid: {_round(h)}x{_round(w)})"
            )
        h, w = _round(h), _round(w)
    return h, w


def _round(x: int) -> int:
    return max(PATCH_SIZE, int(round(x / PATCH_SIZE)) * PATCH_SIZE)


def preprocess(
    images: np.ndarray | Sequence[np.ndarray],
    size: int | tuple[int, int] = 322,
    color: str = "rgb",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Turn uint8 images into a normalised batch ``[B, 3, H, W]`` on ``device``.

    ``images`` is one ``HxWx3`` array, a ``BxHxWx3`` array or a list of ``HxWx3`` arrays (their
    sizes may differ). ``color`` says the channel order of the input: ``"rgb"`` or ``"bgr"``.
    """
    if color not in ("rgb", "bgr"):
        raise ValueError(f"color must be 'rgb' or 'bgr', got {color!r}")
    h, w = input_size(size)
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    if len(images) == 0:
        raise ValueError("preprocess got no images")
    for i, img in enumerate(images):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
            raise ValueError(f"image {i}: expected a uint8 HxWx3 array, got {desc}")
        if img.shape[0] == 0 or img.shape[1] == 0:
            raise ValueError(f"image {i} is empty ({img.shape})")
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255.0
    same_shape = all(img.shape == images[0].shape for img in images)
    groups = [np.stack(images)] if same_shape else [img[None] for img in images]
    out = []
    for group in groups:
        x = torch.from_numpy(np.ascontiguousarray(group)).to(device).permute(0, 3, 1, 2).float()
        if color == "bgr":
            x = x.flip(1)
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        out.append((x - mean) / std)
    return torch.cat(out).to(dtype)
