"""On-disk format of the keyframe database: generational, checksummed, crash-safe.

Format ``FORMAT_NAME`` version ``FORMAT_VERSION``, one directory::

    manifest.json               format, version, dim, model_name, count, index options and,
                                for every data file, its name, byte size and sha256
    index-<gen>.faiss           the CPU faiss index (faiss's own serialisation, no pickle);
                                it is the descriptor store: exact fp32/fp16 vectors for flat
                                and hnsw (so reloading gives identical results), PQ codes for
                                a trained ivfpq index
    keyframes-<gen>.npz         ids int64[N], stamps_ns int64[N], poses float64[N,7]
                                (x y z qx qy qz qw, NaN rows = no pose); loaded without pickle
    records-<gen>.json          {"frame_ids": [...], "metadata": [...]}

:func:`save` writes the next generation's data files (temporary name, fsync, rename), then
atomically replaces ``manifest.json`` the same way and fsyncs the directory, and only then
deletes the previous generation. A crash at any point leaves the previous manifest pointing at
complete previous files. One writer per directory at a time (an flock on ``.lock``).
:func:`load` only reads: it checks format, version, dimension, model and every file's size and
checksum before parsing anything and raises :class:`DatabaseError` on any mismatch.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from salad_ros import fileio
from salad_ros.params import ConfigError

from .config import DatabaseConfig, DatabaseError
from .index import expected_classes

FORMAT_NAME = "salad_ros.keyframe_db"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

_DATA_FILE_RE = re.compile(r"^(index-\d{6}\.faiss|keyframes-\d{6}\.npz|records-\d{6}\.json|manifest\.json)(\.tmp\d+)?$")
_GEN_RE = re.compile(r"^(?:index|keyframes|records)-(\d{6})\.")
_DATA_KEYS = ("index", "keyframes", "records")


@dataclasses.dataclass
class Contents:
    """Everything one saved generation holds (arrays are row = keyframe id)."""

    dim: int
    model_name: str
    config: DatabaseConfig
    trained: bool
    index: Any  #: a CPU faiss index
    stamps: np.ndarray  #: int64[N]
    poses: np.ndarray  #: float64[N, 7]
    frame_ids: list[str]
    metadata: list[Any]


def _write_faiss_index(index: Any, write: Callable[[bytes], None]) -> None:
    """Serialise a CPU faiss index through ``write`` in 1 MiB pieces (no full in-memory copy).
    Module-level so that tests can inject failures while the index is written."""
    writer = faiss.PyCallbackIOWriter(write)
    faiss.write_index(index, writer)
    del writer  # flushes the writer's last buffer


# --------------------------------------------------------------------------------------------
# save


def save(directory: str | os.PathLike[str], c: Contents) -> Path:
    """Write ``c`` to ``directory`` as its next generation (see the module docstring); returns
    the directory. The caller keeps ``c`` unchanged until this returns."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    with fileio.dir_lock(d):
        gen = 1 + max([0] + [int(m.group(1)) for p in d.iterdir() if (m := _GEN_RE.match(p.name))])
        names = {"index": f"index-{gen:06d}.faiss", "keyframes": f"keyframes-{gen:06d}.npz",
                 "records": f"records-{gen:06d}.json"}
        n = len(c.frame_ids)
        table = io.BytesIO()
        np.savez(table, ids=np.arange(n, dtype=np.int64), stamps_ns=c.stamps, poses=c.poses)
        records = json.dumps({"frame_ids": c.frame_ids, "metadata": c.metadata},
                             allow_nan=False, separators=(",", ":")).encode()
        committed = False
        try:
            files = {
                "index": fileio.write_atomic(d / names["index"], lambda w: _write_faiss_index(c.index, w)),
                "keyframes": fileio.write_atomic(d / names["keyframes"], lambda w: w(table.getvalue())),
                "records": fileio.write_atomic(d / names["records"], lambda w: w(records)),
            }
            # no trailing newline: cutting even one byte off the manifest breaks its JSON
            body = json.dumps(_manifest(c, gen, files), indent=1, sort_keys=True).encode()
            fileio.write_atomic(d / MANIFEST, lambda w: w(body))
            committed = True
            fileio.fsync_dir(d)
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


def _manifest(c: Contents, gen: int, files: dict[str, Any]) -> dict[str, Any]:
    n = len(c.frame_ids)
    return {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "generation": gen,
        "dim": c.dim, "model_name": c.model_name, "count": n, "next_id": n,
        "metric": "inner_product", "normalized": True,
        "descriptor_dtype": "float16" if c.config.fp16 else "float32",
        "index": {"type": c.config.index, "fp16": c.config.fp16, "trained": c.trained,
                  "faiss_class": type(c.index).__name__, "faiss_version": faiss.__version__},
        "config": dataclasses.asdict(c.config),
        "files": files,
    }


# --------------------------------------------------------------------------------------------
# load


def load(directory: str | os.PathLike[str], expected_dim: int | None = None, expected_model: str | None = None,
         config: DatabaseConfig | None = None) -> Contents:
    """Read and check a saved generation (see ``KeyframeDatabase.load``); never modifies files."""
    d = Path(directory)

    def fail(problem: str) -> DatabaseError:
        return DatabaseError(f"keyframe database {d}: {problem}")

    man = _read_manifest(d, fail)
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
    db_cfg = _effective_config(stored_cfg, config, fail)
    paths = {key: _checked_file(d, files, key, fail) for key in _DATA_KEYS}
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
    allowed = expected_classes(db_cfg.index, fp16, trained)
    if type(index).__name__ not in allowed:
        raise fail(f"index is a {type(index).__name__}, expected {' or '.join(allowed)}")
    return Contents(dim, model, db_cfg, trained, index, stamps, poses, frame_ids, metas)


def _read_manifest(d: Path, fail: Callable[[str], DatabaseError]) -> dict[str, Any]:
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
    return man


def _effective_config(stored: Any, config: DatabaseConfig | None,
                      fail: Callable[[str], DatabaseError]) -> DatabaseConfig:
    """The stored options, with the search-time options of ``config`` (whose index type and
    fp16 must match the stored ones)."""
    try:
        db_cfg = DatabaseConfig(**stored)
    except (TypeError, ConfigError) as exc:
        raise fail(f"stored index options are invalid: {exc}") from exc
    if config is None:
        return db_cfg
    if (config.index, config.fp16) != (db_cfg.index, db_cfg.fp16):
        raise fail(f"holds a '{db_cfg.index}'{' fp16' if db_cfg.fp16 else ''} index but the configuration "
                   f"asks for '{config.index}'{' fp16' if config.fp16 else ''}")
    return dataclasses.replace(db_cfg, use_gpu=config.use_gpu, hnsw_ef_search=config.hnsw_ef_search,
                               hnsw_ef_construction=config.hnsw_ef_construction,
                               ivf_nprobe=config.ivf_nprobe, ivf_train_at=config.ivf_train_at)


def _checked_file(d: Path, files: Any, key: str, fail: Callable[[str], DatabaseError]) -> Path:
    """The path of data file ``key`` after checking its manifest entry, size and sha256."""
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
    if fileio.sha256_file(p) != info["sha256"]:
        raise fail(f"data file {name} fails its sha256 checksum (damaged)")
    return p
