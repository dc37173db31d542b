"""Distributed training plumbing: the process's rank and device under torchrun, the barrier, and
the unreadable-image report merged over all processes."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from salad_ros.model import resolve_device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_arg: str) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); pick the device.

    NCCL on CUDA, gloo on CPU. The generous timeout covers rank 0 validating while the others
    wait at a barrier.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_arg)
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    want_cuda = device_arg in ("auto", "cuda") or device_arg.startswith("cuda")
    if want_cuda and torch.cuda.is_available():
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        if device_arg.startswith("cuda"):
            raise RuntimeError(f"device '{device_arg}' requested but CUDA is not available")
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    dist.init_process_group(backend, timeout=datetime.timedelta(hours=2))
    return info, device


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


@dataclass
class BadImages:
    """Unreadable training images seen by this process (paths) and places substituted."""

    paths: set[str] = field(default_factory=set)
    events: int = 0
    resampled: int = 0

    def add(self, batch: dict) -> None:
        self.paths.update(batch["bad"])
        self.events += len(batch["bad"])
        self.resampled += batch["resampled"]

    def merged(self, info: DistInfo) -> BadImages:
        if not info.enabled:
            return self
        parts: list = [None] * info.world_size
        dist.all_gather_object(parts, (sorted(self.paths), self.events, self.resampled))
        return BadImages({p for ps, _, _ in parts for p in ps}, sum(e for _, e, _ in parts), sum(r for _, _, r in parts))
