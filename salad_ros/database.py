"""Keyframe database: an incremental FAISS index of SALAD descriptors plus keyframe records.

Descriptors are L2-normalised on the way in and searched by inner product, so scores are
cosine similarities in [-1, 1]. Index types (``DatabaseConfig.index``):

* ``flat``  - exact search (``IndexFlatIP``; ``IndexScalarQuantizer`` fp16 with ``fp16``).
  Runs on GPU 0 when faiss reports a GPU (faiss-gpu) and ``use_gpu`` allows it. On CPU a
  single query's scan is split into id ranges searched by parallel threads: it is bound by
  memory bandwidth (10k fp32 keyframes at 8448-D are 338 MB per query; fp16 halves that).
* ``hnsw``  - approximate graph search (``IndexHNSWFlat``, ``IndexHNSWSQ`` with fp16).
* ``ivfpq`` - compressed (``IndexIVFPQ``, ``ivf_pq_m`` bytes per keyframe) for large maps.
  Until ``ivf_train_at`` keyframes exist, keyframes go into an exact flat staging index; the
  ``add`` that reaches that count trains IVF-PQ once on every stored descriptor (at 8448-D
  this takes minutes) and re-adds them; the staging vectors are then dropped.

Keyframe ids are 0, 1, 2, ... in insertion order (the database is append-only). Searches
exclude keyframes by over-fetching (k + the number that could be excluded) and filtering.

On-disk format (``FORMAT_NAME`` version ``FORMAT_VERSION``), one directory::

    manifest.json               format, version, dim, model_name, count, index options and,
                                for every data file, its name, byte size and sha256
    index-<gen>.faiss           the CPU faiss index (faiss's own serialisation, no pickle);
                                it is the descriptor store: exact fp32/fp16 vectors for flat
                                and hnsw (so reloading gives identical results), PQ codes for
                                a trained ivfpq index
    keyframes-<gen>.npz         ids int64[N], stamps_ns int64[N], poses float64[N,7]
                                (x y z qx qy qz qw, NaN rows = no pose); loaded without pickle
    records-<gen>.json          {"frame_ids": [...], "metadata": [...]}

``save`` writes the next generation's data files (temporary name, fsync, rename), then
atomically replaces ``manifest.json`` the same way and fsyncs the directory, and only then
deletes the previous generation. A crash at any point leaves the previous manifest pointing at
complete previous files. One writer per directory at a time (an flock on ``.lock``).
``load`` only reads: it checks format, version, dimension, model and every file's size and
checksum before parsing anything and raises :class:`DatabaseError` on any mismatch.

This module imports no rclpy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import faiss
import numpy as np

from salad_ros import config as cfgmod
from salad_ros.config import ConfigError, param

FORMAT_NAME = "salad_ros.keyframe_db"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: Largest JSON size of one keyframe's metadata dict: the table is for small annotations.
MAX_METADATA_BYTES = 16 * 1024

_PREFIX = "database."
_DATA_FILE_RE = re.compile(r"^(index-\d{6}\.faiss|keyframes-\d{6}\.npz|records-\d{6}\.json|manifest\.json)(\.tmp\d+)?$")
_GEN_RE = re.compile(r"^(?:index|keyframes|records)-(\d{6})\.")
# faiss-gpu's k-selection supports k up to 2048.
_GPU_MAX_K = 2048
# Below this many bytes scanned per query a single faiss call is faster than splitting it.
_PARALLEL_MIN_BYTES = 16 << 20
_PARALLEL_MIN_ROWS = 2048


class DatabaseError(ValueError):
    """A database cannot be created, loaded or saved; the message says where and why."""


# --------------------------------------------------------------------------------------------
# Poses


class Pose(NamedTuple):
    """Position [m] and orientation (unit quaternion, x y z w) of a keyframe."""

    x: float
    y: float
    z: float
    qx: float = 0.0
    qy: float = 0.0
    qz: float = 0.0
    qw: float = 1.0

    def distance_to(self, other: Pose) -> float:
        """Translation distance [m]."""
        return translation_distance(self, other)

    def angle_to(self, other: Pose) -> float:
        """Rotation angle [rad] between the two orientations."""
        return rotation_angle(self, other)


def translation_distance(a: Pose, b: Pose) -> float:
    """Euclidean distance between the positions of two poses [m]."""
    return math.sqrt((a.x - b.x) ** 2 + (a.y - b.y) ** 2 + (a.z - b.z) ** 2)


def rotation_angle(a: Pose, b: Pose) -> float:
    """Angle [rad, 0..pi] of the relative rotation between two poses' orientations."""
    qa = np.array([a.qx, a.qy, a.qz, a.qw], dtype=np.float64)
    qb = np.array([b.qx, b.qy, b.qz, b.qw], dtype=np.float64)
    na, nb = np.linalg.norm(qa), np.linalg.norm(qb)
    if na == 0 or nb == 0:
        raise ValueError("a pose has a zero quaternion")
    qa, qb = qa / na, qb / nb
    # relative rotation conj(qa) * qb: w = qa.qb, vector part as below; atan2 stays accurate
    # for small angles where acos(w) would not. abs(w) because q and -q are the same rotation.
    w = float(qa @ qb)
    v = qa[3] * qb[:3] - qb[3] * qa[:3] - np.cross(qa[:3], qb[:3])
    return 2.0 * math.atan2(float(np.linalg.norm(v)), abs(w))


