"""Images in, loop candidates out: encoder + keyframe database + detector, without ROS.

The live node and offline replay both drive a :class:`LoopClosurePipeline`, so a sequence
gives the same keyframes and candidates whichever way it is fed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .backends import Encoder, create_encoder
from .database import KeyframeDatabase, Pose, write_bytes_atomic
from .detector import FrameResult, LoopDetector
from .settings import SaladConfig

log = logging.getLogger(__name__)

#: Verification thumbnails saved beside the keyframe database (a cache: the map loads without it).
THUMBNAILS_FILE = "thumbnails.npz"


def database_exists(path: str | Path) -> bool:
    """True when ``path`` holds a saved keyframe database (not merely an empty folder)."""
    return bool(path) and (Path(path) / "manifest.json").is_file()


class LoopClosurePipeline:
    """Runs the configured encoder and loop detector frame by frame.

    With ``cfg.node.database_path`` pointing at a saved database, that map is loaded first
    (multi-session operation); a database made by another model or damaged is refused.
    """

    def __init__(self, cfg: SaladConfig, encoder: Encoder | None = None) -> None:
        self.cfg = cfg
        self.encoder = encoder or create_encoder(cfg.model)
        path = cfg.node.database_path
        if database_exists(path):
            self.database = KeyframeDatabase.load(
                path, expected_dim=self.encoder.dim, expected_model=self.encoder.model_name, config=cfg.database
            )
            log.info("loaded keyframe database %s with %d keyframes", path, len(self.database))
            self.detector = LoopDetector(cfg.detector, self.database)
            self._load_thumbnails(Path(path) / THUMBNAILS_FILE)
        else:
            self.reset()

    def _stamps_by_id(self) -> dict[int, int]:
        return dict(enumerate(int(s) for s in self.database.stamps_ns()))

    def _load_thumbnails(self, file: Path) -> None:
        # Without them, geometric verification against the loaded map has nothing to compare with.
        store = self.detector.thumbnails
        if store is None or not file.is_file():
            return
        try:
            n = store.load(file, self._stamps_by_id())
            log.info("loaded %d verification thumbnails from %s", n, file)
        except ValueError as exc:
            log.warning("%s; verification against the loaded map follows detector.verify_missing_thumbnail", exc)

    def process(
        self, image: np.ndarray, stamp_ns: int, pose: Pose | None = None, frame_id: str = ""
    ) -> FrameResult:
        """Encode one RGB uint8 image and run the detector on it."""
        descriptor = self.encoder.encode([image])[0]
        return self.detector.process(descriptor, stamp_ns, pose=pose, image=image, frame_id=frame_id)

    def process_batch(
        self,
        images: Sequence[np.ndarray],
        stamps_ns: Sequence[int],
        poses: Sequence[Pose | None] | None = None,
        frame_ids: Sequence[str] | None = None,
    ) -> list[FrameResult]:
        """Encode a batch in one forward pass, then run the detector frame by frame in order.

        Gives exactly what calling :meth:`process` on each frame gives (the detector is
        sequential and deterministic; batching only changes how descriptors are computed).
        """
        descriptors = self.encoder.encode(list(images))
        poses = poses if poses is not None else [None] * len(images)
        frame_ids = frame_ids if frame_ids is not None else [""] * len(images)
        return [
            self.detector.process(d, int(s), pose=p, image=img, frame_id=f)
            for d, s, p, img, f in zip(descriptors, stamps_ns, poses, images, frame_ids)
        ]

    def save(self, path: str | Path | None = None) -> Path:
        """Save the database (atomically) to ``path`` or the configured ``database_path``, with the
        verification thumbnails beside it when verification is on."""
        target = path or self.cfg.node.database_path
        if not target:
            raise ValueError("no database path: set 'database_path' or pass a path")
        self.database.save(target)
        thumbs = Path(target) / THUMBNAILS_FILE
        if self.detector.thumbnails is not None:
            write_bytes_atomic(thumbs, self.detector.thumbnails.to_bytes(self._stamps_by_id()))
        else:
            thumbs.unlink(missing_ok=True)  # an older file would describe another state of the map
        return Path(target)

    def reset(self) -> None:
        """Forget every keyframe and the detector's history (the saved file is not touched)."""
        self.database = KeyframeDatabase.from_config(self.encoder.dim, self.cfg.database, self.encoder.model_name)
        self.detector = LoopDetector(self.cfg.detector, self.database)
