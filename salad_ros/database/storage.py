"""On-disk format of the keyframe database: generational, checksummed, crash-safe.

Format ``FORMAT_NAME`` version ``FORMAT_VERSION``, one directory::

    manifest.json               format, version, dim, model_name, count, index options, the
                                owner {"robot_id", "session"} and, for every data file, its
                                name, byte size and sha256
    index-<gen>.faiss           the CPU faiss index (faiss's own serialisation, no pickle);
                                it is the descriptor store: exact fp32/fp16 vectors for flat
                                and hnsw (so reloading gives identical results), PQ codes for
                                a trained ivfpq index
    keyframes-<gen>.npz         ids int64[N], stamps_ns int64[N], poses float64[N,7]
                                (x y z qx qy qz qw, NaN rows = no pose), robot_ids,
                                sessions, robot_keyframe_ids int64[N] (who made each
                                keyframe; the owner's own ones are 0..k-1 in order); loaded
                                without pickle
    records-<gen>.json          {"frame_ids": [...], "metadata": [...]}
    thumbnails-<gen>.npz        optional attachment (:data:`ATTACHMENTS`): the pipeline's
                                verification thumbnails, committed with the map
    pose_features-<gen>.npz     optional attachment: the relative-pose features of keyframes
    previous/                   the replaced map, when a save lost keyframes (:mod:`.backup`)

:func:`save` writes the next generation's data files (temporary name, fsync, rename), then
atomically replaces ``manifest.json`` the same way and fsyncs the directory, and only then
deletes the previous generation. A crash at any point leaves the previous manifest pointing at
complete previous files; the map and its attachments switch together. One writer per directory
at a time (an flock on ``.lock``). Version 1 (before robots had ids: no owner, no origin
columns) still loads, as the own map of the loading robot; later versions are refused.
:func:`load` only reads: it checks format, version, dimension, model and every file's kind
(regular files only: no FIFO, device or symbolic link), size (within bounds computed from the
manifest's count and dimension) and checksum before parsing anything, parses with bounded
readers (:mod:`salad_ros.npzfile`) and raises :class:`DatabaseError` on any failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from salad_ros import fileio, npzfile
from salad_ros.params import ConfigError

from . import backup
from .config import DatabaseConfig, DatabaseError
from .index import expected_classes
from .table import MAX_FRAME_ID_CHARS, MAX_METADATA_BYTES, new_session

FORMAT_NAME = "salad_ros.keyframe_db"
FORMAT_VERSION = 2
#: Versions this code reads (1: a single robot's map, from before multi-robot operation).
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
#: A manifest is ~2 kB; a larger one is not parsed.
MAX_MANIFEST_BYTES = 1 << 20

#: Optional files saved and committed with a generation, listed in the manifest under their key:
#: ``<key>-<gen>.npz``. A damaged attachment never refuses the map (see :func:`read_attachment`).
ATTACHMENTS = ("thumbnails", "pose_features")
#: Files of older saves beside the manifest (verification thumbnails before they were committed
#: with the generation); removed by the next save.
LEGACY_FILES = ("thumbnails.npz",)

_DATA_FILE_RE = re.compile(r"^(index-\d{6}\.faiss|keyframes-\d{6}\.npz|records-\d{6}\.json"
                           r"|(?:thumbnails|pose_features)-\d{6}\.npz|manifest\.json)(\.tmp\d+)?$")
_GEN_RE = re.compile(r"^(?:index|keyframes|records|thumbnails|pose_features)-(\d{6})\.")
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
    origins: np.ndarray  #: int64[N, 3]: robot_id, session, robot_keyframe_id
    robot_id: int  #: the owner
    session: int  #: the owner's map lineage


def _write_faiss_index(index: Any, write: Callable[[bytes], None]) -> None:
    """Serialise a CPU faiss index through ``write`` in 1 MiB pieces (no full in-memory copy).
    Module-level so that tests can inject failures while the index is written."""
    writer = faiss.PyCallbackIOWriter(write)
    faiss.write_index(index, writer)
    del writer  # flushes the writer's last buffer


# --------------------------------------------------------------------------------------------
# save


@dataclasses.dataclass(frozen=True)
class Saved:
    """What :func:`save` committed."""

    directory: Path
    generation: int
    count: int  #: keyframes in the saved map
    attachments: tuple[str, ...]  #: attachment keys saved with it (e.g. ``("thumbnails",)``)
    #: Where the replaced map was kept (:data:`backup.BACKUP_DIR`), when it held keyframes the
    #: new one lacks; None when nothing was lost (or there was no map).
    backup: Path | None = None
    replaced_count: int | None = None  #: keyframes of the map replaced (None: none, or unreadable)
    replaced: bool = False  #: a map (readable or not) was replaced
    warnings: tuple[str, ...] = ()  #: problems after the commit (the new map is in place)


def save(directory: str | os.PathLike[str], c: Contents, attachments: Mapping[str, bytes] | None = None) -> Saved:
    """Write ``c`` and its ``attachments`` (key in :data:`ATTACHMENTS` -> file content) to
    ``directory`` as its next generation: one manifest switch commits all of them together
    (see the module docstring). When the map being replaced holds keyframes that ``c`` lacks
    (compared by stamp), it is first kept as the backup ``previous/`` (:mod:`.backup`); a
    backup that cannot be made fails the save. On any error before the commit nothing is
    changed and the error propagates. The caller keeps ``c`` unchanged until this returns."""
    attachments = dict(attachments or {})
    unknown = set(attachments) - set(ATTACHMENTS)
    if unknown:
        raise ValueError(f"unknown attachment {sorted(unknown)}; known: {ATTACHMENTS}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    with fileio.dir_lock(d):
        backup.remove_leftovers(d)
        old = on_disk(d)
        lost = old is not None and _loses_keyframes(old, c.stamps)
        gen = 1 + max([0] + [int(m.group(1)) for p in d.iterdir() if (m := _GEN_RE.match(p.name))])
        names = {"index": f"index-{gen:06d}.faiss", "keyframes": f"keyframes-{gen:06d}.npz",
                 "records": f"records-{gen:06d}.json", **{k: f"{k}-{gen:06d}.npz" for k in attachments}}
        n = len(c.frame_ids)
        table = io.BytesIO()
        np.savez(table, ids=np.arange(n, dtype=np.int64), stamps_ns=c.stamps, poses=c.poses,
                 robot_ids=c.origins[:, 0], sessions=c.origins[:, 1], robot_keyframe_ids=c.origins[:, 2])
        records = json.dumps({"frame_ids": c.frame_ids, "metadata": c.metadata},
                             allow_nan=False, separators=(",", ":")).encode()
        contents: dict[str, Callable[[fileio.Writer], None]] = {
            "index": lambda w: _write_faiss_index(c.index, w), "keyframes": lambda w: w(table.getvalue()),
            "records": lambda w: w(records),
            **{k: (lambda w, data=data: w(data)) for k, data in attachments.items()}}
        committed = False
        kept = None
        try:
            files = {key: fileio.write_atomic(d / names[key], contents[key]) for key in names}
            if lost:  # before the commit: whenever the new map is in place, the old one is kept
                kept = backup.keep(d, old.files)
            # no trailing newline: cutting even one byte off the manifest breaks its JSON
            body = json.dumps(_manifest(c, gen, files), indent=1, sort_keys=True).encode()
            fileio.write_atomic(d / MANIFEST, lambda w: w(body))
            committed = True
        except BaseException:
            if not committed:  # the previous manifest still rules: drop our unreferenced files
                for name in names.values():
                    (d / name).unlink(missing_ok=True)
            raise
        warnings = _after_commit(d, set(names.values()) | {MANIFEST})
    return Saved(d, gen, n, tuple(attachments), kept, None if old is None else old.count, old is not None, warnings)


def _after_commit(d: Path, keep: set[str]) -> tuple[str, ...]:
    """Make the commit durable and delete the files of older generations (and legacy files).
    The new map is in place whatever happens here: failures become warnings, not errors."""
    try:
        fileio.fsync_dir(d)
        for p in d.iterdir():
            if (_DATA_FILE_RE.match(p.name) or p.name in LEGACY_FILES) and p.name not in keep:
                p.unlink(missing_ok=True)
    except OSError as exc:
        return (f"after saving: {exc.strerror or exc} ({exc.filename or d})",)
    return ()


@dataclasses.dataclass(frozen=True)
class OnDisk:
    """The map a folder holds now, as far as it can be read (see :func:`on_disk`)."""

    generation: int | None
    count: int | None  #: None: the map cannot be read
    stamps: np.ndarray | None  #: its keyframe stamps (None: cannot be read)
    files: tuple[str, ...]  #: every file belonging to it, the manifest last
    problem: str = ""  #: why it cannot be read


def on_disk(directory: str | os.PathLike[str]) -> OnDisk | None:
    """What ``directory`` holds now: None without a manifest, else the generation, count and
    stamps of its map (read with the same checks as :func:`load`; ``count`` None when it cannot
    be read) and the names of its files. Never modifies anything."""
    d = Path(directory)
    if not os.path.lexists(d / MANIFEST):
        return None
    legacy = tuple(name for name in LEGACY_FILES if os.path.lexists(d / name))
    try:
        fail = lambda problem: DatabaseError(problem)
        man = _read_manifest(d, fail)
        count, gen, files = int(man["count"]), int(man.get("generation", 0)), man["files"]
        entry = _file_entry(files, "keyframes", size_bounds(count, 1, DatabaseConfig(), False, False)["keyframes"],
                            f"for {count} keyframes", fail)
        with contextlib.ExitStack() as stack:
            raw = _open_checked(d, *entry, stack, fail).read()
        stamps = npzfile.read_npz(raw, _table_members(count, int(man["version"])))["stamps_ns"]
        names = tuple(str(f["name"]) for f in files.values() if isinstance(f, dict) and _DATA_FILE_RE.match(str(f.get("name"))))
        return OnDisk(gen, count, stamps, names + legacy + (MANIFEST,))
    except Exception as exc:  # noqa: BLE001 - an unreadable map: keep everything that may belong to it
        names = tuple(sorted(p.name for p in d.iterdir() if _DATA_FILE_RE.match(p.name) and ".tmp" not in p.name
                             and p.name != MANIFEST))
        return OnDisk(None, None, None, names + legacy + (MANIFEST,), problem=str(exc))


def _loses_keyframes(old: OnDisk, stamps: np.ndarray) -> bool:
    """True when the map ``old`` holds keyframes that a map with ``stamps`` lacks (or may: an
    unreadable map). A map that only grew (same stamps, then more) loses nothing."""
    if old.count is None or old.stamps is None:
        return True
    if old.count == 0:
        return False
    return old.count > len(stamps) or not np.array_equal(old.stamps, np.asarray(stamps)[: old.count])


def read_attachment(directory: str | os.PathLike[str], key: str, max_bytes: int) -> tuple[Path, bytes] | None:
    """The path and content of the attachment ``key`` of the map in ``directory`` (checked:
    regular file, size at most ``max_bytes`` and as the manifest says, sha256), or None when
    the map has none. A damaged one raises :class:`DatabaseError` naming it (the caller
    decides whether that matters)."""
    if key not in ATTACHMENTS:
        raise ValueError(f"unknown attachment {key!r}; known: {ATTACHMENTS}")
    d = Path(directory)

    def fail(problem: str) -> DatabaseError:
        return DatabaseError(f"keyframe database {d}: {problem}")

    files = _read_manifest(d, fail).get("files")
    if not isinstance(files, dict) or key not in files:
        return None
    entry = _file_entry(files, key, (0, max_bytes), "for this reader", fail)
    if not entry[0].startswith(f"{key}-"):
        raise fail(f"{MANIFEST} names an unexpected file {entry[0]!r} for the {key}")
    try:
        with contextlib.ExitStack() as stack:
            return d / entry[0], _open_checked(d, *entry, stack, fail).read()
    except MemoryError as exc:
        raise fail(f"data file {entry[0]}: out of memory reading it") from exc


def _manifest(c: Contents, gen: int, files: dict[str, Any]) -> dict[str, Any]:
    n = len(c.frame_ids)
    return {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "generation": gen,
        "dim": c.dim, "model_name": c.model_name, "count": n, "next_id": n,
        "owner": {"robot_id": c.robot_id, "session": c.session},
        "robots": sorted({int(r) for r in np.unique(c.origins[:, 0])}) if n else [],
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
         config: DatabaseConfig | None = None, robot_id: int | None = None) -> Contents:
    """Read and check a saved generation (see ``KeyframeDatabase.load``); never modifies files.

    Whatever is in the folder (a FIFO or a link to a device as a data file, a manifest of a
    million brackets, an npz that inflates to gigabytes, bytes damaged behind a recomputed
    checksum) ends in one :class:`DatabaseError` naming the folder, without blocking and
    without allocating more than the manifest's count and dimension justify."""
    d = Path(directory)

    def fail(problem: str) -> DatabaseError:
        return DatabaseError(f"keyframe database {d}: {problem}")

    try:
        return _load(d, expected_dim, expected_model, config, robot_id, fail)
    except DatabaseError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file raises: one error naming it
        raise fail(f"cannot be read ({type(exc).__name__}: {exc})") from exc


