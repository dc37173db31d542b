"""DINOv2 SALAD in plain PyTorch (no torchvision, no timm).

Public API: :class:`DinoSalad`, :func:`load_model`, :func:`build_model`, :func:`preprocess`.
"""

from .backbone import BACKBONES, PATCH_SIZE, DinoV2Backbone, backbone_spec, grid_size
from .dinosalad import (
    DINOV2_URLS,
    SALAD_RELEASE_URL,
    VARIANTS,
    CheckpointError,
    DinoSalad,
    build_model,
    check_state,
    load_model,
    load_state,
    read_checkpoint,
    read_state_dict,
    resolve_device,
    variant_dims,
    weights_file,
)
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, input_size, preprocess
from .salad import SALAD, assignment_log_probs, log_sinkhorn

__all__ = [
    "BACKBONES", "DINOV2_URLS", "IMAGENET_MEAN", "IMAGENET_STD", "PATCH_SIZE", "SALAD", "SALAD_RELEASE_URL",
    "VARIANTS", "CheckpointError", "DinoSalad", "DinoV2Backbone", "assignment_log_probs", "backbone_spec",
    "build_model", "check_state", "grid_size", "input_size", "load_model", "load_state", "log_sinkhorn", "preprocess",
    "read_checkpoint", "read_state_dict", "resolve_device", "variant_dims", "weights_file",
]
