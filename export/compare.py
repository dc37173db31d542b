"""Accept/refuse logic shared by the ONNX and TensorRT exporters, and their test inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from salad_ros.model import preprocess

#: Default acceptance thresholds per precision: (min cosine, max abs difference or None).
THRESHOLDS: dict[str, tuple[float, float | None]] = {
    "fp32": (0.99999, 1e-4),
    "fp16": (0.999, None),
}


@dataclass
class Agreement:
    """How closely candidate descriptors match the reference, and whether that is enough."""

    min_cosine: float
    mean_cosine: float
    max_abs: float
    passed: bool
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        text = f"{verdict}: cosine min {self.min_cosine:.7f} mean {self.mean_cosine:.7f}, max |diff| {self.max_abs:.2e}"
        return text + "".join(f"\n  - {p}" for p in self.problems)


def check_agreement(
    reference: np.ndarray, candidate: np.ndarray, min_cosine: float, max_abs: float | None = None
) -> Agreement:
    """Compare descriptor batches row by row: every row's cosine similarity must reach
    ``min_cosine`` and (if given) every element must be within ``max_abs``. Non-finite values,
    zero rows and shape mismatches fail."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape or ref.ndim != 2 or ref.shape[0] == 0:
        return Agreement(0.0, 0.0, float("inf"), False, [f"shape {cand.shape} differs from reference {ref.shape}"
                                                         if ref.shape != cand.shape else f"bad shape {ref.shape}"])
    problems = []
    finite = np.isfinite(cand).all(axis=1)
    if not finite.all():
        problems.append(f"{int((~finite).sum())} of {len(cand)} candidate rows contain NaN or inf (fp16 overflow?)")
    cand = np.where(np.isfinite(cand), cand, 0.0)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosine = np.where(norms > 0, (ref * cand).sum(axis=1) / np.maximum(norms, 1e-300), 0.0)
    cosine[~finite] = 0.0
    diff = float(np.abs(ref - cand).max()) if finite.all() else float("inf")
    if cosine.min() < min_cosine:
        worst = int(cosine.argmin())
        problems.append(f"cosine {cosine.min():.7f} (input {worst}) is below the required {min_cosine}")
    if max_abs is not None and diff > max_abs:
        problems.append(f"max |diff| {diff:.2e} exceeds the allowed {max_abs:.0e}")
    return Agreement(float(cosine.min()), float(cosine.mean()), diff, not problems, problems)


def synthetic_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Natural-looking uint8 RGB images: 1/f noise texture, a horizon gradient and a few boxes.

    Real photos have most energy at low spatial frequencies and large flat regions; white noise
    alone drives activations into ranges real images never reach, so check both.
    """
    gen = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(n):
        img = torch.zeros(3, size, size)
        for octave in range(1, 7):
            cells = 2 ** octave
            noise = torch.rand(1, 3, cells, cells, generator=gen)
            img += F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)[0] / octave
        img /= img.amax()
        horizon = int(torch.randint(size // 4, 3 * size // 4, (1,), generator=gen))
        sky = torch.rand(3, 1, 1, generator=gen) * 0.5 + 0.5
        img[:, :horizon] = 0.6 * sky + 0.4 * img[:, :horizon]
        for _ in range(4):
            y0, x0 = (int(v) for v in torch.randint(0, size - 8, (2,), generator=gen))
            h, w = (int(v) for v in torch.randint(8, size // 2, (2,), generator=gen))
            img[:, y0:y0 + h, x0:x0 + w] = torch.rand(3, 1, 1, generator=gen)
        images.append((img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    return images


def load_images(folder: str | Path, limit: int) -> list[np.ndarray]:
    """Up to ``limit`` RGB images from ``folder`` (sorted), for checks on real data."""
    import cv2

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    images = []
    for p in paths[:limit]:
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is not None:
            images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    if not images:
        raise FileNotFoundError(f"no readable images in {folder}")
    return images


def verification_inputs(size: int, count: int = 4, seed: int = 0, image_dir: str | Path | None = None) -> torch.Tensor:
    """Normalised float32 inputs ``[count, 3, size, size]``: half standard-normal tensors, half
    synthetic (or, with ``image_dir``, real) images through the shared preprocessing."""
    n_random = count // 2
    gen = torch.Generator().manual_seed(seed)
    random = torch.randn(n_random, 3, size, size, generator=gen)
    images = load_images(image_dir, count - n_random) if image_dir else synthetic_images(count - n_random, size, seed)
    return torch.cat([random, preprocess(images, size, "rgb", "cpu")])