def _load(d: Path, expected_dim: int | None, expected_model: str | None, config: DatabaseConfig | None,
          robot_id: int | None, fail: Callable[[str], DatabaseError]) -> Contents:
    man = _read_manifest(d, fail)
    version = int(man["version"])
    try:
        dim, count, model = int(man["dim"]), int(man["count"]), str(man["model_name"])
        idx_info, files, stored_cfg = man["index"], man["files"], man["config"]
        fp16, trained = bool(idx_info["fp16"]), bool(idx_info["trained"])
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise fail(f"{MANIFEST} lacks or has a bad field: {exc}") from exc
    if dim < 1 or count < 0:
        raise fail(f"{MANIFEST} gives dimension {dim} and count {count}")
    if expected_dim is not None and dim != int(expected_dim):
        raise fail(f"descriptor dimension is {dim}, expected {expected_dim}")
    if expected_model is not None and model != expected_model:
        raise fail(f"was built with model '{model}', expected '{expected_model}' "
                   "(descriptors of different models are not comparable)")
    db_cfg = _effective_config(stored_cfg, config, fail)
    bounds = size_bounds(count, dim, db_cfg, fp16, trained)
    entries = {key: _file_entry(files, key, bounds[key], f"for {count} keyframes of dimension {dim}", fail)
               for key in _DATA_KEYS}
    with contextlib.ExitStack() as stack:
        # Every file's kind, size and checksum before parsing anything.
        handles = {key: _open_checked(d, name, size, sha, stack, fail) for key, (name, size, sha) in entries.items()}
        table_bytes, records_bytes = handles["keyframes"].read(), handles["records"].read()
        try:
            table = npzfile.read_npz(table_bytes, _table_members(count, version))
        except npzfile.NpzError as exc:
            raise fail(f"data file {entries['keyframes'][0]}: {exc}") from exc
        frame_ids, metas = _parse_records(records_bytes, count, lambda p: fail(f"data file {entries['records'][0]}: {p}"))
        try:
            index = faiss.read_index(faiss.PyCallbackIOReader(handles["index"].read))
        except RuntimeError as exc:
            raise fail(f"data file {entries['index'][0]}: not a faiss index ({_first_line(exc)})") from exc
    ids, stamps, poses = table["ids"], table["stamps_ns"], table["poses"]
    if index.ntotal != count:
        raise fail(f"the index holds {index.ntotal} keyframes, the manifest says {count}")
    if not np.array_equal(ids, np.arange(count)):
        raise fail("keyframe table has unexpected ids")
    if index.d != dim or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise fail(f"index has dimension {index.d} / metric {index.metric_type}, manifest says {dim} / inner product")
    allowed = expected_classes(db_cfg.index, fp16, trained)
    if type(index).__name__ not in allowed:
        raise fail(f"index is a {type(index).__name__}, expected {' or '.join(allowed)}")
    owner, session, origins = _owner(man, table, count, robot_id, fail)
    return Contents(dim, model, db_cfg, trained, index, stamps, poses, frame_ids, metas, origins, owner, session)


