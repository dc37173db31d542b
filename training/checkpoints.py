"""Checkpoints of a training run: atomic writes, the model settings a resumed run must match,
finding the checkpoint to resume, and exporting the flat weights the node loads."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import torch

from salad_ros.model import (
    BACKBONES,
    VARIANTS,
    CheckpointError,
    DinoSalad,
    build_model,
    check_state,
    read_checkpoint,
    variant_dims,
)

log = logging.getLogger("training.train")

#: Keys of the model configuration stored in checkpoints; a resumed run must match them.
MODEL_KEYS = ("backbone", "num_clusters", "cluster_dim", "token_dim")


def model_config(model: DinoSalad) -> dict:
    a = model.aggregator
    return {"backbone": model.backbone_name, "num_clusters": a.num_clusters, "cluster_dim": a.cluster_dim,
            "token_dim": a.token_dim, "num_trainable_blocks": model.backbone.num_trainable_blocks}


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a run killed while saving keeps its previous checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def export_weights(checkpoint: str | Path, dest: str | Path | None = None) -> tuple[Path, str]:
    """Write the flat model state dict of a checkpoint (released key names) for the node;
    returns the file and the model it fits (e.g. ``backbone dinov2_vits14, descriptor salad-544``).

    The weights are checked first against the model the checkpoint records (a training
    checkpoint's ``config``) or, for a flat file, against every known backbone and descriptor
    variant: a file that fits no model raises :class:`CheckpointError` and nothing is written."""
    checkpoint = Path(checkpoint)
    state, extra = read_checkpoint(checkpoint)
    state = {k.removeprefix("module."): v for k, v in state.items()}  # tolerate a DDP-wrapped save
    if not any(k.startswith("aggregator.") for k in state):
        raise CheckpointError(f"{checkpoint} holds no SALAD aggregator weights: nothing to export")
    model = fitting_model(state, extra.get("config"), str(checkpoint))
    dest = Path(dest) if dest is not None else checkpoint.with_suffix(".pth")
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dest, state)
    a = model.aggregator
    dims = (a.num_clusters, a.cluster_dim, a.token_dim)
    descriptor = next((name for name, d in VARIANTS.items() if d == dims), model.variant.split("/")[1])
    return dest, f"backbone {model.backbone_name}, descriptor {descriptor}"


def fitting_model(state: dict[str, torch.Tensor], config: Any, source: str) -> DinoSalad:
    """The model (built on the meta device: no memory, no time) that ``state`` fits exactly:
    the one ``config`` records (keys :data:`MODEL_KEYS`), else the one known backbone and
    variant it fits. :class:`CheckpointError` naming ``source`` when there is none."""
    def meta_model(backbone: str, dims: tuple[int, int, int]) -> DinoSalad:
        with torch.device("meta"):
            return build_model(backbone, None, *dims, num_trainable_blocks=0)

    if isinstance(config, dict) and all(k in config for k in MODEL_KEYS):
        try:
            model = meta_model(str(config["backbone"]), (int(config["num_clusters"]), int(config["cluster_dim"]),
                                                          int(config["token_dim"])))
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{source} records an unknown model {config}: {exc}") from exc
        check_state(model, state, f"{source} (recorded as {config['backbone']})")
        return model
    backbone_state = {k: v for k, v in state.items() if k.startswith("backbone.")}
    backbones = [b for b in sorted(BACKBONES) if _fits(meta_model(b, variant_dims("salad-8448")), backbone_state, "backbone.")]
    if not backbones:
        raise CheckpointError(f"{source}: its backbone weights fit none of {', '.join(sorted(BACKBONES))}")
    for variant in VARIANTS:
        model = meta_model(backbones[0], variant_dims(variant))
        if _fits(model, state, ""):
            return model
    raise CheckpointError(f"{source}: its {backbones[0]} backbone is paired with an aggregator of none of the "
                          f"descriptor variants {', '.join(VARIANTS)} (wrong shapes or keys)")


def _fits(model: DinoSalad, state: dict[str, torch.Tensor], prefix: str) -> bool:
    """True when ``state`` has exactly the keys and shapes of ``model``'s entries under ``prefix``."""
    expected = {k: v.shape for k, v in model.state_dict().items() if k.startswith(prefix)}
    return expected.keys() == state.keys() and all(state[k].shape == shape for k, shape in expected.items())


def resolve_resume(args: argparse.Namespace, out: Path) -> Path | None:
    if args.resume is None:
        return None
    path = out / "last.ckpt" if args.resume == "auto" else Path(args.resume)
    if path.is_file():
        return path
    if args.resume == "auto":
        log.info("--resume: no %s yet, starting a new run", path)
        return None
    raise FileNotFoundError(f"--resume {path}: no such checkpoint")
