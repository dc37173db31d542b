"""Build the encoder a :class:`ModelConfig` names."""

from __future__ import annotations

from ..params import ConfigError
from .encoder import Encoder
from .model_config import BACKENDS, ModelConfig


def create_encoder(cfg: ModelConfig) -> Encoder:
    """Build the encoder ``cfg.backend`` names; errors say what is missing."""
    if cfg.backend == "torch":
        from .torch_backend import TorchEncoder

        return TorchEncoder(cfg)
    if cfg.backend == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeEncoder

        return OnnxRuntimeEncoder(cfg)
    if cfg.backend == "openvino":
        from .openvino_backend import OpenVINOEncoder

        return OpenVINOEncoder(cfg)
    if cfg.backend == "tensorrt":
        from .tensorrt_backend import TensorRTEncoder

        return TensorRTEncoder(cfg)
    raise ConfigError(f"parameter 'backend': '{cfg.backend}' is not one of {', '.join(BACKENDS)}")
