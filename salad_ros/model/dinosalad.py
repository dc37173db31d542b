"""DINOv2 + SALAD place-recognition model and checkpoint loading."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from .backbone import BACKBONES, DinoV2Backbone, grid_size
from .salad import SALAD

log = logging.getLogger(__name__)

#: Descriptor variants of the paper as (num_clusters m, cluster_dim l, token_dim g).
VARIANTS: dict[str, tuple[int, int, int]] = {
    "salad-8448": (64, 128, 256),
    "salad-2112": (32, 64, 64),
    "salad-544": (16, 32, 32),
}

#: Released SALAD weights (ViT-B, 8448-D); fetched into the torch hub cache by ``load_model("hub")``.
SALAD_RELEASE_URL = "https://github.com/serizba/salad/releases/download/v1.0.0/dino_salad.ckpt"
#: Meta's DINOv2 backbone weights, a starting point for training.
DINOV2_URLS = {
    name: f"https://dl.fbaipublicfiles.com/dinov2/{name.removesuffix('_reg')}/{name.replace('_reg', '_reg4')}_pretrain.pth"
    for name in BACKBONES
}


class CheckpointError(ValueError):
    """A weights file cannot be used for the requested model; the message names file and keys."""


def variant_dims(variant: str) -> tuple[int, int, int]:
    """``(num_clusters, cluster_dim, token_dim)`` of a named descriptor variant."""
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown descriptor variant '{variant}'; choose one of {', '.join(VARIANTS)}") from None


class DinoSalad(nn.Module):
    """DINOv2 backbone followed by SALAD aggregation.

    ``forward(images)`` takes ImageNet-normalised images ``[B, 3, H, W]`` (H and W multiples
    of 14) and returns unit-norm descriptors ``[B, token_dim + num_clusters * cluster_dim]``.
    """

    def __init__(
        self,
        backbone: str = "dinov2_vitb14",
        num_clusters: int = 64,
        cluster_dim: int = 128,
        token_dim: int = 256,
        num_trainable_blocks: int = 4,
        dropout: float = 0.3,
        sinkhorn_iters: int = 3,
    ) -> None:
        super().__init__()
        self.backbone = DinoV2Backbone(backbone, num_trainable_blocks)
        self.aggregator = SALAD(
            self.backbone.num_channels, num_clusters, cluster_dim, token_dim, dropout, sinkhorn_iters
        )

    @property
    def backbone_name(self) -> str:
        return self.backbone.name

    @property
    def output_dim(self) -> int:
        return self.aggregator.output_dim

    @property
    def variant(self) -> str:
        """Short identifier of architecture and descriptor shape, e.g. ``dinov2_vitb14/64x128+256``."""
        a = self.aggregator
        return f"{self.backbone.name}/{a.num_clusters}x{a.cluster_dim}+{a.token_dim}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cls, fmap = self.backbone(images)
        return self.aggregator(cls, fmap)

    @torch.no_grad()
    def patch_assignments(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """For one normalised image ``[3, H, W]`` (or ``[1, 3, H, W]``): patch tokens ``[n, D]``,
        dustbin-free assignment weights ``[m, n]`` and the patch grid ``(rows, cols)``.

        ``weights.sum(0)`` is each patch's non-dustbin mass, the heat map of the paper's Fig. 3.
        """
        if image.dim() == 3:
            image = image.unsqueeze(0)
        if image.shape[0] != 1:
            raise ValueError(f"patch_assignments takes one image, got a batch of {image.shape[0]}")
        _, fmap = self.backbone(image)
        weights = self.aggregator.assignments(fmap)[0]
        tokens = fmap[0].flatten(1).transpose(0, 1)
        return tokens, weights, grid_size(image.shape[2], image.shape[3])


def build_model(
    backbone: str = "dinov2_vitb14",
    variant: str | None = None,
    num_clusters: int = 64,
    cluster_dim: int = 128,
    token_dim: int = 256,
    num_trainable_blocks: int = 4,
    dropout: float = 0.3,
    seed: int = 0,
) -> DinoSalad:
    """Construct an untrained model; ``variant`` (e.g. ``"salad-2112"``) overrides the three dims.

    Initialisation is seeded (without touching the global RNG) so that "random weights" mean
    the same weights in every process: the node and offline replay then agree exactly.
    """
    if variant is not None:
        num_clusters, cluster_dim, token_dim = variant_dims(variant)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DinoSalad(backbone, num_clusters, cluster_dim, token_dim, num_trainable_blocks, dropout)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a weights file safely (``weights_only=True``) and return a flat ``{name: tensor}``.

    Accepts a flat state dict or a training checkpoint holding one under ``state_dict``.
    """
    return read_checkpoint(path)[0]


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """:func:`read_state_dict`, plus the other top-level entries of a training checkpoint
    (``config``, ``epoch``, ...; empty for a flat state dict)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign pickle can fail in any unpickler step
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a loadable PyTorch weights file ({first.split('. ')[0]})") from exc
    extra: dict[str, Any] = {}
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        extra = {k: v for k, v in obj.items() if k != "state_dict"}
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path} is not a state dict of tensors: first offending entries {bad[:5]}")
    return dict(obj), extra


def _is_backbone_only(state: Mapping[str, torch.Tensor]) -> bool:
    return "cls_token" in state and not any(k.startswith(("backbone.", "aggregator.")) for k in state)


def check_state(model: DinoSalad, state: Mapping[str, torch.Tensor], source: str) -> bool:
    """Check that ``state`` fits ``model`` (keys and shapes; ``model`` may live on the meta
    device); raises :class:`CheckpointError` naming ``source``. Returns True for a DINOv2
    backbone-only file (keys ``cls_token``, ``blocks.N...``), which fits the backbone alone."""
    backbone_only = _is_backbone_only(state)
    if backbone_only:
        state = {f"backbone.model.{k}": v for k, v in state.items()}
    expected = model.state_dict()
    wanted = {k for k in expected if k.startswith("backbone.")} if backbone_only else set(expected)
    missing = sorted(wanted - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys, first {missing[:5]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, first {unexpected[:5]}")
        raise CheckpointError(f"{source} does not match model {model.variant}: " + "; ".join(parts))
    wrong = [f"{k} {tuple(v.shape)} (model expects {tuple(expected[k].shape)})"
             for k, v in state.items() if v.shape != expected[k].shape]
    if wrong:
        raise CheckpointError(
            f"{source} does not match model {model.variant}: {len(wrong)} tensors of wrong shape, first {wrong[:3]}"
        )
    return backbone_only


def load_state(model: DinoSalad, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model`` after checking keys and shapes (:func:`check_state`);
    errors name ``source``.

    A DINOv2 backbone-only file (keys ``cls_token``, ``blocks.N...``) fills the backbone and
    leaves the aggregator at its random initialisation, with a warning.
    """
    backbone_only = check_state(model, state, source)
    if backbone_only:
        state = {f"backbone.model.{k}": v for k, v in state.items()}
    model.load_state_dict(state, strict=not backbone_only)
    if backbone_only:
        log.warning("%s holds only DINOv2 backbone weights: the SALAD aggregator is randomly initialised", source)


