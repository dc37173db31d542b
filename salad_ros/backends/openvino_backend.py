"""OpenVINO inference backend: the project's ONNX export compiled for the CPU, in fp32 or bf16.

The ``.onnx`` file from ``python -m export.onnx`` is read and checked exactly as the onnxruntime
backend does (same metadata, same refusals). The file is always an fp32 graph; ``precision``
picks OpenVINO's inference precision: ``fp32`` (``f32``, same descriptors as onnxruntime) or
``bf16`` (only where :mod:`.cpu_features` finds native bf16 arithmetic). ``fp16`` stays with
CUDA/TensorRT.

Compiled models are cached (OpenVINO ``CACHE_DIR``) under ``default_cache_dir("openvino")``, one
folder per OpenVINO version and ONNX content hash, so the second start skips compilation. A cache
that cannot be used (written by another version, damaged, not writable) is cleared with a
warning and the model compiled without it: never an error. Threads: ``INFERENCE_NUM_THREADS`` is
torch's thread count (``OMP_NUM_THREADS`` where set), so one knob sets both.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ..descriptors import l2_normalize
from ..fileio import file_fingerprint
from ..model import preprocess
from ..params import ConfigError, one_line
from .contract import INPUT_NAME, OUTPUT_NAME, check_export_metadata, default_cache_dir, read_onnx_export, run_in_batches
from .cpu_features import require_cpu_bf16
from .encoder import Encoder
from .model_config import ModelConfig

log = logging.getLogger(__name__)

#: ``precision`` parameter -> OpenVINO ``INFERENCE_PRECISION_HINT``.
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}


def import_openvino() -> ModuleType:
    """The ``openvino`` module, or a :class:`ConfigError` naming the backend parameter."""
    try:
        import openvino
    except Exception as exc:  # noqa: BLE001 - a broken install fails with OSError/ImportError alike
        raise ConfigError(
            f"parameter 'backend': openvino is not importable ({type(exc).__name__}: {exc}); pip install openvino"
        ) from exc
    return openvino


def default_threads() -> int:
    """CPU threads for inference: torch's count, which follows ``OMP_NUM_THREADS`` where set."""
    return max(1, torch.get_num_threads())


def compile_properties(precision: str, threads: int) -> dict[str, Any]:
    """OpenVINO CPU properties for ``precision`` (fp32/bf16). The precision is always explicit:
    OpenVINO's default on a bf16-capable CPU is bf16, which must not happen behind fp32's back."""
    if precision not in PRECISION_HINTS:
        raise ConfigError(f"parameter 'precision': backend openvino computes in fp32 or bf16, not {precision}")
    return {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision], "INFERENCE_NUM_THREADS": int(threads),
            "PERFORMANCE_HINT": "LATENCY"}


def cache_dir_for(onnx_path: str | Path, ov_version: str, root: str | Path | None = None) -> Path:
    """Compiled-model cache folder of one ONNX file under one OpenVINO version: other versions
    and other files never share (or read) it."""
    version = re.sub(r"[^0-9A-Za-z.]+", "_", ov_version.split("-releases")[0]).strip("_")
    root = Path(root) if root else default_cache_dir("openvino")
    return root / f"ov{version}-{file_fingerprint(onnx_path)}"


def remove_stale_caches(cache_dir: Path) -> list[Path]:
    """Delete the caches of the same ONNX file left by other OpenVINO versions (they are never
    read again); returns what was removed."""
    suffix = "-" + cache_dir.name.rsplit("-", 1)[-1]
    stale = [d for d in cache_dir.parent.glob(f"ov*{suffix}") if d != cache_dir and d.is_dir()]
    for d in stale:
        shutil.rmtree(d, ignore_errors=True)
        log.info("openvino: removed the cache of another OpenVINO version %s", d)
    return stale


