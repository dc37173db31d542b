"""The keyframe database: a faiss index of unit descriptors plus a table of keyframe records.

Descriptors are L2-normalised on the way in and searched by inner product, so scores are
cosine similarities in [-1, 1]. Keyframe ids are 0, 1, 2, ... in insertion order (the
database is append-only). Searches apply the exclusion rule of :mod:`salad_ros.exclusions`
by over-fetching (k + the number that could be excluded) and filtering.

A database belongs to one robot (``robot_id``, and ``session``: the lineage of its map, random
for a new map, kept by saving and loading). With multi-robot operation it also holds peers'
keyframes (``add(..., origin=...)``); the exclusion rule then applies to the owner's own
keyframes only (:func:`salad_ros.fleet.policy.fleet_eligible`): a peer's keyframe is never
"recent", whenever and wherever it was made.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from salad_ros.descriptors import unit_rows
from salad_ros.exclusions import SearchExclusions, excluded_upper_bound
from salad_ros.fleet.policy import fleet_eligible
from salad_ros.geometry import Pose, pose_to_row
from salad_ros.params import ConfigError

from . import index as fx
from . import storage
from .config import PREFIX, DatabaseConfig
from .table import Keyframe, KeyframeTable, Origin, check_rows, new_session


class KeyframeDatabase:
    """Incremental cosine-similarity index of keyframe descriptors with keyframe records.

    Thread-safe: one internal lock serialises add, search, lookup and save. Index types are
    described in :mod:`salad_ros.database.index`, the on-disk format in
    :mod:`salad_ros.database.storage`.
    """

    def __init__(self, dim: int, index: str = "flat", fp16: bool = False, *, model_name: str = "",
                 robot_id: int = 0, session: int | None = None, **options: Any) -> None:
        """``options`` are further :class:`DatabaseConfig` fields (``hnsw_m=16``, ...); ``robot_id``
        is the owner's fleet id, ``session`` the map's lineage (None: a new random one)."""
        self._setup(dim, DatabaseConfig(index=index, fp16=fp16, **options), model_name)
        self._set_owner(robot_id, new_session() if session is None else session)
        self._install(fx.new_cpu_index(self.dim, self.config))

    @classmethod
    def from_config(cls, dim: int, cfg: DatabaseConfig, model_name: str = "", robot_id: int = 0) -> KeyframeDatabase:
        """A new, empty database of robot ``robot_id`` with the options of ``cfg``."""
        return cls(dim, model_name=model_name, robot_id=robot_id, **dataclasses.asdict(cfg))

    # ----- setup

    def _set_owner(self, robot_id: int, session: int) -> None:
        Origin(robot_id, session, np.empty(0))  # checks both are UINT32
        self.robot_id = int(robot_id)  #: the owner's fleet robot id
        self.session = int(session)  #: the owner's map lineage
        self._own_count = 0

    def _setup(self, dim: int, cfg: DatabaseConfig, model_name: str) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ConfigError(f"descriptor dimension must be a positive integer, got {dim!r}")
        if not isinstance(model_name, str):
            raise ConfigError(f"model_name must be a string, got {model_name!r}")
        if cfg.index == "ivfpq" and cfg.ivf_pq_m and dim % cfg.ivf_pq_m:
            raise ConfigError(f"parameter '{PREFIX}ivf_pq_m': {cfg.ivf_pq_m} does not divide the "
                              f"descriptor dimension {dim}")
        self._pq_m = cfg.ivf_pq_m or fx.auto_pq_m(int(dim))
        self.dim = int(dim)
        self.model_name = model_name
        self.config = cfg
        self._lock = threading.RLock()
        self._on_gpu, self._device_note = fx.choose_device(cfg.use_gpu, cfg.index)
        self._gpu_res: Any = None
        self._table = KeyframeTable()

    def _install(self, cpu_index: Any) -> None:
        if self._on_gpu:
            self._index, self._gpu_res = fx.to_gpu(cpu_index, self.config.fp16)
        else:
            self._index = cpu_index

    @property
    def trained(self) -> bool:
        """False while an ivfpq database still uses its exact staging index."""
        return self.config.index != "ivfpq" or fx.is_trained_ivfpq(self._index)

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
        return len(self._table)

    def __repr__(self) -> str:
        return f"KeyframeDatabase({self.describe()})"

    # ----- adding

    def add(self, descriptors: np.ndarray, stamps_ns: Any, *, frame_ids: str | Sequence[str] | None = None,
            poses: Sequence[Pose | None] | np.ndarray | None = None,
            metadata: Sequence[dict[str, Any] | None] | None = None, origin: Origin | None = None) -> np.ndarray:
        """Append keyframes; returns their ids (int64[N]).

        ``stamps_ns`` are integer nanoseconds. ``frame_ids`` is one string for all or one per
        keyframe; ``poses`` one :class:`Pose` (or None) per keyframe or an (N, 7) array with
        NaN rows for "no pose"; ``metadata`` one small JSON-able dict (or None) per keyframe.
        Without ``origin`` they are the owner's next keyframes; with it, a peer robot's
        (ValueError for the owner's own lineage or a keyframe the database holds already).
        """
        x = unit_rows(descriptors, self.dim, "descriptors")
        n = len(x)
        rows = check_rows(n, stamps_ns, frame_ids, poses, metadata)
        if origin is not None and len(origin.keyframe_ids) != n:
            raise ValueError(f"got {n} descriptors but {len(origin.keyframe_ids)} robot keyframe ids")
        if n == 0:
            return np.empty(0, dtype=np.int64)
        with self._lock:
            rows.origin = self._origin_rows(n, origin)
            first = len(self)
            self._index.add(x)
            self._table.append(rows)
            if origin is None:
                self._own_count += n
            if self.config.index == "ivfpq" and not self.trained and len(self) >= self.config.ivf_train_at:
                self._index = fx.train_ivfpq(self._index, self.dim, self.config, self._pq_m)
            return np.arange(first, first + n, dtype=np.int64)

    def _origin_rows(self, n: int, origin: Origin | None) -> np.ndarray:
        """int64[n, 3] origin rows of ``n`` new keyframes (checked against the table)."""
        if origin is None:
            ids = np.arange(self._own_count, self._own_count + n, dtype=np.int64)
            return np.stack([np.full(n, self.robot_id), np.full(n, self.session), ids], axis=1)
        if (origin.robot_id, origin.session) == (self.robot_id, self.session):
            raise ValueError("peer keyframes can't have the owner's robot id and session")
        if len(set(origin.keyframe_ids.tolist())) != n or any(
                self._table.find(origin.robot_id, origin.session, k) is not None for k in origin.keyframe_ids):
            raise ValueError(f"robot {origin.robot_id} keyframes {origin.keyframe_ids.tolist()[:5]}: "
                             "the database holds them already (or they repeat)")
        return np.stack([np.full(n, origin.robot_id), np.full(n, origin.session), origin.keyframe_ids], axis=1)

    @property
    def own_count(self) -> int:
        """The owner's keyframes (its next keyframe gets this robot keyframe id)."""
        return self._own_count

    def origins(self, ids: Any = None) -> np.ndarray:
        """Copy of int64[N, 3] rows (robot_id, session, robot_keyframe_id) of ``ids`` (default all);
        ids must exist (IndexError otherwise)."""
        with self._lock:
            o = self._table.origins
            return o.copy() if ids is None else o[np.asarray(ids, dtype=np.int64)]

    def find(self, robot_id: int, session: int, robot_keyframe_id: int) -> int | None:
        """The id of robot ``robot_id``'s keyframe ``robot_keyframe_id`` of lineage ``session``, or None."""
        with self._lock:
            return self._table.find(robot_id, session, robot_keyframe_id)

    # ----- lookup

    def get(self, keyframe_id: int) -> Keyframe:
        """The keyframe with this id; KeyError when there is none."""
        with self._lock:
            i = int(keyframe_id)
            if not 0 <= i < len(self):
                raise KeyError(f"no keyframe with id {keyframe_id} (database has {len(self)})")
            return self._table.get(i)

    def find_by_stamp(self, stamp_ns: int, tolerance_ns: int = 0) -> Keyframe | None:
        """The keyframe whose stamp is nearest ``stamp_ns`` within ``tolerance_ns``, else None."""
        with self._lock:
            best = self._table.nearest_stamp(stamp_ns, tolerance_ns)
            return None if best is None else self.get(best)

    def stamps_ns(self) -> np.ndarray:
        """Copy of all keyframe stamps (int64[N], index = id)."""
        with self._lock:
            return self._table.stamps.copy()

    def poses(self) -> np.ndarray:
        """Copy of all poses as float64[N, 7]; NaN rows where a keyframe has no pose."""
        with self._lock:
            return self._table.poses.copy()

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
        fewer than ``k`` keyframes qualify, ids and stamps are -1 and scores -inf. Excluded
        (:mod:`salad_ros.exclusions`, among the owner's own keyframes only): the
        ``exclude_recent`` newest keyframes; keyframes whose stamp is within ``exclude_within_ns``
        of the query stamp (or of the newest keyframe when ``query_stamps_ns`` is None); with
        ``query_poses`` and ``exclude_radius > 0``, keyframes whose pose lies within that many
        metres of the query's pose. Peers' keyframes are never excluded.
        """
        q = unit_rows(queries, self.dim, "queries")
        nq, k = len(q), int(k)
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        ids = np.full((nq, k), -1, dtype=np.int64)
        stamps = np.full((nq, k), -1, dtype=np.int64)
        scores = np.full((nq, k), -np.inf, dtype=np.float32)
        ex = SearchExclusions(int(exclude_recent), int(exclude_within_ns), float(exclude_radius))
        with self._lock:
            n = len(self)
            if n == 0 or k == 0 or nq == 0:
                return ids, stamps, scores
            ref, qpos = self._query_refs(ex, nq, query_stamps_ns, query_poses)
            st, pos = self._table.stamps, self._table.poses[:, :3]
            extra = excluded_upper_bound(ex, st, self._table.stamps_sorted, pos, ref, qpos, nq)
            fetch = int(min(n, k + extra.max()))
            if self._on_gpu:
                fetch = min(fetch, fx.GPU_MAX_K)
            dist, idx = fx.search_sorted(self._index, q, fetch, self._on_gpu)
            safe = np.where(idx >= 0, idx, 0)
            origin = self._table.origins[safe]
            valid = (idx >= 0) & fleet_eligible(
                ex, origin[..., 0], origin[..., 2], st[safe], pos[safe], query_robot_id=self.robot_id,
                own_count=self._own_count, query_stamp_ns=None if ref is None else ref[:, None],
                query_position=None if qpos is None else qpos[:, None, :])
            # stable sort keeps the score order among the valid ones
            take = min(k, fetch)
            order = np.argsort(~valid, axis=1, kind="stable")[:, :take]
            rows = np.arange(nq)[:, None]
            sel_ids, sel_ok = idx[rows, order], valid[rows, order]
            ids[:, :take] = np.where(sel_ok, sel_ids, -1)
            stamps[:, :take] = np.where(sel_ok, st[np.where(sel_ok, sel_ids, 0)], -1)
            scores[:, :take] = np.where(sel_ok, dist[rows, order], -np.inf)
        return ids, stamps, scores

    def _query_refs(self, ex: SearchExclusions, nq: int, query_stamps_ns: Any,
                    query_poses: Sequence[Pose | None] | None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Reference stamps [Q] for the time rule (the newest keyframe's stamp without query
        stamps) and query positions [Q, 3] for the radius rule; None where a rule is off."""
        ref = None
        if ex.within_ns > 0:
            if query_stamps_ns is None:
                ref = np.full(nq, int(self._table.stamps.max()), dtype=np.int64)
            else:
                ref = np.asarray(query_stamps_ns, dtype=np.int64).reshape(-1)
                if len(ref) != nq:
                    raise ValueError(f"got {nq} queries but {len(ref)} query stamps")
        qpos = None
        if ex.radius_m > 0 and query_poses is not None:
            if len(query_poses) != nq:
                raise ValueError(f"got {nq} queries but {len(query_poses)} query poses")
            qpos = np.stack([pose_to_row(p)[:3] for p in query_poses])
        return ref, qpos

    # ----- housekeeping

    def clear(self) -> None:
        """Remove every keyframe (ids start again at 0, in a new session)."""
        with self._lock:
            self._setup(self.dim, self.config, self.model_name)
            self._set_owner(self.robot_id, new_session())  # a new map: a new lineage
            self._install(fx.new_cpu_index(self.dim, self.config))

    def set_search_params(self, *, hnsw_ef_search: int | None = None, ivf_nprobe: int | None = None) -> None:
        """Change search-time knobs of an existing index (validated like the config)."""
        with self._lock:
            changes = {}
            if hnsw_ef_search is not None:
                changes["hnsw_ef_search"] = hnsw_ef_search
            if ivf_nprobe is not None:
                changes["ivf_nprobe"] = ivf_nprobe
            self.config = dataclasses.replace(self.config, **changes)
            fx.apply_search_params(self._index, self.config)

    def memory_report(self) -> dict[str, float]:
        """Bytes used: ``index``, ``table`` (stamps, poses, ids, metadata), ``total`` and
        ``per_keyframe`` (total / count; 0 when empty)."""
        with self._lock:
            n = len(self)
            index_b = fx.index_nbytes(self._index, self._on_gpu, self.dim, self.config.fp16)
            table_b = self._table.nbytes()
            total = index_b + table_b
            return {"count": n, "index": index_b, "table": table_b, "total": total,
                    "per_keyframe": total / n if n else 0.0}

    def memory_bytes(self) -> int:
        """Total bytes held by the database (see :meth:`memory_report`)."""
        return int(self.memory_report()["total"])

    # ----- persistence

    def save(self, directory: str | os.PathLike[str], attachments: Mapping[str, bytes] | None = None) -> storage.Saved:
        """Write the database, with ``attachments`` committed together with it (e.g. the
        verification thumbnails), to ``directory`` atomically; a replaced map holding keyframes
        this one lacks is kept as ``previous/`` (see :mod:`salad_ros.database.storage` and
        :mod:`.backup`). Returns what was written. Adds and searches wait until it is done."""
        with self._lock:
            return storage.save(directory, self._contents(), attachments)

    def _contents(self) -> storage.Contents:
        t = self._table
        return storage.Contents(self.dim, self.model_name, self.config, self.trained,
                                fx.to_cpu(self._index, self._on_gpu, self.config.fp16),
                                t.stamps, t.poses, t.frame_ids, t.metadata, t.origins, self.robot_id, self.session)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], expected_dim: int | None = None,
             expected_model: str | None = None, *, config: DatabaseConfig | None = None,
             robot_id: int | None = None) -> KeyframeDatabase:
        """Load a database saved by :meth:`save`; never modifies the files.

        Refuses (:class:`DatabaseError`) a missing or damaged manifest or data file, another
        format version, a dimension other than ``expected_dim``, a model other than
        ``expected_model`` or a map of another robot than ``robot_id``. With ``config``, its
        index type and fp16 must match the stored ones; its search-time options (ef_search,
        nprobe, use_gpu, train_at) are applied. A map of format version 1 (before robots had
        ids) is the own map of robot ``robot_id`` (0 when None), in a new session.
        """
        c = storage.load(directory, expected_dim, expected_model, config, robot_id)
        db = cls.__new__(cls)
        db._setup(c.dim, c.config, c.model_name)
        db._set_owner(c.robot_id, c.session)
        if fx.is_trained_ivfpq(c.index):
            c.index.make_direct_map()
            db._pq_m = int(c.index.pq.M)
        db._install(c.index)
        fx.apply_search_params(db._index, db.config)
        db._table = KeyframeTable.from_saved(c.stamps, c.poses, c.frame_ids, c.metadata, c.origins)
        db._own_count = int(np.count_nonzero((c.origins[:, 0] == db.robot_id) & (c.origins[:, 1] == db.session)))
        return db
