"""The faiss side of the keyframe database: index factory, GPU placement, sizing, search knobs
and the canonical-order search (with the thread pool that splits a flat scan).

Index types (``DatabaseConfig.index``), all inner product on unit vectors (cosine similarity):

* ``flat``  - exact search (``IndexFlatIP``; ``IndexScalarQuantizer`` fp16 with ``fp16``).
  Runs on GPU 0 when faiss reports a GPU (faiss-gpu) and ``use_gpu`` allows it. On CPU a
  single query's scan is split into id ranges searched by parallel threads: it is bound by
  memory bandwidth (10k fp32 keyframes at 8448-D are 338 MB per query; fp16 halves that).
* ``hnsw``  - approximate graph search (``IndexHNSWFlat``, ``IndexHNSWSQ`` with fp16).
* ``ivfpq`` - compressed (``IndexIVFPQ``, ``ivf_pq_m`` bytes per keyframe) for large maps. It
  starts as an exact flat staging index; :func:`train_ivfpq` replaces it once.

This is the only module that knows about faiss-gpu.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faiss
import numpy as np

from salad_ros.params import ConfigError

from .config import PREFIX, DatabaseConfig, DatabaseError

# faiss-gpu's k-selection supports k up to 2048.
GPU_MAX_K = 2048
# Below this many bytes scanned per query a single faiss call is faster than splitting it.
_PARALLEL_MIN_BYTES = 16 << 20
_PARALLEL_MIN_ROWS = 2048

# --------------------------------------------------------------------------------------------
# Device choice


def _num_gpus() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def choose_device(use_gpu: str = "auto", index_type: str = "flat") -> tuple[bool, str]:
    """Decide whether the index runs on a GPU: ``(on_gpu, human-readable reason)``."""
    if use_gpu not in ("auto", "never", "always"):
        raise ConfigError(f"parameter '{PREFIX}use_gpu': {use_gpu!r} is not one of auto, never, always")
    if use_gpu == "never":
        return False, "CPU (use_gpu=never)"
    ngpu = _num_gpus()
    if index_type != "flat":
        if use_gpu == "always":
            raise ConfigError(f"parameter '{PREFIX}use_gpu': 'always' needs index 'flat', got '{index_type}'")
        return False, f"CPU ({index_type} index is CPU-only here)"
    if ngpu > 0:
        return True, f"GPU 0 (faiss reports {ngpu} GPU{'s' if ngpu > 1 else ''})"
    if use_gpu == "always":
        raise DatabaseError(f"{PREFIX}use_gpu=always but faiss reports no GPU (faiss-gpu not installed "
                            "or no device visible)")
    return False, "CPU (faiss reports no GPU)"


def to_gpu(cpu_index: Any, fp16: bool) -> tuple[Any, Any]:
    """Clone a flat CPU index to GPU 0; returns (gpu_index, resources to keep alive)."""
    res = faiss.StandardGpuResources()
    opts = faiss.GpuClonerOptions()
    opts.useFloat16 = fp16  # fp16 storage on the GPU itself
    if isinstance(cpu_index, faiss.IndexScalarQuantizer):  # the GPU clones IndexFlat, not SQ
        cpu_index = _as_flat_fp32(cpu_index)
    return faiss.index_cpu_to_gpu(res, 0, cpu_index, opts), res


def to_cpu(index: Any, on_gpu: bool, fp16: bool) -> Any:
    """The CPU form of an index (as saved): a GPU flat index comes back as fp32 flat or fp16 SQ."""
    if not on_gpu:
        return index
    cpu = faiss.index_gpu_to_cpu(index)
    return _as_sq_fp16(cpu) if fp16 else cpu


def _as_flat_fp32(index: Any, chunk: int = 8192) -> Any:
    out = faiss.IndexFlatIP(index.d)
    for i0 in range(0, index.ntotal, chunk):
        out.add(index.reconstruct_n(i0, min(chunk, index.ntotal - i0)))
    return out


def _as_sq_fp16(index: Any, chunk: int = 8192) -> Any:
    out = faiss.IndexScalarQuantizer(index.d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    for i0 in range(0, index.ntotal, chunk):
        out.add(index.reconstruct_n(i0, min(chunk, index.ntotal - i0)))
    return out


# --------------------------------------------------------------------------------------------
# Construction, training and sizing


def new_cpu_index(dim: int, cfg: DatabaseConfig) -> Any:
    """An empty CPU index for ``cfg``: flat, hnsw, or the flat staging index of ivfpq."""
    if cfg.index == "hnsw":
        if cfg.fp16:
            idx = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        else:
            idx = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = cfg.hnsw_ef_construction
        idx.hnsw.efSearch = cfg.hnsw_ef_search
        return idx
    if cfg.fp16:
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    return faiss.IndexFlatIP(dim)


def auto_pq_m(dim: int) -> int:
    """Largest divisor of ``dim`` that is <= 128 and leaves sub-vectors of >= 4 dimensions."""
    return max([m for m in range(1, min(128, max(1, dim // 4)) + 1) if dim % m == 0])


def train_ivfpq(staging: Any, dim: int, cfg: DatabaseConfig, pq_m: int) -> Any:
    """A trained IVF-PQ index holding the staging index's vectors (same ids)."""
    xs = staging.reconstruct_n(0, staging.ntotal)
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFPQ(quantizer, dim, cfg.ivf_nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
    ivf.train(xs)  # faiss's k-means uses a fixed seed: same data -> same index
    ivf.add(xs)
    ivf.nprobe = cfg.ivf_nprobe
    ivf.make_direct_map()  # lets descriptor() reconstruct (approximately) by id
    return ivf


def is_trained_ivfpq(index: Any) -> bool:
    return isinstance(index, faiss.IndexIVFPQ)


def apply_search_params(index: Any, cfg: DatabaseConfig) -> None:
    """Set the search-time knobs of ``cfg`` (HNSW ef, IVF nprobe) on ``index``."""
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = cfg.hnsw_ef_search
        index.hnsw.efConstruction = cfg.hnsw_ef_construction
    if isinstance(index, faiss.IndexIVF):
        index.nprobe = cfg.ivf_nprobe


def expected_classes(kind: str, fp16: bool, trained: bool) -> tuple[str, ...]:
    """faiss class names a saved index of this kind may have."""
    if kind == "hnsw":
        return ("IndexHNSWSQ",) if fp16 else ("IndexHNSWFlat",)
    if kind == "ivfpq" and trained:
        return ("IndexIVFPQ",)
    return ("IndexScalarQuantizer",) if fp16 else ("IndexFlatIP", "IndexFlat")


def index_nbytes(index: Any, on_gpu: bool, dim: int, fp16: bool) -> int:
    """Bytes held by the index's vectors/codes and structures (excluding small constants)."""
    n = index.ntotal
    if on_gpu:
        return n * dim * (2 if fp16 else 4)
    if isinstance(index, faiss.IndexHNSW):
        h = index.hnsw
        graph = h.neighbors.size() * 4 + h.offsets.size() * 8 + h.levels.size() * 4
        return n * index.storage.sa_code_size() + graph
    if isinstance(index, faiss.IndexIVFPQ):
        codes = index.invlists.compute_ntotal() * (index.code_size + 8)  # codes + ids
        return (codes + index.quantizer.ntotal * dim * 4 + index.pq.centroids.size() * 4
                + index.precomputed_table.size() * 4)
    return n * index.sa_code_size()


# --------------------------------------------------------------------------------------------
# Search


def search_sorted(index: Any, q: np.ndarray, k: int, on_gpu: bool) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` ``(scores, ids)`` of unit queries ``q`` in canonical order (score desc, id asc),
    scores clipped to [-1, 1]; missing results are id -1, score -inf."""
    n = index.ntotal
    threads = faiss.omp_get_max_threads()
    if not on_gpu and isinstance(index, faiss.IndexFlatCodes) and len(q) < threads:
        # few queries: faiss would scan on one core (and the fp16 scanner still opens an
        # OpenMP team that stalls when the cores are busy), so scan in our own workers
        parts = 1
        if n * index.sa_code_size() >= _PARALLEL_MIN_BYTES:
            parts = max(1, min(threads, n // _PARALLEL_MIN_ROWS))
        dist, idx = _search_ranges(index, q, k, parts)
    else:
        dist, idx = index.search(q, k)
    dist = np.where(idx >= 0, np.clip(dist, -1.0, 1.0), -np.inf).astype(np.float32)
    order = np.lexsort((np.where(idx >= 0, idx, np.iinfo(np.int64).max), -dist), axis=-1)[:, :k]
    rows = np.arange(len(q))[:, None]
    return dist[rows, order], idx[rows, order]


def _search_ranges(index: Any, q: np.ndarray, k: int, parts: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a flat scan into id ranges searched in parallel threads (faiss drops the GIL):
    one query is otherwise scanned by a single core, and the scan is bandwidth-bound."""
    n = index.ntotal
    bounds = np.linspace(0, n, parts + 1).astype(np.int64)

    def run(i: int) -> tuple[np.ndarray, np.ndarray]:
        if parts == 1:
            return index.search(q, k)
        sel = faiss.IDSelectorRange(int(bounds[i]), int(bounds[i + 1]))
        params = faiss.SearchParameters(sel=sel)
        return index.search(q, k, params=params)

    results = list(_pool().map(run, range(parts)))
    return np.concatenate([r[0] for r in results], axis=1), np.concatenate([r[1] for r in results], axis=1)


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            # Each worker scans its id range on one core: OpenMP teams inside the workers would
            # oversubscribe the cores (per-thread setting; the caller's threads are unaffected).
            _POOL = ThreadPoolExecutor(max(1, faiss.omp_get_max_threads()), thread_name_prefix="salad_db",
                                       initializer=lambda: faiss.omp_set_num_threads(1))
        return _POOL
