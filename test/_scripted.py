"""A scripted encoder for pipeline tests that need known descriptors and no model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Every frame a keyframe, no exclusions, no consistency: a frame whose place was seen before is a candidate.
EVERY_FRAME_A_KEYFRAME = {
    "allow_random_weights": True,
    "detector.keyframe_min_interval_s": 0.0,
    "detector.keyframe_max_similarity": 1.0,
    "detector.exclude_recent_keyframes": 0,
    "detector.exclude_recent_s": 0.0,
    "detector.consistency_count": 1,
    "detector.min_score": 0.99,
}


class ScriptedEncoder:
    """Descriptor of frame i = one-hot of its place; places are consumed in the given order."""

    backend, device, input_size = "test", "cpu", (8, 8)
    model_name = "scripted"

    def __init__(self, places: Sequence[int], dim: int = 8) -> None:
        self.places = list(places)
        self.dim = dim

    def encode(self, images, color: str = "rgb") -> np.ndarray:
        return np.stack([np.eye(self.dim, dtype=np.float32)[self.places.pop(0)] for _ in images])

    def describe(self) -> str:
        return "scripted"
