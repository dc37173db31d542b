"""Ground-truth lists of the GSV-Cities benchmark protocol (the ``gsv-lists`` layout).

The GSV-Cities family of repositories (MixVPR, SALAD, BoQ, ...) evaluates every benchmark on
fixed numpy lists named by a prefix ``P`` (e.g. ``datasets/msls_val/msls_val``):

* ``P_dbImages.npy``, ``P_qImages.npy``: image paths relative to the data set's root;
* ``P_gt.npy``: for each query, the indices of its positive database images (an object array
  of integer arrays, i.e. a pickle inside the ``.npy``);
* or, where present, ``P_qIdx.npy`` (which entries of qImages are evaluated) and
  ``P_pIdx.npy`` (their positives, aligned with qIdx) — MSLS-val;
* no ground truth at all for MSLS-challenge (``msls_test``): only a submission can be written.

Object arrays are read with :class:`RestrictedUnpickler`, which admits numpy arrays, dtypes and
integers only: a list file can never run code (plain ``np.load(allow_pickle=True)`` would run
whatever the file contains).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format
from tqdm import tqdm

from .benchmarks import Benchmark

SUFFIXES = ("dbImages", "qImages", "gt", "qIdx", "pIdx")


class ListError(ValueError):
    """A benchmark list is missing, malformed or inconsistent; the message names the file."""


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes, limited to latin-1."""
    if encoding.lower().replace("-", "").replace("_", "") != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused to load '_codecs.encode' with encoding {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    """``bytes()`` as protocol-2 pickles use it for empty bytes; any argument is refused."""
    if args:
        raise pickle.UnpicklingError("refused to load 'bytes' with arguments")
    return b""


def _allowed_globals() -> dict[tuple[str, str], object]:
    try:  # numpy >= 2 keeps the array machinery in numpy._core; files written by numpy 1 name numpy.core
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core import multiarray
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_bytes,
        ("__builtin__", "bytes"): _empty_bytes,
        ("builtins", "bytes"): _empty_bytes,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dtypes, numpy scalars and builtin values; refuses every other global.

    The idea of torch's ``weights_only`` loading: ``find_class`` hands out only numpy's array
    and dtype reconstruction (under its numpy 1 and numpy 2 module names) and the two helpers
    protocol-2 pickles need for bytes, each limited to that use.
    """

    ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load '{module}.{name}': only numpy arrays, dtypes and integers are allowed"
            ) from None


def read_npy(path: str | Path) -> np.ndarray:
    """The array in a ``.npy`` file; object arrays go through :class:`RestrictedUnpickler`."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = npy_format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = npy_format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = npy_format.read_array_header_2_0(f)
            else:
                raise ListError(f"{path}: unsupported .npy format version {version[0]}.{version[1]}")
            if not dtype.hasobject:
                f.seek(0)
                return npy_format.read_array(f, allow_pickle=False)
            arr = RestrictedUnpickler(f, encoding="latin1").load()
    except ListError:
        raise
    except OSError as exc:
        raise ListError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except Exception as exc:  # noqa: BLE001 - a damaged or hostile pickle can fail in any unpickler step
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ListError(f"{path}: not a loadable .npy list ({first})") from exc
    if not isinstance(arr, np.ndarray) or arr.shape != shape:
        raise ListError(f"{path}: the pickled payload is not the {shape} array its header announces")
    return arr


# ----------------------------------------------------------------------------- validation of one list


def as_paths(arr: np.ndarray, path: Path) -> list[str]:
    """A 1-D list of relative image paths (unicode, bytes or an object array of str)."""
    if arr.ndim != 1:
        raise ListError(f"{path}: expected a 1-D list of image paths, got shape {arr.shape}")
    if arr.size == 0:
        return []  # np.array([]) is float64
    if arr.dtype.kind == "U":
        return [str(p) for p in arr]
    if arr.dtype.kind == "S":
        return [bytes(p).decode("utf-8") for p in arr]
    if arr.dtype.hasobject and all(isinstance(p, str) for p in arr):
        return list(arr)
    raise ListError(f"{path}: expected image paths (strings), got an array of {arr.dtype}")


def _as_indices(item: object) -> np.ndarray | None:
    if isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_)):
        return np.array([int(item)], np.int64)
    if not isinstance(item, np.ndarray) or item.ndim > 1 or item.dtype.hasobject:
        return None
    if item.size == 0:
        return np.zeros(0, np.int64)  # empty lists are often float64 (np.array([]))
    if item.dtype.kind not in "iu":
        return None
    return item.reshape(-1).astype(np.int64)


