"""GPU paths: torch on CUDA (fp32, fp16, bf16), onnxruntime's CUDA provider, faiss-gpu's flat index.

Every test here is marked ``gpu`` and skips, naming the reason, on a machine without the device or
package; ``scripts/gpu_check.sh`` runs them (``pytest -m gpu``) on a CUDA machine and fails if any
of them still skips. The TensorRT tests in test_export.py and test_backends.py carry the same mark.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.compare import check_agreement, synthetic_images
from salad_ros.backends import ModelConfig, create_encoder

pytestmark = pytest.mark.gpu

SIZE = 224
MODEL = {"backbone": "dinov2_vits14", "image_size": SIZE}
NO_CUDA = None if torch.cuda.is_available() else "no CUDA device (torch.cuda.is_available() is False)"
needs_cuda = pytest.mark.skipif(NO_CUDA is not None, reason=NO_CUDA or "")


def _ort_cuda_problem() -> str | None:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return f"onnxruntime not importable ({exc})"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu instead of onnxruntime)"
    return NO_CUDA


def _faiss_gpu_problem() -> str | None:
    import faiss

    ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return None if ngpu > 0 else "faiss reports no GPU (faiss-cpu installed, or no device visible)"


@pytest.fixture(scope="module")
def reference() -> tuple[list[np.ndarray], np.ndarray]:
    images = synthetic_images(3, SIZE, seed=5)
    cpu = create_encoder(ModelConfig(allow_random_weights=True, device="cpu", **MODEL))
    return images, cpu.encode(images)


@needs_cuda
@pytest.mark.parametrize("precision, min_cosine", [("fp32", 0.9999), ("fp16", 0.999), ("bf16", 0.999)])
def test_torch_on_cuda_matches_the_cpu(reference, precision, min_cosine):
    images, expected = reference
    enc = create_encoder(ModelConfig(allow_random_weights=True, device="cuda", precision=precision, **MODEL))
    assert enc.device.startswith("cuda")
    report = check_agreement(expected, enc.encode(images), min_cosine=min_cosine)
    assert report.passed, report.summary()
    assert enc.heatmap(images[0]).shape == (SIZE // 14, SIZE // 14)


@pytest.mark.skipif(_ort_cuda_problem() is not None, reason=_ort_cuda_problem() or "")
def test_onnxruntime_cuda_provider_matches_torch(reference, tmp_path):
    from export import onnx as xonnx

    path = tmp_path / "s224.onnx"
    assert xonnx.main(["--random-weights", "--backbone", "dinov2_vits14", "--image-size", str(SIZE), "--out", str(path),
                       "--verify-count", "2", "--quiet"]) == 0
    images, expected = reference
    enc = create_encoder(ModelConfig(backend="onnxruntime", engine=str(path), device="cuda", **MODEL))
    assert enc.device.startswith("cuda"), f"onnxruntime fell back to {enc.device}"
    report = check_agreement(expected, enc.encode(images), min_cosine=0.9999)
    assert report.passed, report.summary()


@pytest.mark.skipif(_faiss_gpu_problem() is not None, reason=_faiss_gpu_problem() or "")
@pytest.mark.parametrize("fp16", [False, True])
def test_gpu_flat_index_finds_what_the_cpu_index_finds(fp16):
    from salad_ros.database import KeyframeDatabase

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 256)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    queries = x[rng.choice(len(x), 20, replace=False)] + 0.05 * rng.standard_normal((20, 256)).astype(np.float32)
    found = []
    for use_gpu in ("always", "never"):
        db = KeyframeDatabase(256, "flat", fp16=fp16, use_gpu=use_gpu)
        db.add(x, np.arange(len(x), dtype=np.int64))
        found.append(db.search(queries, 5))
    (gpu_ids, _, gpu_scores), (cpu_ids, _, cpu_scores) = found
    np.testing.assert_array_equal(gpu_ids[:, 0], cpu_ids[:, 0])
    np.testing.assert_allclose(gpu_scores, cpu_scores, atol=2e-3 if fp16 else 1e-5)