def compile_onnx(ov: ModuleType, path: str | Path, properties: Mapping[str, Any], cache_dir: Path | None) -> Any:
    """Compile ``path`` for the CPU, through the cache when ``cache_dir`` is given.

    If compiling with the cache fails for any reason, the cache folder is removed and the model
    compiled once more without it (a warning says so); only a failure then is an error.
    """
    core = ov.Core()
    if cache_dir is not None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_caches(cache_dir)
            return core.compile_model(str(path), "CPU", {**properties, "CACHE_DIR": str(cache_dir)})
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError; a bad folder OSError
            log.warning("openvino: compiling %s with the cache %s failed (%s); cleared it, compiling without the cache",
                        path, cache_dir, one_line(exc))
            shutil.rmtree(cache_dir, ignore_errors=True)
    try:
        return core.compile_model(str(path), "CPU", dict(properties))
    except Exception as exc:  # noqa: BLE001 - any failure here is a file OpenVINO cannot run
        raise ConfigError(f"parameter 'engine': OpenVINO cannot compile {path}: {one_line(exc)}") from exc


def _port(ports: Sequence[Any], name: str) -> Any | None:
    return next((p for p in ports if name in p.get_names()), None)


class OpenVINOEncoder(Encoder):
    backend = "openvino"

    def __init__(self, cfg: ModelConfig, *, threads: int | None = None, cache: bool = True) -> None:
        ov = import_openvino()
        # ModelConfig.validate has refused fp16 and CUDA devices for this backend.
        if cfg.precision == "bf16":
            require_cpu_bf16("openvino")
        path, meta = read_onnx_export(cfg.engine, "openvino")
        if meta.get("precision", "fp32") != "fp32":
            raise ConfigError(
                f"parameter 'engine': {path} is a {meta['precision']} export (for GPUs); backend openvino needs an fp32 "
                "export and applies precision fp32 or bf16 itself: export one without --precision"
            )
        # The file is fp32; the configured precision is OpenVINO's, so it is checked above, not here.
        check_export_metadata(meta, dataclasses.replace(cfg, precision="fp32"), path)
        self.threads = threads or default_threads()
        properties = compile_properties(cfg.precision, self.threads)
        self.cache_dir = cache_dir_for(path, ov.__version__) if cache else None
        self.compiled = compile_onnx(ov, path, properties, self.cache_dir)
        image_port, desc_port = _port(self.compiled.inputs, INPUT_NAME), _port(self.compiled.outputs, OUTPUT_NAME)
        if image_port is None or desc_port is None:
            raise ConfigError(f"parameter 'engine': {path} lacks the '{INPUT_NAME}' input or '{OUTPUT_NAME}' output")
        computed = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if computed != properties["INFERENCE_PRECISION_HINT"]:
            raise ConfigError(
                f"parameter 'precision': OpenVINO compiled {path} for {computed} instead of {cfg.precision}; use precision: fp32"
            )
        batch = image_port.get_partial_shape()[0]
        self.fixed_batch = batch.get_length() if batch.is_static else None
        self.max_batch = cfg.batch_size
        self._request = self.compiled.create_infer_request()
        self._output = desc_port
        size = int(meta["image_size"])
        self.input_size = (size, size)
        self.dim = int(meta["descriptor_dim"])
        self.model_name = meta["model_name"]
        self.metadata: Mapping[str, str] = meta
        self.precision = cfg.precision
        self.device = "cpu"
        self.openvino_version = ov.__version__
        log.info("openvino %s: %s on CPU in %s, %d threads, cache %s", ov.__version__, path, cfg.precision,
                 self.threads, self.cache_dir or "off")

    def _run(self, x: np.ndarray) -> np.ndarray:
        result = self._request.infer({INPUT_NAME: x})
        return np.array(result[self._output], dtype=np.float32, copy=True)

    def encode(self, images: Sequence[np.ndarray], color: str = "rgb") -> np.ndarray:
        x = np.ascontiguousarray(preprocess(images, self.input_size, color, "cpu").numpy())
        return l2_normalize(run_in_batches(x, self._run, self.fixed_batch, self.max_batch))