def as_index_lists(arr: np.ndarray, path: Path, upper: int, target: str) -> list[np.ndarray]:
    """Per entry, integer indices in ``[0, upper)``; an object array of integer arrays or a 2-D integer array."""
    if arr.ndim == 2 and arr.dtype.kind in "iu":
        rows = [r.astype(np.int64) for r in arr]
    elif arr.ndim == 1 and arr.dtype.hasobject:
        rows = [_as_indices(item) for item in arr]
        bad = next((i for i, r in enumerate(rows) if r is None), None)
        if bad is not None:
            found = arr[bad]
            desc = f"{found.dtype} array" if isinstance(found, np.ndarray) else type(found).__name__
            raise ListError(f"{path}: entry {bad} is a {desc}, not an array of integer indices")
    else:
        raise ListError(f"{path}: expected an object array of integer index arrays, got {arr.dtype} {arr.shape}")
    for i, r in enumerate(rows):
        if r.size and (r.min() < 0 or r.max() >= upper):
            wrong = int(r[(r < 0) | (r >= upper)][0])
            raise ListError(f"{path}: entry {i} holds index {wrong}, out of range for {upper} {target}")
    return rows


def as_query_indices(arr: np.ndarray, path: Path, upper: int) -> np.ndarray:
    """The evaluated subset of qImages: a 1-D integer array with entries in ``[0, upper)``."""
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ListError(f"{path}: expected a 1-D integer array of query indices, got {arr.dtype} {arr.shape}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= upper):
        wrong = int(arr[(arr < 0) | (arr >= upper)][0])
        raise ListError(f"{path}: query index {wrong} out of range for {upper} listed queries")
    return arr


# ----------------------------------------------------------------------------- one benchmark's lists


@dataclass
class GsvLists:
    """One benchmark's lists, checked against each other (indices into the lists, no paths resolved)."""

    prefix: Path
    db_images: list[str]
    q_images: list[str]
    query_ids: np.ndarray  # the evaluated entries of q_images (all of them without qIdx)
    positives: list[np.ndarray] | None  # per evaluated query; None: the lists carry no ground truth
    source: str  # where positives come from: "pIdx", "gt" or "none"


def list_files(prefix: str | Path) -> dict[str, Path]:
    """The list files present for ``prefix``; dbImages and qImages are required."""
    files = {s: Path(f"{prefix}_{s}.npy") for s in SUFFIXES}
    present = {s: p for s, p in files.items() if p.is_file()}
    missing = [files[s].name for s in ("dbImages", "qImages") if s not in present]
    if missing:
        raise ListError(f"--gt-prefix {prefix}: no {' or '.join(missing)} in {files['dbImages'].parent.resolve()}")
    return present


def _align(rows: list[np.ndarray], query_ids: np.ndarray, listed: int, path: Path, subset: bool) -> list[np.ndarray]:
    """Positives per evaluated query: aligned with qIdx, or (when qIdx is given) one per listed query."""
    if len(rows) == len(query_ids):
        return rows
    if subset and len(rows) == listed:
        return [rows[i] for i in query_ids]
    where = f"{len(query_ids)} evaluated queries" + (f" ({listed} listed)" if subset else "")
    raise ListError(f"{path}: {len(rows)} positive lists but {where}: the lists' lengths disagree")


def read_lists(prefix: str | Path) -> GsvLists:
    """Read and cross-check ``<prefix>_{dbImages,qImages,gt|qIdx,pIdx}.npy``."""
    files = list_files(prefix)
    db = as_paths(read_npy(files["dbImages"]), files["dbImages"])
    qs = as_paths(read_npy(files["qImages"]), files["qImages"])
    if not db:
        raise ListError(f"{files['dbImages']}: no database images")
    if "qIdx" in files:
        query_ids = as_query_indices(read_npy(files["qIdx"]), files["qIdx"], len(qs))
    else:
        query_ids = np.arange(len(qs))
    if len(query_ids) == 0:
        raise ListError(f"{files.get('qIdx', files['qImages'])}: the query set is empty")
    source = "pIdx" if "pIdx" in files else "gt" if "gt" in files else "none"
    positives = None
    if source != "none":
        rows = as_index_lists(read_npy(files[source]), files[source], len(db), "database images")
        positives = _align(rows, query_ids, len(qs), files[source], "qIdx" in files)
    return GsvLists(Path(prefix), db, qs, query_ids, positives, source)


def missing_images(root: Path, rel_paths: list[str], desc: str, show_progress: bool = True) -> list[int]:
    """Indices of ``rel_paths`` that are not files under ``root``."""
    return [i for i, rel in enumerate(tqdm(rel_paths, desc=desc, leave=False, disable=not show_progress,
                                           mininterval=1.0))
            if not os.path.isfile(os.path.join(root, rel))]


def _missing_message(root: Path, lists: GsvLists, db_missing: list[int], q_missing: list[int]) -> str:
    q_rel = [lists.q_images[i] for i in lists.query_ids]
    first = [lists.db_images[i] for i in db_missing[:3]] + [q_rel[i] for i in q_missing[:3]]
    return (f"{len(db_missing)} of {len(lists.db_images)} database and {len(q_missing)} of {len(q_rel)} query "
            f"images listed by {lists.prefix} are missing under {root}, first: {', '.join(first[:3])} "
            f"(--skip-missing evaluates the rest)")


def load_gsv_lists(root: str | Path, prefix: str | Path, skip_missing: bool = False,
                   show_progress: bool = True) -> Benchmark:
    """A benchmark from GSV-Cities protocol lists; image paths are relative to ``root``.

    Missing images are an error, or with ``skip_missing`` are left out: database indices are
    renumbered and ``info`` counts the skipped images.
    """
    root = Path(root)
    if not root.is_dir():
        raise ListError(f"--dataset {root}: no such folder (the root the listed image paths are relative to)")
    lists = read_lists(prefix)
    q_rel = [lists.q_images[i] for i in lists.query_ids]
    db_missing = missing_images(root, lists.db_images, "checking database images", show_progress)
    q_missing = missing_images(root, q_rel, "checking query images", show_progress)
    if (db_missing or q_missing) and not skip_missing:
        raise ListError(_missing_message(root, lists, db_missing, q_missing))
    keep_db = np.ones(len(lists.db_images), bool)
    keep_db[db_missing] = False
    keep_q = np.ones(len(q_rel), bool)
    keep_q[q_missing] = False
    if not keep_db.any() or not keep_q.any():
        raise ListError(f"{_missing_message(root, lists, db_missing, q_missing)}: nothing left to evaluate")
    renumber = np.cumsum(keep_db) - 1  # old database index -> new one (valid where kept)
    positives = [np.zeros(0, np.int64)] * int(keep_q.sum())
    if lists.positives is not None:
        positives = [renumber[p[keep_db[p]]] for p, k in zip(lists.positives, keep_q) if k]
    info = {"gt_prefix": str(lists.prefix.resolve()), "ground_truth_list": lists.source,
            "listed_queries": len(lists.q_images), "skipped_database": len(db_missing),
            "skipped_queries": len(q_missing)}
    return Benchmark(
        lists.prefix.name, "gsv-lists",
        [os.path.join(root, p) for p, k in zip(lists.db_images, keep_db) if k],
        [os.path.join(root, p) for p, k in zip(q_rel, keep_q) if k],
        positives, info, ground_truth=lists.positives is not None,
    )
