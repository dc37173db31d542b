"""TensorRT inference backend: a serialised engine from ``python -m export.tensorrt``.

Device buffers are torch CUDA tensors (no pycuda / cuda-python needed): the engine reads the
preprocessed batch in place and writes descriptors into a tensor allocated here, on torch's
current stream. Engines are specific to one GPU model and TensorRT version; the sidecar
``<engine>.json`` written next to the engine records both, plus the ONNX metadata (model name,
input size, variant), and a mismatch is refused before deserialising.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ..descriptors import l2_normalize
from ..model import preprocess, resolve_device
from ..params import ConfigError
from .contract import INPUT_NAME, OUTPUT_NAME, check_export_metadata, run_in_batches
from .encoder import Encoder
from .model_config import ModelConfig

log = logging.getLogger(__name__)


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a CUDA device is missing; the message says which (it doubles as a skip reason)."""


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or :class:`TensorRTUnavailable` saying why it is not importable."""
    try:
        import tensorrt
    except Exception as exc:  # noqa: BLE001 - a broken install fails with OSError/ImportError alike
        raise TensorRTUnavailable(f"tensorrt not importable ({type(exc).__name__}: {exc})") from exc
    return tensorrt


def require_cuda(device: str = "auto") -> torch.device:
    """The CUDA device to run TensorRT on, or :class:`TensorRTUnavailable` when there is none."""
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("no CUDA device (torch.cuda.is_available() is False)")
    if device == "cpu":
        raise TensorRTUnavailable("TensorRT runs on CUDA devices only, device 'cpu' was requested")
    dev = resolve_device("cuda" if device == "auto" else device)
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def unavailable_reason() -> str | None:
    """Why the TensorRT path cannot run on this machine (missing package or GPU), or None."""
    try:
        import_tensorrt()
        require_cuda()
    except TensorRTUnavailable as exc:
        return str(exc)
    return None


def gpu_identity(device: torch.device) -> tuple[str, str]:
    """``(GPU name, compute capability)``: what an engine is tied to besides the TensorRT version."""
    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f"{major}.{minor}"


def sidecar_path(engine: str | Path) -> Path:
    """Where the metadata of ``engine`` lives: ``<engine>.json``."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def read_engine_metadata(engine: str | Path) -> dict[str, Any]:
    """The sidecar metadata of an engine; a missing or unreadable sidecar is a clear error."""
    path = sidecar_path(engine)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"parameter 'engine': {engine} has no metadata file {path}; build engines with 'python -m export.tensorrt'"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"parameter 'engine': cannot read {path}: {exc}") from exc


def check_engine_runtime(meta: Mapping[str, Any], trt_version: str, gpu_name: str, capability: str, source: str) -> None:
    """Refuse an engine built for another TensorRT version or GPU model (it would not deserialise,
    or worse, run with kernels tuned for another device)."""
    built = (meta.get("tensorrt_version"), meta.get("gpu"), meta.get("compute_capability"))
    if built != (trt_version, gpu_name, capability):
        raise ConfigError(
            f"parameter 'engine': {source} was built with TensorRT {built[0]} for {built[1]} (sm {built[2]}), "
            f"this machine has TensorRT {trt_version} and {gpu_name} (sm {capability}); rebuild it here with "
            "'python -m export.tensorrt --onnx MODEL.onnx --precision ... --out ...'"
        )


_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16}


class TensorRTRunner:
    """Executes a serialised engine on torch CUDA tensors (input ``images``, output ``descriptors``)."""

    def __init__(self, engine: bytes, device: torch.device, trt: ModuleType | None = None) -> None:
        self.trt = trt or import_tensorrt()
        self.device = device
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        with torch.cuda.device(device):
            self.runtime = self.trt.Runtime(self.logger)
            self.engine = self.runtime.deserialize_cuda_engine(engine)
            if self.engine is None:
                raise RuntimeError("TensorRT could not deserialise the engine (see the TensorRT log above)")
            self.context = self.engine.create_execution_context()
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        if not {INPUT_NAME, OUTPUT_NAME} <= names:
            raise RuntimeError(f"engine has tensors {sorted(names)}, expected '{INPUT_NAME}' and '{OUTPUT_NAME}'")
        shape = tuple(self.engine.get_tensor_shape(INPUT_NAME))
        self.input_size = (int(shape[2]), int(shape[3]))
        self.fixed_batch = int(shape[0]) if shape[0] > 0 else None
        if self.fixed_batch is None:
            _, _, max_shape = self.engine.get_tensor_profile_shape(INPUT_NAME, 0)
            self.max_batch = int(max_shape[0])
        else:
            self.max_batch = self.fixed_batch
        self.input_dtype = _TORCH_DTYPES[self.engine.get_tensor_dtype(INPUT_NAME).name]
        self.output_dtype = _TORCH_DTYPES[self.engine.get_tensor_dtype(OUTPUT_NAME).name]

    def _execute(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, self.input_dtype).contiguous()
        if not self.context.set_input_shape(INPUT_NAME, tuple(x.shape)):
            raise RuntimeError(f"engine refused input shape {tuple(x.shape)} (batch range up to {self.max_batch})")
        out_shape = tuple(self.context.get_tensor_shape(OUTPUT_NAME))
        out = torch.empty(out_shape, dtype=self.output_dtype, device=self.device)
        self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
        self.context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed (see the TensorRT log above)")
        stream.synchronize()
        return out.float()

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Descriptors for a normalised batch ``[B, 3, H, W]`` (any B: split and padded as needed)."""
        with torch.cuda.device(self.device):
            return run_in_batches(x, self._execute, self.fixed_batch, self.max_batch)


class TensorRTEncoder(Encoder):
    backend = "tensorrt"

    def __init__(self, cfg: ModelConfig) -> None:
        try:
            trt = import_tensorrt()
            self._device = require_cuda(cfg.device)
        except TensorRTUnavailable as exc:
            raise ConfigError(f"parameter 'backend': tensorrt cannot run here: {exc}") from exc
        except RuntimeError as exc:
            raise ConfigError(f"parameter 'device': {exc}") from exc
        path = Path(cfg.engine)
        if path.suffix == ".onnx":
            raise ConfigError(
                f"parameter 'engine': backend tensorrt takes a built engine, not {path}; build one with "
                f"'python -m export.tensorrt --onnx {path} --precision {cfg.precision} --out {path.with_suffix('.engine')}' "
                "or use backend: onnxruntime"
            )
        if not path.is_file():
            raise ConfigError(f"parameter 'engine': TensorRT engine {path} does not exist")
        meta = read_engine_metadata(path)
        check_export_metadata(meta, cfg, path)
        check_engine_runtime(meta, trt.__version__, *gpu_identity(self._device), str(path))
        self.runner = TensorRTRunner(path.read_bytes(), self._device, trt)
        size = int(meta["image_size"])
        if self.runner.input_size != (size, size):
            raise ConfigError(f"parameter 'engine': {path} takes {self.runner.input_size} inputs, metadata says {size}")
        self.input_size = (size, size)
        self.dim = int(meta["descriptor_dim"])
        self.model_name = meta["model_name"]
        self.metadata: Mapping[str, Any] = meta
        self.device = str(self._device)
        log.info("tensorrt: %s (%s, TensorRT %s)", path, meta["precision"], trt.__version__)

    def encode(self, images: Sequence[np.ndarray], color: str = "rgb") -> np.ndarray:
        x = preprocess(images, self.input_size, color, self._device)
        return l2_normalize(self.runner.run(x).cpu().numpy())