def _owner(man: dict[str, Any], table: dict[str, np.ndarray], count: int, robot_id: int | None,
           fail: Callable[[str], DatabaseError]) -> tuple[int, int, np.ndarray]:
    """The owner's robot id and session and the origin rows of a loaded map (checked)."""
    if int(man["version"]) == 1:  # one robot's map, from before fleets: the loading robot's own
        own = 0 if robot_id is None else int(robot_id)
        session = new_session()
        return own, session, np.stack([np.full(count, own), np.full(count, session), np.arange(count)], axis=1)
    info = man.get("owner")
    try:
        own, session = int(info["robot_id"]), int(info["session"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f"{MANIFEST} lacks or has a bad owner: {exc}") from exc
    if robot_id is not None and own != int(robot_id):
        raise fail(f"is the map of robot_id {own}, this robot is robot_id {robot_id} (start with robot_id {own}, "
                   "or another database_path: a robot continues only its own map)")
    origins = np.stack([table["robot_ids"], table["sessions"], table["robot_keyframe_ids"]], axis=1)
    if count and (origins.min() < 0 or origins[:, :2].max() >= 1 << 32 or origins[:, 2].max() >= 1 << 32):
        raise fail("keyframe table has robot ids, sessions or robot keyframe ids outside UINT32")
    mine = (origins[:, 0] == own) & (origins[:, 1] == session)
    if not np.array_equal(origins[mine, 2], np.arange(int(mine.sum()))):
        raise fail("keyframe table: the owner's keyframes are not numbered 0, 1, 2, ... in order")
    if np.any((origins[:, 0] == own) & ~mine):
        raise fail(f"keyframe table holds keyframes of robot {own} (the owner's id) from another session")
    if len(np.unique(origins, axis=0)) != count:
        raise fail("keyframe table holds a robot's keyframe twice")
    return own, session, origins


def _table_members(count: int, version: int = FORMAT_VERSION) -> dict[str, npzfile.Member]:
    members = {"ids": npzfile.Member("i", (count,), 8), "stamps_ns": npzfile.Member("i", (count,), 8),
               "poses": npzfile.Member("f", (count, 7), 8)}
    if version >= 2:
        members.update({name: npzfile.Member("i", (count,), 8)
                        for name in ("robot_ids", "sessions", "robot_keyframe_ids")})
    return members


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _read_manifest(d: Path, fail: Callable[[str], DatabaseError]) -> dict[str, Any]:
    try:
        raw = fileio.read_regular(d / MANIFEST, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise fail(f"no {MANIFEST} (not a saved database, or never saved)") from None
    except fileio.UnsafeFileError as exc:
        raise fail(str(exc)) from exc
    except OSError as exc:
        raise fail(f"cannot read {MANIFEST}: {exc.strerror or exc}") from exc
    try:
        man = json.loads(raw)
        if not isinstance(man, dict):
            raise ValueError("not an object")
    except (ValueError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise fail(f"{MANIFEST} is damaged (invalid JSON: {why})") from exc
    if man.get("format") != FORMAT_NAME:
        raise fail(f"{MANIFEST} is not a {FORMAT_NAME} manifest (format={man.get('format')!r})")
    if man.get("version") not in READABLE_VERSIONS:
        raise fail(f"format version {man.get('version')!r} is not supported (this code reads versions "
                   f"{', '.join(map(str, READABLE_VERSIONS))}; a newer salad_ros wrote it)")
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


def size_bounds(count: int, dim: int, cfg: DatabaseConfig, fp16: bool, trained: bool) -> dict[str, tuple[int, int]]:
    """``(smallest, largest)`` byte size each data file of ``count`` keyframes of dimension
    ``dim`` can have, generously (upper bounds about twice the real size plus slack). A
    manifest naming a file outside its bounds is refused before the file is opened, so a
    forged count or size cannot make the reader allocate more than the files justify."""
    vector = dim * (2 if fp16 else 4)
    if cfg.index == "ivfpq" and trained:
        least = 9  # at least one code byte and the 8-byte id in its inverted list
    else:
        least = vector
    per = 4 * dim + 16 * cfg.hnsw_m + 64  # fp32 vector + HNSW links (both levels) + slack
    fixed = (1 << 20) + (cfg.ivf_nlist + 300) * dim * 4 + 64 * cfg.ivf_nlist  # quantiser, PQ/SQ tables
    table = 6 * (npzfile.MAX_HEADER_BYTES + 1024) + 96 * count  # ids, stamps, poses, origin + zip entries
    records = 4096 + count * (MAX_METADATA_BYTES + 12 * MAX_FRAME_ID_CHARS + 32)  # \uXXXX escapes: 6-12 bytes a char
    return {"index": (count * least, 2 * (fixed + count * per)), "keyframes": (0, table),
            "records": (0, records)}


def _file_entry(files: Any, key: str, bounds: tuple[int, int], what: str,
                fail: Callable[[str], DatabaseError]) -> tuple[str, int, str]:
    """``(name, size, sha256)`` of data file ``key`` from the manifest, checked against the
    name pattern and the size bounds."""
    info = files.get(key) if isinstance(files, dict) else None
    if not isinstance(info, dict) or not {"name", "size", "sha256"} <= info.keys():
        raise fail(f"{MANIFEST} has no valid entry for the {key} file")
    name, size, sha = info["name"], info["size"], info["sha256"]
    if not isinstance(name, str) or not _DATA_FILE_RE.match(name) or ".tmp" in name:
        raise fail(f"{MANIFEST} names an unexpected file {name!r}")
    if not isinstance(size, int) or not isinstance(sha, str):
        raise fail(f"{MANIFEST} has a bad size or checksum for {name}")
    lo, hi = bounds
    if not lo <= size <= hi:
        raise fail(f"{MANIFEST} gives {name} {size} bytes, {'too small' if size < lo else 'too large'} "
                   f"{what} ({lo} to {hi} bytes)")
    return name, size, sha


def _open_checked(d: Path, name: str, size: int, sha: str, stack: contextlib.ExitStack,
                  fail: Callable[[str], DatabaseError]) -> Any:
    """Open data file ``name`` (a regular file, no link followed, never blocking), check its size
    and sha256, and return it positioned at the start."""
    try:
        fh = stack.enter_context(fileio.open_regular(d / name))
        actual = os.fstat(fh.fileno()).st_size
        if actual != size:
            raise fail(f"data file {name} is {actual} bytes, expected {size} (truncated or damaged)")
        digest = hashlib.sha256()
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
        fh.seek(0)
    except FileNotFoundError:
        raise fail(f"data file {name} is missing") from None
    except fileio.UnsafeFileError as exc:
        raise fail(f"data file {exc}") from exc
    except OSError as exc:
        raise fail(f"cannot read data file {name}: {exc.strerror or exc}") from exc
    if digest.hexdigest() != sha:
        raise fail(f"data file {name} fails its sha256 checksum (damaged)")
    return fh


def _parse_records(raw: bytes, count: int, fail: Callable[[str], DatabaseError]) -> tuple[list[str], list[Any]]:
    """Frame ids and metadata from a records file, checked for type and length."""
    try:
        recs = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise fail("invalid JSON" + (" (nested too deeply)" if isinstance(exc, RecursionError) else f" ({exc})")) from exc
    frame_ids = recs.get("frame_ids") if isinstance(recs, dict) else None
    metas = recs.get("metadata") if isinstance(recs, dict) else None
    if not isinstance(frame_ids, list) or not isinstance(metas, list):
        raise fail("expected an object with lists 'frame_ids' and 'metadata'")
    if len(frame_ids) != count or len(metas) != count:
        raise fail(f"holds {len(frame_ids)} frame ids and {len(metas)} metadata entries, the manifest says {count}")
    if not all(isinstance(f, str) for f in frame_ids) or not all(m is None or isinstance(m, dict) for m in metas):
        raise fail("frame ids must be strings and metadata objects or null")
    return frame_ids, metas