def _pose_row(pose: Any) -> np.ndarray:
    if pose is None:
        return np.full(7, np.nan)
    row = np.asarray(tuple(pose), dtype=np.float64).reshape(-1)
    if row.shape != (7,):
        raise ValueError(f"a pose needs 7 values (x y z qx qy qz qw), got {row.shape[0]}")
    if np.isnan(row).all():
        return row  # an all-NaN row is how "no pose" is stored
    if not np.isfinite(row).all():
        raise ValueError(f"pose has non-finite values: {row.tolist()}")
    if np.linalg.norm(row[3:]) == 0:
        raise ValueError("pose has a zero quaternion")
    return row


def _row_pose(row: np.ndarray) -> Pose | None:
    if np.isnan(row[0]):
        return None
    return Pose(*(float(v) for v in row))


# --------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass
class DatabaseConfig:
    """Index options of the keyframe database (ROS parameters ``database.*``)."""

    index: str = param("flat", "Index type: flat (exact), hnsw (approximate graph, fast on large maps) "
                       "or ivfpq (compressed codes for very large maps)", choices=("flat", "hnsw", "ivfpq"))
    # On by default for the node: exact search is memory-bound, and half the bytes is what keeps a
    # 10k-keyframe search under 10 ms on a 2-core CPU; scores move by ~1e-3, far below any threshold.
    fp16: bool = param(True, "Store descriptors as float16 (scalar quantiser): half the memory and search time, "
                       "scores change by ~1e-3; false = exact fp32")
    use_gpu: str = param("auto", "Flat index on GPU 0: auto (when faiss reports a GPU), never, or "
                         "always (error without one)", choices=("auto", "never", "always"))
    hnsw_m: int = param(32, "HNSW links per node: more gives better recall and more memory", range=(4, 256))
    hnsw_ef_construction: int = param(80, "HNSW candidate list size while inserting", range=(8, 4096))
    hnsw_ef_search: int = param(128, "HNSW candidate list size while searching: recall vs latency",
                                range=(1, 16384))
    ivf_nlist: int = param(256, "IVF-PQ coarse clusters", range=(1, 1 << 20))
    ivf_pq_m: int = param(0, "IVF-PQ sub-quantisers = code bytes per keyframe; must divide the descriptor "
                          "dimension. 0 = auto: the largest divisor <= 128 leaving >= 4 dims each (8448-D: 128)",
                          range=(0, 65536))
    ivf_nprobe: int = param(16, "IVF-PQ clusters visited per search (at most ivf_nlist are)", range=(1, 1 << 20))
    ivf_train_at: int = param(20000, "Keyframe count at which IVF-PQ is trained (exact flat search "
                              "until then); faiss recommends >= 39 * max(ivf_nlist, 256)", range=(1, 1 << 40))

    def __post_init__(self) -> None:
        cfgmod.check_fields(self)

    def validate(self) -> None:
        """Cross-field rules; raises :class:`ConfigError` naming the parameter."""
        if self.use_gpu == "always" and self.index != "flat":
            raise ConfigError(f"parameter '{_PREFIX}use_gpu': 'always' needs index 'flat' "
                              f"(faiss-gpu has no {self.index} index here), got index '{self.index}'")
        need = max(self.ivf_nlist, 256)  # k-means needs at least as many points as centroids
        if self.index == "ivfpq" and self.ivf_train_at < need:
            raise ConfigError(f"parameter '{_PREFIX}ivf_train_at': {self.ivf_train_at} is below "
                              f"{need}, the number of IVF / PQ centroids to train")


# --------------------------------------------------------------------------------------------
# Device choice (the only place that knows about faiss-gpu)


def _num_gpus() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def choose_device(use_gpu: str = "auto", index_type: str = "flat") -> tuple[bool, str]:
    """Decide whether the index runs on a GPU: ``(on_gpu, human-readable reason)``."""
    if use_gpu not in ("auto", "never", "always"):
        raise ConfigError(f"parameter '{_PREFIX}use_gpu': {use_gpu!r} is not one of auto, never, always")
    if use_gpu == "never":
        return False, "CPU (use_gpu=never)"
    ngpu = _num_gpus()
    if index_type != "flat":
        if use_gpu == "always":
            raise ConfigError(f"parameter '{_PREFIX}use_gpu': 'always' needs index 'flat', got '{index_type}'")
        return False, f"CPU ({index_type} index is CPU-only here)"
    if ngpu > 0:
        return True, f"GPU 0 (faiss reports {ngpu} GPU{'s' if ngpu > 1 else ''})"
    if use_gpu == "always":
        raise DatabaseError(f"{_PREFIX}use_gpu=always but faiss reports no GPU (faiss-gpu not installed "
                            "or no device visible)")
    return False, "CPU (faiss reports no GPU)"


