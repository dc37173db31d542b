"""Inference backends: one interface, ``encode(uint8 images) -> descriptors``.

``backend`` selects the implementation: ``torch`` (CPU/CUDA, fp32/fp16/bf16), and, where the
export package's runtimes are installed, ``onnxruntime``, ``openvino`` (CPU, fp32/bf16) and
``tensorrt``. All share the same preprocessing (:func:`salad_ros.model.preprocess`), so descriptors
are comparable across them.

Modules: :mod:`.model_config` (what to run), :mod:`.encoder` (the interface), :mod:`.factory`
(building one), :mod:`.contract` (what an exported model must look like), :mod:`.cpu_features` (native
bf16 on this CPU?), then one module per backend.
"""

from ..descriptors import l2_normalize
from ..fileio import file_fingerprint
from .contract import EXPORT_METADATA_KEYS, INPUT_NAME, OUTPUT_NAME, check_export_metadata
from .encoder import RANDOM_FINGERPRINT, Encoder, is_random_model_name
from .factory import create_encoder
from .model_config import BACKENDS, ModelConfig, check_weights_file

__all__ = [
    "BACKENDS", "EXPORT_METADATA_KEYS", "INPUT_NAME", "OUTPUT_NAME", "RANDOM_FINGERPRINT", "Encoder", "ModelConfig",
    "check_export_metadata", "check_weights_file", "create_encoder", "file_fingerprint", "is_random_model_name",
    "l2_normalize",
]
