"""Inference backends: one interface, ``encode(uint8 images) -> descriptors``.

``backend`` selects the implementation: ``torch`` (CPU/CUDA, fp32/fp16/bf16), and, where the
export package's runtimes are installed, ``onnxruntime`` and ``tensorrt``. All share the same
preprocessing (:func:`salad_ros.model.preprocess`), so descriptors are comparable across them.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ConfigError, check_fields, param
from ..model import BACKBONES, VARIANTS


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
    precision: str = param("fp32", "Inference precision; fp16/bf16 need CUDA", choices=("fp32", "fp16", "bf16"))
    backend: str = param("torch", "Inference backend", choices=("torch", "onnxruntime", "tensorrt"))
    engine: str = param("", "Exported model for the onnxruntime (.onnx) or tensorrt (.engine) backend")
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

    @property
    def model_file(self) -> str:
        """The file whose identity defines the descriptors (weights or exported engine)."""
        return self.weights if self.backend == "torch" else self.engine


class Encoder(abc.ABC):
    """Computes unit-norm float32 descriptors for batches of uint8 images."""

    backend: str
    #: Descriptor dimension.
    dim: int
    #: Network input ``(height, width)``.
    input_size: tuple[int, int]
    #: Identity of the descriptors: architecture, input size and weights fingerprint.
    model_name: str
    device: str

    @abc.abstractmethod
    def encode(self, images: Sequence[np.ndarray], color: str = "rgb") -> np.ndarray:
        """Descriptors ``float32[B, dim]`` for uint8 ``HxWx3`` images in ``color`` order."""

    def heatmap(self, image: np.ndarray, color: str = "rgb") -> np.ndarray | None:
        """Per-patch non-dustbin assignment mass ``[rows, cols]``, or None if unsupported."""
        return None

    def describe(self) -> str:
        return f"{self.backend} on {self.device}, {self.model_name}, {self.dim}-D"


def file_fingerprint(path: str | Path | None) -> str:
    """Short content hash naming a weights file (``random`` for none)."""
    if not path:
        return "random"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def create_encoder(cfg: ModelConfig) -> Encoder:
    """Build the encoder ``cfg.backend`` names; errors say what is missing."""
    if cfg.backend == "torch":
        from .torch_backend import TorchEncoder

        return TorchEncoder(cfg)
    if cfg.backend == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeEncoder

        return OnnxRuntimeEncoder(cfg)
    if cfg.backend == "tensorrt":
        from .tensorrt_backend import TensorRTEncoder

        return TensorRTEncoder(cfg)
    raise ConfigError(f"parameter 'backend': '{cfg.backend}' is not one of torch, onnxruntime, tensorrt")


#: Metadata every exported model carries (ONNX ``metadata_props``, TensorRT engine sidecar JSON).
EXPORT_METADATA_KEYS = (
    "model_name", "variant", "backbone", "descriptor", "image_size", "descriptor_dim", "precision",
    "weights_fingerprint",
)


def check_export_metadata(meta: Mapping[str, str], cfg: ModelConfig, source: str | Path) -> None:
    """Refuse an exported model (``source``) whose metadata disagrees with ``cfg``.

    The input size, backbone and descriptor variant are baked into an exported graph, so a
    mismatch cannot be fixed at run time; the message says which parameter to change or how to
    re-export. When ``cfg.weights`` is set, its fingerprint must match the exported weights.
    """
    missing = [k for k in EXPORT_METADATA_KEYS if k not in meta]
    if missing:
        raise ConfigError(
            f"parameter 'engine': {source} carries no salad_ros metadata (missing {', '.join(missing)}); "
            "export it with 'python -m export.onnx' (and 'python -m export.tensorrt' for an engine)"
        )
    exported = {"image_size": meta["image_size"], "backbone": meta["backbone"], "descriptor": meta["descriptor"]}
    for name, value in exported.items():
        wanted = str(getattr(cfg, name))
        if value != wanted:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"parameter '{name}': configured {wanted} but {source} was exported with {name} {value}; "
                f"set {name}: {value} or re-export with {flag} {wanted}"
            )
    if meta["precision"] != cfg.precision:
        raise ConfigError(
            f"parameter 'precision': configured {cfg.precision} but {source} computes in {meta['precision']}; "
            f"set precision: {meta['precision']} or export a {cfg.precision} model"
        )
    if cfg.weights and Path(cfg.weights).is_file():
        fingerprint = file_fingerprint(cfg.weights)
        if fingerprint != meta["weights_fingerprint"]:
            raise ConfigError(
                f"parameter 'weights': {cfg.weights} (fingerprint {fingerprint}) is not the checkpoint {source} "
                f"was exported from (fingerprint {meta['weights_fingerprint']}); re-export or clear 'weights'"
            )


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32 (after reduced-precision inference)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
