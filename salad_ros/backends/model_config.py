"""Which model computes descriptors, and how: :class:`ModelConfig` and the one weights-file check."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from ..model import BACKBONES, VARIANTS
from ..params import ConfigError, check_fields, param

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")


@dataclass
class ModelConfig:
    """Which model computes descriptors, and how."""

    weights: str = param("", "SALAD checkpoint (.ckpt/.pth; flat, training or DINOv2-backbone-only). Empty: none")
    allow_random_weights: bool = param(
        False, "Development switch: run with random weights when 'weights' is empty (descriptors are meaningless)"
    )
    backbone: str = param("dinov2_vitb14", "DINOv2 backbone", choices=tuple(BACKBONES))
    descriptor: str = param("salad-8448", "Descriptor variant (clusters x dim + token)", choices=tuple(VARIANTS))
    image_size: int = param(322, "Square network input size in pixels, a multiple of 14", range=(56, 1022))
    device: str = param("auto", "Inference device: auto (CUDA when available), cpu, cuda or cuda:N")
    precision: str = param(
        "fp32", "Inference precision; fp16 needs CUDA/TensorRT; bf16 needs CUDA or a CPU with native bf16 "
        "(torch, openvino)", choices=("fp32", "fp16", "bf16"),
    )
    backend: str = param("torch", "Inference backend", choices=BACKENDS)
    engine: str = param("", "Exported model for the onnxruntime or openvino (.onnx) or tensorrt (.engine) backend")
    batch_size: int = param(8, "Images per forward pass in offline replay (the live node encodes one)", range=(1, 256))

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        if self.image_size % 14:
            raise ConfigError(f"parameter 'image_size': {self.image_size} is not a multiple of 14")
        if self.device not in ("auto", "cpu", "cuda") and not (self.device.startswith("cuda:") and self.device[5:].isdigit()):
            raise ConfigError(f"parameter 'device': {self.device!r} is not auto, cpu, cuda or cuda:N")
        if self.backend == "torch":
            if not self.weights and not self.allow_random_weights:
                raise ConfigError(
                    "parameter 'weights' is empty: give a SALAD checkpoint, or set allow_random_weights:=true for development"
                )
        elif not self.engine:
            raise ConfigError(f"parameter 'engine': backend '{self.backend}' needs an exported model file")
        if self.backend == "openvino":
            if self.precision == "fp16":
                raise ConfigError("parameter 'precision': fp16 needs CUDA or TensorRT; backend openvino computes in fp32 or bf16")
            if self.device not in ("auto", "cpu"):
                raise ConfigError(f"parameter 'device': backend openvino runs on the CPU, got {self.device}; set device: cpu")

    @property
    def model_file(self) -> str:
        """The file whose identity defines the descriptors (weights or exported engine)."""
        return self.weights if self.backend == "torch" else self.engine


def check_weights_file(cfg: ModelConfig) -> ModelConfig:
    """The one check of the torch backend's weights file, shared by node, replay, export and evaluation.

    A missing file is refused, unless ``allow_random_weights`` is set: then the model runs with
    random weights, loudly. ``hub`` names (``hub`` or ``hub:<url>``) are resolved when loading.
    Returns the configuration to use (``weights`` cleared in the random fallback).
    """
    weights = cfg.weights
    if cfg.backend != "torch" or not weights or weights.startswith("hub") or Path(weights).is_file():
        return cfg
    if Path(weights).exists():
        raise ConfigError(f"parameter 'weights': {weights} is not a regular file")
    if not cfg.allow_random_weights:
        raise ConfigError(f"parameter 'weights': file not found: {weights}")
    log.warning("parameter 'weights': file not found: %s; using RANDOM weights (allow_random_weights)", weights)
    return dataclasses.replace(cfg, weights="")
