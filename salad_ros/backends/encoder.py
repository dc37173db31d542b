"""The encoder interface every backend implements: uint8 images in, unit-norm descriptors out."""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np

#: Weights fingerprint of a model without trained weights; it ends the descriptor identity
#: (``model_name``) of such a model in every backend, exported files included.
RANDOM_FINGERPRINT = "random"


class Encoder(abc.ABC):
    """Computes unit-norm float32 descriptors for batches of uint8 images."""

    backend: str
    #: Descriptor dimension.
    dim: int
    #: Network input ``(height, width)``.
    input_size: tuple[int, int]
    #: Identity of the descriptors: architecture, input size and weights fingerprint.
    model_name: str
    device: str

    @abc.abstractmethod
    def encode(self, images: Sequence[np.ndarray], color: str = "rgb") -> np.ndarray:
        """Descriptors ``float32[B, dim]`` for uint8 ``HxWx3`` images in ``color`` order."""

    def heatmap(self, image: np.ndarray, color: str = "rgb") -> np.ndarray | None:
        """Per-patch non-dustbin assignment mass ``[rows, cols]``, or None if unsupported."""
        return None

    @property
    def random_weights(self) -> bool:
        """True when the descriptors come from untrained weights (directly, or through a file
        exported from them): the one definition node, replay, export and evaluation use."""
        return is_random_model_name(self.model_name)

    def describe(self) -> str:
        return f"{self.backend} on {self.device}, {self.model_name}, {self.dim}-D"


def is_random_model_name(model_name: str) -> bool:
    """Does a descriptor identity (``variant@size/fingerprint``) name untrained weights?"""
    return model_name.rsplit("/", 1)[-1] == RANDOM_FINGERPRINT
