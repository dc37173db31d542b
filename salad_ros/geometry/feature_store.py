"""Bounded keyframe id -> :class:`PoseFeatures` store, saved beside the map.

The pose solver's memory of old keyframes, bounded like the verification thumbnails: by count
and by bytes, evicting the oldest keyframe first. With the defaults (ORB, 1000 features at
320 px) a keyframe costs ~30-45 kB: 32 B descriptor + 8 B point + 4 B depth per keypoint.
The file is one npz with every record's arrays concatenated, ids and keyframe stamps (to
refuse a file that belongs to another map), like :meth:`ThumbnailStore.to_bytes`.
"""

from __future__ import annotations

import collections
import io
import os

import numpy as np

from .features import PoseFeatures


class PoseFeatureStore:
    """Bounded id -> :class:`PoseFeatures` mapping of one feature kind, evicting the oldest first."""

    def __init__(self, max_count: int, max_bytes: int) -> None:
        if max_count < 1 or max_bytes < 1:
            raise ValueError("PoseFeatureStore needs max_count >= 1 and max_bytes >= 1")
        self.max_count = int(max_count)
        self.max_bytes = int(max_bytes)
        self._items: collections.OrderedDict[int, PoseFeatures] = collections.OrderedDict()
        self._bytes = 0
        self.evicted = 0  #: records dropped so far to stay within the bounds

    def put(self, key: int, feats: PoseFeatures) -> None:
        """Store ``feats`` under ``key`` (replacing any previous record); all records share one kind."""
        first = next(iter(self._items.values()), None)
        if first is not None and first.kind != feats.kind:
            raise ValueError(f"store holds {first.kind} features, got {feats.kind}")
        self.discard(key)
        if feats.nbytes > self.max_bytes:  # larger than the whole budget: dropped, the others kept
            self.evicted += 1
            return
        self._items[key] = feats
        self._bytes += feats.nbytes
        while len(self._items) > self.max_count or self._bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.nbytes
            self.evicted += 1

    def get(self, key: int) -> PoseFeatures | None:
        """The record stored under ``key``, or None when absent or evicted."""
        return self._items.get(key)

    def discard(self, key: int) -> None:
        """Remove ``key`` if present."""
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= old.nbytes

    def clear(self) -> None:
        """Drop every record."""
        self._items.clear()
        self._bytes = 0

    def nbytes(self) -> int:
        """Bytes of array data held."""
        return self._bytes

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def to_bytes(self, stamps_ns: dict[int, int]) -> bytes:
        """The store as an npz file (see the module docstring); ``stamps_ns`` gives each id's stamp."""
        ids = list(self._items)
        recs = [self._items[k] for k in ids]
        first = recs[0] if recs else None
        width = first.descriptors.shape[1] if first is not None and first.descriptors is not None else 0
        desc = [r.descriptors if r.descriptors is not None else np.empty((len(r), width), _desc_dtype(first))
                for r in recs]
        depth = [r.depth if r.depth is not None else np.full(len(r), np.nan, np.float32) for r in recs]
        buf = io.BytesIO()
        np.savez(buf, ids=np.array(ids, np.int64), stamps_ns=np.array([stamps_ns[k] for k in ids], np.int64),
                 counts=np.array([len(r) for r in recs], np.int64),
                 has_depth=np.array([r.depth is not None for r in recs], bool),
                 focal_px=np.array([r.focal_px for r in recs], np.float64),
                 kind=np.frombuffer((first.kind if first else "").encode("ascii"), np.uint8),
                 points=np.concatenate([r.points for r in recs]) if recs else np.empty((0, 2), np.float32),
                 descriptors=np.concatenate(desc) if recs else np.empty((0, 0), np.uint8),
                 depth=np.concatenate(depth) if recs else np.empty(0, np.float32))
        return buf.getvalue()

    def max_file_bytes(self, entries: int) -> int:
        """Largest file this store can have written for a map of ``entries`` keyframes."""
        return 2 * self.max_bytes + 64 * max(entries, 1) + (1 << 20)

    def load(self, source: str | os.PathLike[str] | bytes, stamps_ns: dict[int, int], name: str | None = None) -> int:
        """Add the records saved in ``source`` (a file written from :meth:`to_bytes`, or its
        bytes) whose id and stamp match ``stamps_ns``; returns how many. The file may be damaged
        or hostile: it is read through the bounded npz reader (regular file, sizes bounded by
        this store's budget and the map's keyframe count, every member's type and shape checked
        before inflating); anything wrong raises ValueError naming it (or ``name``)."""
        from .. import fileio, npzfile  # the store itself needs neither

        name = name or ("pose feature bytes" if isinstance(source, (bytes, bytearray)) else str(source))
        # a file holds at most one record per keyframe of its map, which this store could hold
        entries = max(len(stamps_ns), self.max_count)
        limit = self.max_file_bytes(entries)
        n_feat = limit // 8  # no feature takes less than 8 bytes (its point)
        try:
            raw = bytes(source) if isinstance(source, (bytes, bytearray)) else fileio.read_regular(source, limit)
            z = npzfile.read_npz(raw, {
                "ids": npzfile.Member("i", (None,), 8, entries), "stamps_ns": npzfile.Member("i", (None,), 8, entries),
                "counts": npzfile.Member("i", (None,), 8, entries), "has_depth": npzfile.Member("b", (None,), 1, entries),
                "focal_px": npzfile.Member("f", (None,), 8, entries), "kind": npzfile.Member("u", (None,), 1, 16),
                "points": npzfile.Member("f", (None, 2), 4, 2 * n_feat),
                "descriptors": npzfile.Member("uf", (None, None), None, limit),
                "depth": npzfile.Member("f", (None,), 4, n_feat)}, limit)
            kind = z["kind"].tobytes().decode("ascii")
        except (OSError, ValueError) as exc:  # NpzError and UnicodeDecodeError are ValueErrors
            raise ValueError(f"{name}: not a pose feature file ({exc})") from exc
        ids, stamps, counts, has_depth, focal = (z[k] for k in ("ids", "stamps_ns", "counts", "has_depth", "focal_px"))
        points, desc, depth = z["points"], z["descriptors"], z["depth"]
        ends = np.cumsum(counts)
        total = int(ends[-1]) if len(ends) else 0
        if not (len(ids) == len(stamps) == len(counts) == len(has_depth) == len(focal)) or (counts < 0).any() \
                or not (len(points) == len(depth) == total) or (total and len(desc) != total):
            raise ValueError(f"{name}: inconsistent pose feature file")
        loaded = 0
        for i, (key, stamp) in enumerate(zip(ids.tolist(), stamps.tolist(), strict=True)):
            if stamps_ns.get(key) != stamp:
                continue
            sl = slice(int(ends[i] - counts[i]), int(ends[i]))
            rec = PoseFeatures(points[sl].copy(), desc[sl].copy() if desc.size else None,
                               depth[sl].copy() if has_depth[i] else None, kind, float(focal[i]))
            self.put(key, rec)
            loaded += 1
        return loaded


def _desc_dtype(feats: PoseFeatures | None) -> np.dtype:
    if feats is None or feats.descriptors is None:
        return np.dtype(np.uint8)
    return feats.descriptors.dtype