def _to_gpu(cpu_index: Any, fp16: bool) -> tuple[Any, Any]:
    """Clone a flat CPU index to GPU 0; returns (gpu_index, resources to keep alive)."""
    res = faiss.StandardGpuResources()
    opts = faiss.GpuClonerOptions()
    opts.useFloat16 = fp16  # fp16 storage on the GPU itself
    if isinstance(cpu_index, faiss.IndexScalarQuantizer):  # the GPU clones IndexFlat, not SQ
        cpu_index = _as_flat_fp32(cpu_index)
    return faiss.index_cpu_to_gpu(res, 0, cpu_index, opts), res


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
# Index construction and sizing


def _new_flat(dim: int, fp16: bool) -> Any:
    if fp16:
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    return faiss.IndexFlatIP(dim)


def _new_hnsw(dim: int, cfg: DatabaseConfig) -> Any:
    if cfg.fp16:
        idx = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    else:
        idx = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    idx.hnsw.efConstruction = cfg.hnsw_ef_construction
    idx.hnsw.efSearch = cfg.hnsw_ef_search
    return idx


def _auto_pq_m(dim: int) -> int:
    """Largest divisor of ``dim`` that is <= 128 and leaves sub-vectors of >= 4 dimensions."""
    return max([m for m in range(1, min(128, max(1, dim // 4)) + 1) if dim % m == 0])


def _expected_classes(kind: str, fp16: bool, trained: bool) -> tuple[str, ...]:
    if kind == "hnsw":
        return ("IndexHNSWSQ",) if fp16 else ("IndexHNSWFlat",)
    if kind == "ivfpq" and trained:
        return ("IndexIVFPQ",)
    return ("IndexScalarQuantizer",) if fp16 else ("IndexFlatIP", "IndexFlat")


def _index_nbytes(index: Any, on_gpu: bool, dim: int, fp16: bool) -> int:
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
# Records


@dataclasses.dataclass(frozen=True)
class Keyframe:
    """One stored keyframe (its descriptor lives in the index)."""

    id: int
    stamp_ns: int
    frame_id: str
    pose: Pose | None
    metadata: dict[str, Any] | None


class _Column:
    """Append-only numpy column with amortised growth."""

    def __init__(self, dtype: Any, width: int | None = None) -> None:
        self._shape = () if width is None else (width,)
        self._buf = np.empty((16, *self._shape), dtype=dtype)
        self._n = 0

    def extend(self, values: np.ndarray) -> None:
        m = len(values)
        if self._n + m > len(self._buf):
            cap = max(2 * len(self._buf), self._n + m)
            buf = np.empty((cap, *self._shape), dtype=self._buf.dtype)
            buf[: self._n] = self._buf[: self._n]
            self._buf = buf
        self._buf[self._n : self._n + m] = values
        self._n += m

    @property
    def view(self) -> np.ndarray:
        return self._buf[: self._n]

    @property
    def nbytes(self) -> int:
        return self._buf.nbytes


# --------------------------------------------------------------------------------------------
# File helpers (module-level so tests can inject failures)


def _replace(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_faiss_index(index: Any, write: Callable[[bytes], None]) -> None:
    """Serialise a CPU faiss index through ``write`` in 1 MiB pieces (no full in-memory copy)."""
    writer = faiss.PyCallbackIOWriter(write)
    faiss.write_index(index, writer)
    del writer  # flushes the writer's last buffer


def _write_atomic(final: Path, produce: Callable[[Callable[[bytes], None]], None]) -> dict[str, Any]:
    """Write ``final`` via a temporary file + fsync + rename; returns its size and sha256."""
    tmp = final.with_name(f"{final.name}.tmp{os.getpid()}")
    digest = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "wb") as fh:

            def write(chunk: bytes) -> None:
                nonlocal size
                mv = memoryview(chunk)
                digest.update(mv)
                fh.write(mv)
                size += mv.nbytes

            produce(write)
            fh.flush()
            os.fsync(fh.fileno())
        _replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"name": final.name, "size": size, "sha256": digest.hexdigest()}


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: temporary file, fsync, rename, fsync the folder."""
    path = Path(path)
    _write_atomic(path, lambda w: w(data))
    _fsync_dir(path.parent)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    with open(directory / ".lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


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


# --------------------------------------------------------------------------------------------
# The database


class KeyframeDatabase:
    """Incremental cosine-similarity index of keyframe descriptors with keyframe records.

    Thread-safe (one internal lock). See the module docstring for index types and format.
    """

    def __init__(self, dim: int, index: str = "flat", fp16: bool = False, *, model_name: str = "",
                 **options: Any) -> None:
        """``options`` are further :class:`DatabaseConfig` fields (``hnsw_m=16``, ...)."""
        self._setup(dim, DatabaseConfig(index=index, fp16=fp16, **options), model_name)
        self._install(self._empty_cpu_index())

    @classmethod
    def from_config(cls, dim: int, cfg: DatabaseConfig, model_name: str = "") -> KeyframeDatabase:
        """A new, empty database with the options of ``cfg``."""
        return cls(dim, model_name=model_name, **dataclasses.asdict(cfg))

    # ----- setup

    def _setup(self, dim: int, cfg: DatabaseConfig, model_name: str) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ConfigError(f"descriptor dimension must be a positive integer, got {dim!r}")
        if not isinstance(model_name, str):
            raise ConfigError(f"model_name must be a string, got {model_name!r}")
        if cfg.index == "ivfpq" and cfg.ivf_pq_m and dim % cfg.ivf_pq_m:
            raise ConfigError(f"parameter '{_PREFIX}ivf_pq_m': {cfg.ivf_pq_m} does not divide the "
                              f"descriptor dimension {dim}")
        self._pq_m = cfg.ivf_pq_m or _auto_pq_m(int(dim))
        self.dim = int(dim)
        self.model_name = model_name
        self.config = cfg
        self._lock = threading.RLock()
        self._on_gpu, self._device_note = choose_device(cfg.use_gpu, cfg.index)
        self._gpu_res: Any = None
        self._stamps = _Column(np.int64)
        self._poses = _Column(np.float64, 7)
        self._frame_ids: list[str] = []
        self._frame_id_pool: dict[str, str] = {}
        self._metadata: list[dict[str, Any] | None] = []
        self._meta_bytes = 0
        self._stamps_sorted = True

    def _empty_cpu_index(self) -> Any:
        if self.config.index == "hnsw":
            return _new_hnsw(self.dim, self.config)
        return _new_flat(self.dim, self.config.fp16)  # flat, or the ivfpq staging index

    def _install(self, cpu_index: Any) -> None:
        if self._on_gpu:
            self._index, self._gpu_res = _to_gpu(cpu_index, self.config.fp16)
        else:
            self._index = cpu_index

    @property
    def trained(self) -> bool:
        """False while an ivfpq database still uses its exact staging index."""
        return self.config.index != "ivfpq" or isinstance(self._index, faiss.IndexIVFPQ)

    @property
    def backend(self) -> str:
        """``"gpu"`` or ``"cpu"``: where the index runs."""
        return "gpu" if self._on_gpu else "cpu"

    def describe(self) -> str:
        """One line: faiss index class, storage, device and size."""
        with self._lock:
            name = type(self._index).__name__
            extra = ""
            if self.config.index == "hnsw":
                extra = f", M={self.config.hnsw_m}, efSearch={self.config.hnsw_ef_search}"
            elif self.config.index == "ivfpq":
                extra = (f", nlist={self.config.ivf_nlist}, pq_m={self._pq_m}, nprobe={self.config.ivf_nprobe}"
                         if self.trained else f", exact staging until {self.config.ivf_train_at} keyframes")
            return (f"faiss {name} ({self.config.index}{', fp16' if self.config.fp16 else ''}{extra}) on "
                    f"{self._device_note}; {len(self)} keyframes of {self.dim}-D"
                    + (f", model '{self.model_name}'" if self.model_name else ""))

    def __len__(self) -> int:
        return len(self._frame_ids)

    def __repr__(self) -> str:
        return f"KeyframeDatabase({self.describe()})"

    # ----- input checks

    def _prepare(self, x: Any, what: str) -> np.ndarray:
        arr = np.asarray(x)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"{what} must have shape (N, {self.dim}), got {np.shape(x)}")
        arr = np.array(arr, dtype=np.float32, order="C", copy=True)
        if not np.isfinite(arr).all():
            raise ValueError(f"{what} contain NaN or infinite values")
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ValueError(f"{what} contain an all-zero vector")
        arr /= norms
        return arr

    # ----- adding

    def add(self, descriptors: np.ndarray, stamps_ns: Any, *, frame_ids: str | Sequence[str] | None = None,
            poses: Sequence[Pose | None] | np.ndarray | None = None,
            metadata: Sequence[dict[str, Any] | None] | None = None) -> np.ndarray:
        """Append keyframes; returns their ids (int64[N]).

        ``stamps_ns`` are integer nanoseconds. ``frame_ids`` is one string for all or one per
        keyframe; ``poses`` one :class:`Pose` (or None) per keyframe or an (N, 7) array with
        NaN rows for "no pose"; ``metadata`` one small JSON-able dict (or None) per keyframe.
        """
        x = self._prepare(descriptors, "descriptors")
        n = len(x)
        stamps = np.asarray(stamps_ns)
        if stamps.ndim == 0:
            stamps = stamps[None]
        if not (np.issubdtype(stamps.dtype, np.integer) or (stamps.size == 0)):
            raise TypeError(f"stamps_ns must be integer nanoseconds, got dtype {stamps.dtype}")
        stamps = stamps.astype(np.int64).reshape(-1)
        if len(stamps) != n:
            raise ValueError(f"got {n} descriptors but {len(stamps)} stamps")
        if frame_ids is None or isinstance(frame_ids, str):
            fids = [frame_ids or ""] * n
        else:
            fids = [str(f) for f in frame_ids]
            if len(fids) != n:
                raise ValueError(f"got {n} descriptors but {len(fids)} frame_ids")
        if poses is None:
            pose_rows = np.full((n, 7), np.nan)
        else:
            pose_rows = np.stack([_pose_row(p) for p in poses]) if len(poses) else np.empty((0, 7))
            if len(pose_rows) != n:
                raise ValueError(f"got {n} descriptors but {len(pose_rows)} poses")
        metas: list[dict[str, Any] | None] = [None] * n if metadata is None else list(metadata)
        if len(metas) != n:
            raise ValueError(f"got {n} descriptors but {len(metas)} metadata entries")
        meta_sizes = [self._check_metadata(m) for m in metas]
        if n == 0:
            return np.empty(0, dtype=np.int64)
        with self._lock:
            first = len(self)
            self._index.add(x)
            self._stamps_sorted = self._stamps_sorted and bool(np.all(np.diff(stamps) >= 0)) and (
                first == 0 or stamps[0] >= self._stamps.view[-1])
            self._stamps.extend(stamps)
            self._poses.extend(pose_rows)
            self._frame_ids.extend(self._frame_id_pool.setdefault(f, f) for f in fids)
            self._metadata.extend(metas)
            self._meta_bytes += sum(meta_sizes)
            if self.config.index == "ivfpq" and not self.trained and len(self) >= self.config.ivf_train_at:
                self._train_ivfpq()
            return np.arange(first, first + n, dtype=np.int64)

    @staticmethod
    def _check_metadata(meta: Any) -> int:
        if meta is None:
            return 0
        if not isinstance(meta, dict):
            raise TypeError(f"keyframe metadata must be a dict or None, got {type(meta).__name__}")
        try:
            size = len(json.dumps(meta, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"keyframe metadata is not JSON-serialisable: {exc}") from exc
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"keyframe metadata is {size} bytes of JSON; the limit is {MAX_METADATA_BYTES}")
        return size

    def _train_ivfpq(self) -> None:
        """Replace the staging index by a trained IVF-PQ index holding the same keyframes."""
        cfg = self.config
        xs = self._index.reconstruct_n(0, self._index.ntotal)
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFPQ(quantizer, self.dim, cfg.ivf_nlist, self._pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        ivf.train(xs)  # faiss's k-means uses a fixed seed: same data -> same index
        ivf.add(xs)
        ivf.nprobe = cfg.ivf_nprobe
        ivf.make_direct_map()  # lets descriptor() reconstruct (approximately) by id
        self._index = ivf

    # ----- lookup

    def get(self, keyframe_id: int) -> Keyframe:
        """The keyframe with this id; KeyError when there is none."""
        with self._lock:
            i = int(keyframe_id)
            if not 0 <= i < len(self):
                raise KeyError(f"no keyframe with id {keyframe_id} (database has {len(self)})")
            return Keyframe(i, int(self._stamps.view[i]), self._frame_ids[i], _row_pose(self._poses.view[i]),
                            self._metadata[i])

    def find_by_stamp(self, stamp_ns: int, tolerance_ns: int = 0) -> Keyframe | None:
        """The keyframe whose stamp is nearest ``stamp_ns`` within ``tolerance_ns``, else None."""
        with self._lock:
            st = self._stamps.view
            if len(st) == 0:
                return None
            s = int(stamp_ns)
            if self._stamps_sorted:
                j = int(np.searchsorted(st, s))
                cands = [c for c in (j - 1, j) if 0 <= c < len(st)]
                best = min(cands, key=lambda c: (abs(int(st[c]) - s), c))
            else:
                best = int(np.argmin(np.abs(st - s)))
            return self.get(best) if abs(int(st[best]) - s) <= tolerance_ns else None

    def stamps_ns(self) -> np.ndarray:
        """Copy of all keyframe stamps (int64[N], index = id)."""
        with self._lock:
            return self._stamps.view.copy()

    def poses(self) -> np.ndarray:
        """Copy of all poses as float64[N, 7]; NaN rows where a keyframe has no pose."""
        with self._lock:
            return self._poses.view.copy()

    def descriptor(self, keyframe_id: int) -> np.ndarray:
        """The stored (normalised) descriptor; approximate for a trained ivfpq index."""
        with self._lock:
            self.get(keyframe_id)
            return self._index.reconstruct(int(keyframe_id))

    # ----- search

    def search(self, queries: np.ndarray, k: int, *, exclude_recent: int = 0, exclude_within_ns: int = 0,
               query_stamps_ns: Any = None, query_poses: Sequence[Pose | None] | None = None,
               exclude_radius: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-``k`` keyframes for each query: ``(ids[Q,k], stamps_ns[Q,k], scores[Q,k])``.

        Scores are cosine similarities in [-1, 1], best first (ties: lower id first). Where
        fewer than ``k`` keyframes qualify, ids and stamps are -1 and scores -inf. Excluded:
        the ``exclude_recent`` newest keyframes; keyframes whose stamp is within
        ``exclude_within_ns`` of the query stamp (or of the newest keyframe when
        ``query_stamps_ns`` is None); with ``query_poses`` and ``exclude_radius > 0``,
        keyframes whose pose lies within that many metres of the query's pose.
        """
        q = self._prepare(queries, "queries")
        nq = len(q)
        k = int(k)
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        ids = np.full((nq, k), -1, dtype=np.int64)
        stamps = np.full((nq, k), -1, dtype=np.int64)
        scores = np.full((nq, k), -np.inf, dtype=np.float32)
        if exclude_recent < 0 or exclude_within_ns < 0 or exclude_radius < 0:
            raise ValueError("exclusion amounts must be >= 0")
        with self._lock:
            n = len(self)
            if n == 0 or k == 0 or nq == 0:
                return ids, stamps, scores
            st = self._stamps.view
            ref = None
            if exclude_within_ns > 0:
                if query_stamps_ns is None:
                    ref = np.full(nq, int(st.max()), dtype=np.int64)
                else:
                    ref = np.asarray(query_stamps_ns, dtype=np.int64).reshape(-1)
                    if len(ref) != nq:
                        raise ValueError(f"got {nq} queries but {len(ref)} query stamps")
            qpos = None
            if exclude_radius > 0 and query_poses is not None:
                if len(query_poses) != nq:
                    raise ValueError(f"got {nq} queries but {len(query_poses)} query poses")
                qpos = np.stack([_pose_row(p)[:3] for p in query_poses])
            recent = min(int(exclude_recent), n)
            extra = np.full(nq, recent, dtype=np.int64)  # upper bound of excluded keyframes per query
            if ref is not None:
                extra += self._count_within(ref, int(exclude_within_ns))
            if qpos is not None:
                d = np.linalg.norm(self._poses.view[None, :, :3] - qpos[:, None, :], axis=2)
                extra += np.sum(d < exclude_radius, axis=1)  # NaN (no pose) compares False
            fetch = int(min(n, k + extra.max()))
            if self._on_gpu:
                fetch = min(fetch, _GPU_MAX_K)
            dist, idx = self._raw_search(q, fetch)
            valid = idx >= 0
            safe = np.where(valid, idx, 0)
            if recent:
                valid &= idx < n - recent
            if ref is not None:
                valid &= np.abs(st[safe] - ref[:, None]) >= exclude_within_ns
            if qpos is not None:
                d = np.linalg.norm(self._poses.view[safe][:, :, :3] - qpos[:, None, :], axis=2)
                valid &= ~(d < exclude_radius)
            # stable sort keeps the score order among the valid ones
            order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
            take = min(k, fetch)
            rows = np.arange(nq)[:, None]
            sel_ids = idx[rows, order[:, :take]]
            sel_ok = valid[rows, order[:, :take]]
            ids[:, :take] = np.where(sel_ok, sel_ids, -1)
            stamps[:, :take] = np.where(sel_ok, st[np.where(sel_ok, sel_ids, 0)], -1)
            scores[:, :take] = np.where(sel_ok, dist[rows, order[:, :take]], -np.inf)
        return ids, stamps, scores

    def _count_within(self, ref: np.ndarray, window: int) -> np.ndarray:
        st = self._stamps.view
        if self._stamps_sorted:
            lo = np.searchsorted(st, ref - window, side="right")
            hi = np.searchsorted(st, ref + window, side="left")
            return np.maximum(hi - lo, 0)
        return np.array([np.count_nonzero(np.abs(st - r) < window) for r in ref], dtype=np.int64)

    def _raw_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Index search + canonical order (score desc, id asc) and scores clipped to [-1, 1]."""
        n = self._index.ntotal
        threads = faiss.omp_get_max_threads()
        if not self._on_gpu and isinstance(self._index, faiss.IndexFlatCodes) and len(q) < threads:
            # few queries: faiss would scan on one core (and the fp16 scanner still opens an
            # OpenMP team that stalls when the cores are busy), so scan in our own workers
            parts = 1
            if n * self._index.sa_code_size() >= _PARALLEL_MIN_BYTES:
                parts = max(1, min(threads, n // _PARALLEL_MIN_ROWS))
            dist, idx = self._search_ranges(q, k, parts)
        else:
            dist, idx = self._index.search(q, k)
        dist = np.where(idx >= 0, np.clip(dist, -1.0, 1.0), -np.inf).astype(np.float32)
        order = np.lexsort((np.where(idx >= 0, idx, np.iinfo(np.int64).max), -dist), axis=-1)[:, :k]
        rows = np.arange(len(q))[:, None]
        return dist[rows, order], idx[rows, order]

    def _search_ranges(self, q: np.ndarray, k: int, parts: int) -> tuple[np.ndarray, np.ndarray]:
        """Split a flat scan into id ranges searched in parallel threads (faiss drops the GIL):
        one query is otherwise scanned by a single core, and the scan is bandwidth-bound."""
        n = self._index.ntotal
        bounds = np.linspace(0, n, parts + 1).astype(np.int64)

        def run(i: int) -> tuple[np.ndarray, np.ndarray]:
            if parts == 1:
                return self._index.search(q, k)
            sel = faiss.IDSelectorRange(int(bounds[i]), int(bounds[i + 1]))
            params = faiss.SearchParameters(sel=sel)
            return self._index.search(q, k, params=params)

        results = list(_pool().map(run, range(parts)))
        return np.concatenate([r[0] for r in results], axis=1), np.concatenate([r[1] for r in results], axis=1)

    # ----- housekeeping

    def clear(self) -> None:
        """Remove every keyframe (ids start again at 0)."""
        with self._lock:
            self._setup(self.dim, self.config, self.model_name)
            self._install(self._empty_cpu_index())

    def set_search_params(self, *, hnsw_ef_search: int | None = None, ivf_nprobe: int | None = None) -> None:
        """Change search-time knobs of an existing index (validated like the config)."""
        with self._lock:
            changes = {}
            if hnsw_ef_search is not None:
                changes["hnsw_ef_search"] = hnsw_ef_search
            if ivf_nprobe is not None:
                changes["ivf_nprobe"] = ivf_nprobe
            self.config = dataclasses.replace(self.config, **changes)
            self._apply_search_params()

    def _apply_search_params(self) -> None:
        if isinstance(self._index, faiss.IndexHNSW):
            self._index.hnsw.efSearch = self.config.hnsw_ef_search
            self._index.hnsw.efConstruction = self.config.hnsw_ef_construction
        if isinstance(self._index, faiss.IndexIVF):
            self._index.nprobe = self.config.ivf_nprobe

    def memory_report(self) -> dict[str, float]:
        """Bytes used: ``index``, ``table`` (stamps, poses, ids, metadata), ``total`` and
        ``per_keyframe`` (total / count; 0 when empty)."""
        with self._lock:
            n = len(self)
            index_b = _index_nbytes(self._index, self._on_gpu, self.dim, self.config.fp16)
            strings = sum(len(s) + 49 for s in self._frame_id_pool)  # ~ CPython str overhead
            table_b = self._stamps.nbytes + self._poses.nbytes + 16 * n + strings + self._meta_bytes
            total = index_b + table_b
            return {"count": n, "index": index_b, "table": table_b, "total": total,
                    "per_keyframe": total / n if n else 0.0}

    def memory_bytes(self) -> int:
        """Total bytes held by the database (see :meth:`memory_report`)."""
        return int(self.memory_report()["total"])

    # ----- persistence

    def _cpu_index_for_save(self) -> Any:
        if not self._on_gpu:
            return self._index
        cpu = faiss.index_gpu_to_cpu(self._index)
        return _as_sq_fp16(cpu) if self.config.fp16 else cpu

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the database to ``directory`` atomically (see module docstring); returns it."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with self._lock, _dir_lock(d):
            gen = 1 + max([0] + [int(m.group(1)) for p in d.iterdir() if (m := _GEN_RE.match(p.name))])
            names = {"index": f"index-{gen:06d}.faiss", "keyframes": f"keyframes-{gen:06d}.npz",
                     "records": f"records-{gen:06d}.json"}
            n = len(self)
            table = io.BytesIO()
            np.savez(table, ids=np.arange(n, dtype=np.int64), stamps_ns=self._stamps.view,
                     poses=self._poses.view)
            records = json.dumps({"frame_ids": self._frame_ids, "metadata": self._metadata},
                                 allow_nan=False, separators=(",", ":")).encode()
            cpu_index = self._cpu_index_for_save()
            committed = False
            try:
                files = {
                    "index": _write_atomic(d / names["index"], lambda w: _write_faiss_index(cpu_index, w)),
                    "keyframes": _write_atomic(d / names["keyframes"], lambda w: w(table.getvalue())),
                    "records": _write_atomic(d / names["records"], lambda w: w(records)),
                }
                manifest = {
                    "format": FORMAT_NAME, "version": FORMAT_VERSION, "generation": gen,
                    "dim": self.dim, "model_name": self.model_name, "count": n, "next_id": n,
                    "metric": "inner_product", "normalized": True,
                    "descriptor_dtype": "float16" if self.config.fp16 else "float32",
                    "index": {"type": self.config.index, "fp16": self.config.fp16, "trained": self.trained,
                              "faiss_class": type(cpu_index).__name__, "faiss_version": faiss.__version__},
                    "config": dataclasses.asdict(self.config),
                    "files": files,
                }
                # no trailing newline: cutting even one byte off the manifest breaks its JSON
                body = json.dumps(manifest, indent=1, sort_keys=True).encode()
                _write_atomic(d / MANIFEST, lambda w: w(body))
                committed = True
                _fsync_dir(d)
            except BaseException:
                if not committed:  # the previous manifest still rules: drop our unreferenced files
                    for name in names.values():
                        (d / name).unlink(missing_ok=True)
                raise
            keep = set(names.values()) | {MANIFEST}
            for p in d.iterdir():
                if _DATA_FILE_RE.match(p.name) and p.name not in keep:
                    p.unlink(missing_ok=True)
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike[str], expected_dim: int | None = None,
             expected_model: str | None = None, *, config: DatabaseConfig | None = None) -> KeyframeDatabase:
        """Load a database saved by :meth:`save`; never modifies the files.

        Refuses (:class:`DatabaseError`) a missing or damaged manifest or data file, another
        format version, a dimension other than ``expected_dim`` or a model other than
        ``expected_model``. With ``config``, its index type and fp16 must match the stored
        ones; its search-time options (ef_search, nprobe, use_gpu, train_at) are applied.
        """
        d = Path(directory)

        def fail(problem: str) -> DatabaseError:
            return DatabaseError(f"keyframe database {d}: {problem}")

        try:
            raw = (d / MANIFEST).read_bytes()
        except FileNotFoundError:
            raise fail(f"no {MANIFEST} (not a saved database, or never saved)") from None
        except OSError as exc:
            raise fail(f"cannot read {MANIFEST}: {exc.strerror}") from exc
        try:
            man = json.loads(raw)
            if not isinstance(man, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            raise fail(f"{MANIFEST} is damaged (invalid JSON: {exc})") from exc
        if man.get("format") != FORMAT_NAME:
            raise fail(f"{MANIFEST} is not a {FORMAT_NAME} manifest (format={man.get('format')!r})")
        if man.get("version") != FORMAT_VERSION:
            raise fail(f"format version {man.get('version')!r} is not supported (this code reads {FORMAT_VERSION})")
        try:
            dim, count, model = int(man["dim"]), int(man["count"]), str(man["model_name"])
            idx_info, files, stored_cfg = man["index"], man["files"], man["config"]
            fp16, trained = bool(idx_info["fp16"]), bool(idx_info["trained"])
        except (KeyError, TypeError, ValueError) as exc:
            raise fail(f"{MANIFEST} lacks or has a bad field: {exc}") from exc
        if expected_dim is not None and dim != int(expected_dim):
            raise fail(f"descriptor dimension is {dim}, expected {expected_dim}")
        if expected_model is not None and model != expected_model:
            raise fail(f"was built with model '{model}', expected '{expected_model}' "
                       "(descriptors of different models are not comparable)")
        try:
            db_cfg = DatabaseConfig(**stored_cfg)
        except (TypeError, ConfigError) as exc:
            raise fail(f"stored index options are invalid: {exc}") from exc
        if config is not None:
            if (config.index, config.fp16) != (db_cfg.index, db_cfg.fp16):
                raise fail(f"holds a '{db_cfg.index}'{' fp16' if db_cfg.fp16 else ''} index but the configuration "
                           f"asks for '{config.index}'{' fp16' if config.fp16 else ''}")
            db_cfg = dataclasses.replace(db_cfg, use_gpu=config.use_gpu, hnsw_ef_search=config.hnsw_ef_search,
                                         hnsw_ef_construction=config.hnsw_ef_construction,
                                         ivf_nprobe=config.ivf_nprobe, ivf_train_at=config.ivf_train_at)
        paths = {}
        for key in ("index", "keyframes", "records"):
            info = files.get(key) if isinstance(files, dict) else None
            if not isinstance(info, dict) or not {"name", "size", "sha256"} <= info.keys():
                raise fail(f"{MANIFEST} has no valid entry for the {key} file")
            name = str(info["name"])
            if not _DATA_FILE_RE.match(name):
                raise fail(f"{MANIFEST} names an unexpected file {name!r}")
            p = d / name
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                raise fail(f"data file {name} is missing") from None
            if size != info["size"]:
                raise fail(f"data file {name} is {size} bytes, expected {info['size']} (truncated or damaged)")
            if _sha256_file(p) != info["sha256"]:
                raise fail(f"data file {name} fails its sha256 checksum (damaged)")
            paths[key] = p
        # Checksums passed: the files are the ones save() wrote. Parse them.
        try:
            with np.load(paths["keyframes"], allow_pickle=False) as z:
                ids, stamps, poses = z["ids"], z["stamps_ns"], z["poses"]
            recs = json.loads(paths["records"].read_bytes())
            frame_ids, metas = recs["frame_ids"], recs["metadata"]
            index = faiss.read_index(str(paths["index"]))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise fail(f"cannot parse data files: {exc}") from exc
        if not (len(ids) == len(stamps) == len(poses) == len(frame_ids) == len(metas) == index.ntotal == count):
            raise fail("keyframe table, records and index disagree on the keyframe count")
        if not np.array_equal(ids, np.arange(count)) or poses.shape != (count, 7) or stamps.dtype != np.int64:
            raise fail("keyframe table has unexpected ids, shapes or types")
        if index.d != dim or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise fail(f"index has dimension {index.d} / metric {index.metric_type}, manifest says {dim} / inner product")
        allowed = _expected_classes(db_cfg.index, fp16, trained)
        if type(index).__name__ not in allowed:
            raise fail(f"index is a {type(index).__name__}, expected {' or '.join(allowed)}")

        db = cls.__new__(cls)
        db._setup(dim, db_cfg, model)
        if isinstance(index, faiss.IndexIVFPQ):
            index.make_direct_map()
            db._pq_m = int(index.pq.M)
        db._install(index)
        db._apply_search_params()
        db._stamps.extend(stamps)
        db._stamps_sorted = bool(np.all(np.diff(stamps) >= 0))
        db._poses.extend(poses)
        db._frame_ids = [db._frame_id_pool.setdefault(str(f), str(f)) for f in frame_ids]
        db._metadata = [m if isinstance(m, dict) else None for m in metas]
        db._meta_bytes = sum(len(json.dumps(m)) for m in db._metadata if m)
        return db
