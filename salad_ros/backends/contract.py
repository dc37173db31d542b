"""The contract between ``export/`` and the backends that run exported models.

An exported model (ONNX file, TensorRT engine) takes normalised float32 ``images [B, 3, H, W]``
named :data:`INPUT_NAME` and returns ``descriptors [B, dim]`` named :data:`OUTPUT_NAME`; it carries
the metadata :data:`EXPORT_METADATA_KEYS` (ONNX ``metadata_props``, engine sidecar JSON), which
:func:`check_export_metadata` compares with the configuration before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from ..params import ConfigError, one_line
from .model_config import ModelConfig

INPUT_NAME = "images"
OUTPUT_NAME = "descriptors"

#: Metadata every exported model carries (ONNX ``metadata_props``, TensorRT engine sidecar JSON).
EXPORT_METADATA_KEYS = (
    "model_name", "variant", "backbone", "descriptor", "image_size", "descriptor_dim", "precision",
    "weights_fingerprint",
)

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file, read without loading its weights; a file that is not
    ONNX (corrupt, truncated, another format) is a :class:`ConfigError` naming ``engine``."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends share no useful base
        raise ConfigError(
            f"parameter 'engine': {path} is not a readable ONNX file ({one_line(exc)}); re-export it with 'python -m export.onnx'"
        ) from exc
    return {p.key: p.value for p in model.metadata_props}


def read_onnx_export(engine: str, backend: str) -> tuple[Path, dict[str, str]]:
    """The ``engine`` ONNX file of an ONNX-reading backend and its metadata, or a ConfigError
    naming ``engine`` (missing, not ``.onnx``, not an ONNX file)."""
    path = Path(engine)
    if not path.is_file():
        raise ConfigError(f"parameter 'engine': ONNX file {path} does not exist")
    if path.suffix != ".onnx":
        raise ConfigError(f"parameter 'engine': backend {backend} takes an .onnx file, got {path}")
    return path, read_onnx_metadata(path)


def check_export_metadata(meta: Mapping[str, str], cfg: ModelConfig, source: str | Path) -> None:
    """Refuse an exported model (``source``) whose metadata disagrees with ``cfg``.

    The input size, backbone and descriptor variant are baked into an exported graph, so a
    mismatch cannot be fixed at run time; the message says which parameter to change or how to
    re-export. When ``cfg.weights`` is set, its fingerprint must match the exported weights.
    """
    from ..fileio import file_fingerprint

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


def run_in_batches(
    x: ArrayT, fn: Callable[[ArrayT], ArrayT], fixed_batch: int | None, max_batch: int | None = None
) -> ArrayT:
    """Apply ``fn`` to ``x`` in chunks along the batch axis and concatenate the results.

    A model exported with a static batch ``fixed_batch`` only accepts exactly that many images,
    so the last chunk is padded by repeating its last image and the extra rows are dropped.
    """
    n = x.shape[0]
    step = fixed_batch or max_batch or n
    is_torch = isinstance(x, torch.Tensor)
    outs = []
    for start in range(0, n, step):
        chunk = x[start:start + step]
        real = chunk.shape[0]
        if fixed_batch and real < fixed_batch:
            pad = chunk[-1:].repeat(fixed_batch - real, *([1] * (chunk.dim() - 1))) if is_torch else \
                np.repeat(chunk[-1:], fixed_batch - real, axis=0)
            chunk = torch.cat([chunk, pad]) if is_torch else np.concatenate([chunk, pad])
        outs.append(fn(chunk)[:real])
    return torch.cat(outs) if is_torch else np.concatenate(outs)


def default_cache_dir(kind: str) -> Path:
    """Per-user cache directory for compiled engines (``$SALAD_ROS_CACHE`` or ~/.cache/salad_ros)."""
    import os

    root = os.environ.get("SALAD_ROS_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "salad_ros"
    return Path(root) / kind
