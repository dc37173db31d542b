"""Visual place recognition test sets: which database images are positives for each query.

Three layouts are understood:

* ``utm``: the common VPR benchmark layout (Pitts30k, MSLS, Tokyo 24/7, SF-XL, ... as
  prepared by the usual download scripts). ``<root>/database/`` and ``<root>/queries/`` (or
  ``<root>/images/test/{database,queries}``) hold images named
  ``@<utm_east>@<utm_north>@<anything>@.jpg``; a database image is a positive of a query when
  within ``threshold`` metres (25 by default).
* ``sequence``: Nordland-style aligned sequences. ``database/`` and ``queries/`` hold the frames
  of two traversals; a frame's index is the last integer in its file name (or, when names
  carry no usable number, its position in sorted order), and positives are database frames
  whose index is within ``tolerance`` of the query's.
* ``gsv-lists``: the fixed lists of the GSV-Cities benchmark protocol (``<prefix>_dbImages.npy``,
  ``_qImages.npy``, ``_gt.npy`` or ``_qIdx.npy`` + ``_pIdx.npy``) with which the paper was
  measured; image paths are relative to the root. Read by :mod:`training.gsv_lists`.

A held-out split of GSV-Cities places (query = one image per place, database = the others,
positives = same place) is built by :func:`gsv_benchmark` for validation during training.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DB_DIRS = ("database", "db")
QUERY_DIRS = ("queries", "query")
#: Values of ``layout`` in :func:`load_benchmark`.
LAYOUTS = ("auto", "utm", "sequence", "gsv-lists")


@dataclass
class Benchmark:
    """A retrieval test set: image paths and, per query, the indices of its positives.

    ``ground_truth`` is False for lists without positives (MSLS-challenge): the positive
    lists are then empty and only a ranking can be produced.
    """

    name: str
    layout: str
    db_paths: list[str]
    query_paths: list[str]
    positives: list[np.ndarray]
    info: dict = field(default_factory=dict)
    ground_truth: bool = True

    def __post_init__(self) -> None:
        if len(self.positives) != len(self.query_paths):
            raise ValueError(f"{self.name}: {len(self.query_paths)} queries but {len(self.positives)} positive lists")

    @property
    def num_without_positives(self) -> int:
        return sum(len(p) == 0 for p in self.positives)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def find_split(root: str | Path) -> tuple[Path, Path]:
    """``(database_dir, queries_dir)`` of a benchmark root (also ``<root>/images/test/``)."""
    root = Path(root)
    for base in (root, root / "images" / "test"):
        db = next((base / d for d in DB_DIRS if (base / d).is_dir()), None)
        qs = next((base / d for d in QUERY_DIRS if (base / d).is_dir()), None)
        if db is not None and qs is not None:
            return db, qs
    raise FileNotFoundError(
        f"{root} has no database/ and queries/ folders (looked in {root} and {root / 'images' / 'test'})"
    )


def parse_utm(name: str) -> tuple[float, float] | None:
    """``(east, north)`` from a name like ``@589331.2@4137981.7@...@.jpg``, else ``None``."""
    fields = Path(name).name.split("@")
    if len(fields) < 3:
        return None
    try:
        return float(fields[1]), float(fields[2])
    except ValueError:
        return None


def positives_within(query_xy: np.ndarray, db_xy: np.ndarray, threshold: float, chunk: int = 1024) -> list[np.ndarray]:
    """Per query, indices of database points within ``threshold`` (Euclidean, metres)."""
    out: list[np.ndarray] = []
    r2 = float(threshold) ** 2
    for start in range(0, len(query_xy), chunk):  # chunks bound the memory of the distance matrix
        q = query_xy[start:start + chunk]
        d2 = ((q[:, None, :] - db_xy[None, :, :]) ** 2).sum(-1)
        out.extend(np.flatnonzero(row <= r2) for row in d2)
    return out


def load_utm_benchmark(root: str | Path, threshold: float = 25.0) -> Benchmark:
    """A benchmark in the UTM-in-file-name layout; positives within ``threshold`` metres."""
    db_dir, q_dir = find_split(root)
    db, qs = _images(db_dir), _images(q_dir)
    if not db or not qs:
        raise ValueError(f"{root}: {len(db)} database and {len(qs)} query images; both must be non-empty")
    coords = []
    for paths in (db, qs):
        xy = [parse_utm(p.name) for p in paths]
        bad = [p.name for p, c in zip(paths, xy) if c is None]
        if bad:
            raise ValueError(f"{root}: {len(bad)} file names carry no @east@north@ UTM coordinates, e.g. {bad[:3]}")
        coords.append(np.asarray(xy, dtype=np.float64))
    positives = positives_within(coords[1], coords[0], threshold)
    return Benchmark(
        Path(root).name, "utm", [str(p) for p in db], [str(p) for p in qs], positives,
        {"threshold_m": threshold, "db_utm": coords[0], "query_utm": coords[1]},
    )


def frame_indices(paths: Sequence[Path]) -> np.ndarray:
    """Frame index per file: the last integer in the stem; sorted position if names have none."""
    nums = []
    for p in paths:
        found = re.findall(r"\d+", p.stem)
        nums.append(int(found[-1]) if found else None)
    if any(n is None for n in nums) or len(set(nums)) != len(nums):
        return np.arange(len(paths))
    return np.asarray(nums, dtype=np.int64)


def load_sequence_benchmark(root: str | Path, tolerance: int = 10) -> Benchmark:
    """Nordland-style aligned sequences; positives are frames within ``tolerance`` indices."""
    db_dir, q_dir = find_split(root)
    db, qs = _images(db_dir), _images(q_dir)
    if not db or not qs:
        raise ValueError(f"{root}: {len(db)} database and {len(qs)} query images; both must be non-empty")
    db_idx, q_idx = frame_indices(db), frame_indices(qs)
    order = np.argsort(db_idx, kind="stable")
    sorted_idx = db_idx[order]
    positives = []
    for qi in q_idx:  # frames are sorted, so the positives are one contiguous range
        lo = int(np.searchsorted(sorted_idx, qi - tolerance, side="left"))
        hi = int(np.searchsorted(sorted_idx, qi + tolerance, side="right"))
        positives.append(np.sort(order[lo:hi]))
    return Benchmark(
        Path(root).name, "sequence", [str(p) for p in db], [str(p) for p in qs], positives,
        {"tolerance_frames": tolerance},
    )


def detect_layout(root: str | Path) -> str:
    """``"utm"`` when every query and database name parses as UTM, else ``"sequence"``."""
    db_dir, q_dir = find_split(root)
    names = [p.name for p in _images(db_dir) + _images(q_dir)]
    return "utm" if names and all(parse_utm(n) is not None for n in names) else "sequence"


def load_benchmark(
    root: str | Path,
    layout: str = "auto",
    threshold: float = 25.0,
    tolerance: int = 10,
    gt_prefix: str | Path | None = None,
    skip_missing: bool = False,
) -> Benchmark:
    """Load a benchmark; ``layout`` is one of :data:`LAYOUTS`.

    With ``gt_prefix`` the layout is ``gsv-lists`` (``auto`` picks it); ``skip_missing`` then
    leaves out listed images missing under ``root`` instead of refusing the lists.
    """
    if gt_prefix is not None:
        if layout not in ("auto", "gsv-lists"):
            raise ValueError(f"--gt-prefix goes with the gsv-lists layout, not '{layout}'")
        from .gsv_lists import load_gsv_lists  # local import: gsv_lists builds on this module

        return load_gsv_lists(root, gt_prefix, skip_missing)
    if layout == "gsv-lists":
        raise ValueError("the gsv-lists layout needs --gt-prefix (the lists' path prefix)")
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "utm":
        return load_utm_benchmark(root, threshold)
    if layout == "sequence":
        return load_sequence_benchmark(root, tolerance)
    raise ValueError(f"unknown benchmark layout '{layout}' ({', '.join(LAYOUTS)})")


def gsv_benchmark(root: str | Path, cities: Sequence[str], max_places: int | None = None, min_img_per_place: int = 2) -> Benchmark:
    """Held-out GSV-Cities places as a benchmark: first image of a place queries the others.

    ``max_places`` (evenly spaced over the places) bounds validation time.
    """
    from .data import read_places  # local import: benchmarks stay usable without the training deps

    places = read_places(root, cities, min_img_per_place)
    if max_places is not None and len(places) > max_places:
        places = [places[i] for i in np.linspace(0, len(places) - 1, max_places).round().astype(int)]
    db_paths: list[str] = []
    query_paths: list[str] = []
    positives: list[np.ndarray] = []
    for place in places:
        first = len(db_paths)
        query_paths.append(place.paths[0])
        db_paths.extend(place.paths[1:])
        positives.append(np.arange(first, len(db_paths)))
    return Benchmark(f"gsv-{'+'.join(cities)}", "gsv", db_paths, query_paths, positives, {"places": len(places)})
