"""ONNX Runtime inference backend: an exported ``.onnx`` on the CPU, CUDA or TensorRT provider.

The ONNX file (from ``python -m export.onnx``) takes normalised float32 ``images [B, 3, H, W]``
and returns ``descriptors [B, dim]``; its metadata names the model, so descriptors get the same
``model_name`` as the PyTorch backend with the same weights and input size.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..descriptors import l2_normalize
from ..model import preprocess
from ..params import ConfigError
from .contract import INPUT_NAME, OUTPUT_NAME, check_export_metadata, default_cache_dir, read_onnx_export, run_in_batches
from .encoder import Encoder
from .model_config import ModelConfig

log = logging.getLogger(__name__)


def _cuda_index(device: str) -> int:
    return int(device.split(":", 1)[1]) if ":" in device else 0


def select_providers(
    device: str, available: Sequence[str], tensorrt_installed: bool, cache_dir: str | Path | None = None
) -> list[str | tuple[str, dict[str, Any]]]:
    """Execution providers for ``device`` (auto, cpu, cuda, cuda:N), best first, CPU last.

    ``TensorrtExecutionProvider`` is listed by every onnxruntime-gpu build, even without TensorRT's
    libraries, so it is only used when ``tensorrt_installed``; its engines are cached on disk.
    """
    if device == "cpu":
        return ["CPUExecutionProvider"]
    index = _cuda_index(device)
    gpu: list[str | tuple[str, dict[str, Any]]] = []
    if "TensorrtExecutionProvider" in available and tensorrt_installed:
        # No trt_fp16_enable: the precision comes from the file (an fp16 export keeps its fp32 islands).
        opts: dict[str, Any] = {"device_id": index}
        if cache_dir:
            opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir))
        gpu.append(("TensorrtExecutionProvider", opts))
    if "CUDAExecutionProvider" in available:
        gpu.append(("CUDAExecutionProvider", {"device_id": index}))
    if device != "auto" and not gpu:
        raise ConfigError(
            f"parameter 'device': {device} requested but this onnxruntime has no CUDA provider "
            f"(available: {', '.join(available)}); install onnxruntime-gpu or use device: cpu"
        )
    return [*gpu, "CPUExecutionProvider"]


class OnnxRuntimeEncoder(Encoder):
    backend = "onnxruntime"

    def __init__(self, cfg: ModelConfig) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ConfigError(f"parameter 'backend': onnxruntime is not importable ({exc}); pip install onnxruntime") from exc
        path, meta = read_onnx_export(cfg.engine, "onnxruntime")
        check_export_metadata(meta, cfg, path)
        providers = select_providers(
            cfg.device, ort.get_available_providers(), importlib.util.find_spec("tensorrt") is not None,
            default_cache_dir("onnxruntime_tensorrt"),
        )
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about pruned initializers are noise here
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # torch's thread count (OMP_NUM_THREADS where set): one knob for every CPU backend.
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        inputs = {i.name: i for i in self.session.get_inputs()}
        if INPUT_NAME not in inputs or OUTPUT_NAME not in {o.name for o in self.session.get_outputs()}:
            raise ConfigError(f"parameter 'engine': {path} lacks the '{INPUT_NAME}' input or '{OUTPUT_NAME}' output")
        batch = inputs[INPUT_NAME].shape[0]
        self.fixed_batch = batch if isinstance(batch, int) else None
        self.max_batch = cfg.batch_size
        size = int(meta["image_size"])
        self.input_size = (size, size)
        self.dim = int(meta["descriptor_dim"])
        self.model_name = meta["model_name"]
        self.metadata: Mapping[str, str] = meta
        used = self.session.get_providers()
        self.device = "cpu" if used[0] == "CPUExecutionProvider" else f"cuda:{_cuda_index(cfg.device)} ({used[0]})"
        log.info("onnxruntime: %s with providers %s", path, ", ".join(used))

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

    def encode(self, images: Sequence[np.ndarray], color: str = "rgb") -> np.ndarray:
        x = np.ascontiguousarray(preprocess(images, self.input_size, color, "cpu").numpy())
        return l2_normalize(run_in_batches(x, self._run, self.fixed_batch, self.max_batch))
