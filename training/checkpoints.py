"""Checkpoints of a training run: atomic writes, the model settings a resumed run must match,
finding the checkpoint to resume, and exporting the flat weights the node loads."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch

from salad_ros.model import CheckpointError, DinoSalad, read_state_dict

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


def export_weights(checkpoint: str | Path, dest: str | Path | None = None) -> Path:
    """Write the flat model state dict of a checkpoint (released key names) for the node."""
    checkpoint = Path(checkpoint)
    state = read_state_dict(checkpoint)
    state = {k.removeprefix("module."): v for k, v in state.items()}  # tolerate a DDP-wrapped save
    if not any(k.startswith("aggregator.") for k in state):
        raise CheckpointError(f"{checkpoint} holds no SALAD aggregator weights: nothing to export")
    dest = Path(dest) if dest is not None else checkpoint.with_suffix(".pth")
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dest, state)
    return dest


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
