"""GSV-Cities in its official layout, and a place-batch sampler that is resumable and DDP-aware.

Layout under the dataset root::

    Dataframes/<City>.csv   columns place_id, year, month, northdeg, city_id, lat, lon, panoid
    Images/<city_id>/<city_id>_<place_id:07d>_<year:04d>_<month:02d>_<northdeg:03d>_<lat>_<lon>_<panoid>.jpg

Place ids restart in every city, so a place is keyed by (CSV file, place_id) and gets a
contiguous integer label. One dataset item is one place: ``img_per_place`` images of it and
their label. Item randomness (which images, which augmentations) comes from a seed handed in
with the index by :class:`PlaceBatchSampler`, which makes every batch a pure function of
(seed, epoch, batch index): worker count, world size and resuming do not change it.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .augment import TrainTransform

log = logging.getLogger(__name__)

CSV_COLUMNS = ("place_id", "year", "month", "northdeg", "city_id", "lat", "lon", "panoid")
#: Give up on an item after this many places without enough readable images in a row: the
#: dataset is then broken beyond what resampling can hide.
MAX_PLACE_RESAMPLES = 100


@dataclass
class Place:
    """One place: its label, city (CSV stem) and the paths of its images."""

    label: int
    city: str
    place_id: int
    paths: list[str] = field(default_factory=list)


def gsv_image_name(city_id: str, place_id: int, year: int, month: int, northdeg: int, lat: float, lon: float, panoid: str) -> str:
    """File name of one GSV-Cities image (coordinates printed as the shortest float repr)."""
    return f"{city_id}_{place_id:07d}_{year:04d}_{month:02d}_{northdeg:03d}_{lat!r}_{lon!r}_{panoid}.jpg"


def available_cities(root: str | Path) -> list[str]:
    """City names (CSV stems) found under ``root/Dataframes``."""
    frames = Path(root) / "Dataframes"
    if not frames.is_dir():
        raise FileNotFoundError(f"{frames} does not exist: is {root} a GSV-Cities root (Dataframes/, Images/)?")
    return sorted(p.stem for p in frames.glob("*.csv"))


def read_places(root: str | Path, cities: Sequence[str] | None = None, min_img_per_place: int = 4) -> list[Place]:
    """Parse the city CSVs into places, dropping those with fewer than ``min_img_per_place`` images."""
    root = Path(root)
    known = available_cities(root)
    cities = list(cities) if cities else known
    unknown = [c for c in cities if c not in known]
    if unknown:
        raise ValueError(f"cities {unknown} have no CSV in {root / 'Dataframes'}; available: {', '.join(known)}")
    places: list[Place] = []
    dropped = 0
    for city in cities:
        by_id: dict[int, Place] = {}
        with open(root / "Dataframes" / f"{city}.csv", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{f.name} lacks columns {missing} (has {reader.fieldnames})")
            for row in reader:
                pid = int(float(row["place_id"]))
                name = gsv_image_name(
                    row["city_id"], pid, int(float(row["year"])), int(float(row["month"])),
                    int(float(row["northdeg"])), float(row["lat"]), float(row["lon"]), row["panoid"],
                )
                place = by_id.setdefault(pid, Place(-1, city, pid))
                place.paths.append(str(root / "Images" / row["city_id"] / name))
        for pid in sorted(by_id):
            place = by_id[pid]
            if len(place.paths) < min_img_per_place:
                dropped += 1
                continue
            place.label = len(places)
            places.append(place)
    log.info("GSV-Cities: %d places from %d cities (%d places with < %d images dropped)",
             len(places), len(cities), dropped, min_img_per_place)
    return places


def read_rgb(path: str) -> np.ndarray | None:
    """Decode an image file to uint8 RGB, or ``None`` when missing or unreadable."""
    try:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
    except Exception:  # noqa: BLE001 - OpenCV may raise on odd files; treated like a failed decode
        return None
    if img is None or img.size == 0:
        return None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class GSVCities(Dataset):
    """Places of GSV-Cities; ``dataset[(place_index, seed)]`` is one place's images.

    Returns a dict with ``images`` ``[img_per_place, 3, S, S]``, ``label`` (int), ``bad``
    (paths that failed to load while building the item) and ``resampled`` (1 when the place
    had too few readable images and another place was drawn instead, else 0). A failed image
    is replaced by another image of the same place; files found bad are remembered (per
    worker) and skipped afterwards.
    """

    def __init__(
        self,
        root: str | Path,
        cities: Sequence[str] | None = None,
        img_per_place: int = 4,
        min_img_per_place: int = 4,
        transform: TrainTransform | None = None,
    ) -> None:
        if img_per_place < 1:
            raise ValueError(f"img_per_place must be >= 1, got {img_per_place}")
        if min_img_per_place < img_per_place:
            raise ValueError(f"min_img_per_place ({min_img_per_place}) must be >= img_per_place ({img_per_place})")
        self.root = Path(root)
        self.img_per_place = img_per_place
        self.places = read_places(root, cities, min_img_per_place)
        if not self.places:
            raise ValueError(f"no place in {root} has at least {min_img_per_place} images")
        self.transform = transform or TrainTransform()
        self._known_bad: set[str] = set()

    def __len__(self) -> int:
        return len(self.places)

    def __getitem__(self, key: tuple[int, int] | int) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, key)
        rng = np.random.default_rng(seed)
        bad: list[str] = []
        for attempt in range(MAX_PLACE_RESAMPLES):
            place = self.places[index]
            images = []
            for j in rng.permutation(len(place.paths)):
                path = place.paths[j]
                if path in self._known_bad:
                    continue
                img = read_rgb(path)
                if img is None:
                    bad.append(path)
                    self._known_bad.add(path)
                    continue
                images.append(self.transform(img, rng))
                if len(images) == self.img_per_place:
                    return {"images": torch.stack(images), "label": place.label, "bad": bad, "resampled": int(attempt > 0)}
            # Too few readable images left in this place: draw another one.
            index = int(rng.integers(len(self.places)))
        raise RuntimeError(
            f"{MAX_PLACE_RESAMPLES} places in a row had fewer than {self.img_per_place} readable images "
            f"(last failures: {bad[-5:]}); check the dataset at {self.root}"
        )


def collate_places(items: list[dict]) -> dict:
    """Flatten place items into one batch: ``images`` ``[P*K, 3, S, S]``, ``labels`` ``[P*K]``."""
    k = items[0]["images"].shape[0]
    return {
        "images": torch.cat([it["images"] for it in items]),
        "labels": torch.tensor([it["label"] for it in items], dtype=torch.long).repeat_interleave(k),
        "bad": [p for it in items for p in it["bad"]],
        "resampled": sum(it["resampled"] for it in items),
    }


def worker_init(_: int) -> None:
    """DataLoader workers: one OpenCV thread each, the workers already run in parallel."""
    cv2.setNumThreads(1)


class PlaceBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of distinct places, ``(place_index, item_seed)`` pairs, for one process.

    The global batch of ``batch_size`` places is a slice of a permutation drawn from
    ``(seed, epoch)``; with ``world_size`` processes each takes its contiguous share. Item seeds
    depend on (seed, epoch, batch, position in the global batch) only. ``set_epoch(e, start)``
    selects the epoch and skips its first ``start`` batches (resuming mid-epoch). Incomplete
    last batches are dropped, so every step sees exactly ``batch_size`` places.
    """

    def __init__(self, num_places: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by the {world_size} processes")
        if num_places < batch_size:
            raise ValueError(f"batch size {batch_size} exceeds the {num_places} places of the dataset")
        self.num_places = num_places
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_places // self.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return max(self.batches_per_epoch - self.start_batch, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_places)
        per_rank = self.batch_size // self.world_size
        for b in range(self.start_batch, self.batches_per_epoch):
            first = b * self.batch_size + self.rank * per_rank
            yield [
                (int(order[first + i]), item_seed(self.seed, self.epoch, b, self.rank * per_rank + i))
                for i in range(per_rank)
            ]


def item_seed(seed: int, epoch: int, batch: int, position: int) -> int:
    """A well-mixed 63-bit seed for one item of one batch."""
    return int(np.random.SeedSequence([seed, epoch, batch, position]).generate_state(2, np.uint64)[0] >> np.uint64(1))