def load_model(
    checkpoint: str | Path | None,
    backbone: str = "dinov2_vitb14",
    num_clusters: int = 64,
    cluster_dim: int = 128,
    token_dim: int = 256,
    device: str | torch.device = "cpu",
    *,
    variant: str | None = None,
    num_trainable_blocks: int = 4,
    dropout: float = 0.3,
) -> DinoSalad:
    """Build a model, load weights and return it in eval mode on ``device``.

    ``checkpoint`` is a path (flat released file, training checkpoint with ``state_dict``,
    or backbone-only DINOv2 file), ``"hub"`` for the released SALAD weights or
    ``"hub:dinov2"`` for Meta's backbone weights (both downloaded once into the torch hub
    cache; needs internet the first time), or ``None`` for random weights.
    """
    model = build_model(backbone, variant, num_clusters, cluster_dim, token_dim, num_trainable_blocks, dropout)
    if checkpoint is None:
        log.warning("no weights given: model %s uses RANDOM weights (descriptors are meaningless)", model.variant)
    else:
        source = str(checkpoint)
        if source == "hub":
            state = _hub_state_dict(SALAD_RELEASE_URL)
        elif source == "hub:dinov2":
            state = _hub_state_dict(DINOV2_URLS[backbone])
        else:
            state = read_state_dict(source)
        load_state(model, state, source)
        log.info("loaded weights for %s from %s", model.variant, source)
    return model.to(resolve_device(device)).eval()


def weights_file(checkpoint: str | Path | None, backbone: str = "dinov2_vitb14") -> Path | None:
    """The file a weights source reads: the path itself, or for ``hub`` / ``hub:dinov2`` the copy
    in the torch hub cache (which exists once a first load has downloaded it); None for random."""
    if checkpoint is None or str(checkpoint) == "":
        return None
    source = str(checkpoint)
    if source in ("hub", "hub:dinov2"):
        url = SALAD_RELEASE_URL if source == "hub" else DINOV2_URLS[backbone]
        return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    return Path(source)


def _hub_state_dict(url: str) -> dict[str, torch.Tensor]:
    # Uses the cached copy under $TORCH_HOME/hub/checkpoints when present: no network then.
    state = torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True, check_hash=False)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    return dict(state)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` picks CUDA when available; asking for CUDA without one is a clear error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{device}' requested but CUDA is not available on this machine")
    return dev
