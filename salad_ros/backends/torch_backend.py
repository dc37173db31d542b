"""PyTorch inference backend (CPU or CUDA; fp32, fp16 autocast on CUDA, bf16 autocast on CUDA or on a
CPU with native bf16 arithmetic, see :mod:`.cpu_features`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from ..descriptors import l2_normalize
from ..fileio import file_fingerprint
from ..model import load_model, preprocess, resolve_device, variant_dims, weights_file
from ..params import ConfigError
from .cpu_features import require_cpu_bf16
from .encoder import Encoder
from .model_config import ModelConfig

log = logging.getLogger(__name__)

_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


class TorchEncoder(Encoder):
    backend = "torch"

    def __init__(self, cfg: ModelConfig) -> None:
        try:
            self._device = resolve_device(cfg.device)
        except RuntimeError as exc:
            raise ConfigError(f"parameter 'device': {exc}") from exc
        if cfg.precision == "fp16" and self._device.type != "cuda":
            raise ConfigError(f"parameter 'precision': fp16 needs a CUDA device (or TensorRT), running on {self._device}")
        if cfg.precision == "bf16" and self._device.type == "cpu":
            require_cpu_bf16("torch")
        m, l, g = variant_dims(cfg.descriptor)
        self.model = load_model(
            cfg.weights or None, cfg.backbone, m, l, g, self._device, num_trainable_blocks=0
        )
        self.precision = cfg.precision
        self.input_size = (cfg.image_size, cfg.image_size)
        self.dim = self.model.output_dim
        self.device = str(self._device)
        # hub names: the fingerprint of the downloaded file, like any other weights file
        self.model_name = f"{self.model.variant}@{cfg.image_size}/{file_fingerprint(weights_file(cfg.weights or None, cfg.backbone))}"

    def _autocast(self) -> torch.autocast:
        dtype = _AUTOCAST.get(self.precision)
        return torch.autocast(self._device.type, dtype=dtype, enabled=dtype is not None)

    @torch.inference_mode()
    def encode(self, images: Sequence[np.ndarray], color: str = "rgb") -> np.ndarray:
        x = preprocess(images, self.input_size, color, self._device)
        with self._autocast():
            out = self.model(x)
        return l2_normalize(out.float().cpu().numpy())

    @torch.inference_mode()
    def heatmap(self, image: np.ndarray, color: str = "rgb") -> np.ndarray:
        x = preprocess(image, self.input_size, color, self._device)
        with self._autocast():
            _, weights, (rows, cols) = self.model.patch_assignments(x)
        return weights.float().sum(0).reshape(rows, cols).cpu().numpy()
