"""Train DINOv2 SALAD on GSV-Cities (the paper's recipe by default), single GPU, CPU or DDP.

    python -m training.train --data-root /data/gsv-cities --out runs/salad
    torchrun --nproc_per_node 4 -m training.train --data-root /data/gsv-cities --out runs/salad
    python -m training.train --data-root /data/gsv-cities --out runs/salad --resume
    python -m training.train --export-weights runs/salad/best.ckpt --export-to salad.pth

Defaults: ViT-B/14, 224 px, 60 places x 4 images per batch, 4 epochs, multi-similarity loss
(alpha 1, beta 50, base 0, dot product) on pairs from a multi-similarity miner (epsilon 0.1,
cosine), AdamW (lr 6e-5, weight decay 9.5e-9) with the learning rate decaying linearly to
20 % over the run, last 4 backbone blocks trainable, mixed precision on CUDA.

Outputs in ``--out``: ``last.ckpt`` (model, optimiser, scheduler, scaler, epoch, step),
``best.ckpt`` (best validation R@1, when validating), ``weights.pth`` (flat weights of the
best or else last model, loadable by the node), ``train_log.csv`` / ``val_log.csv``,
``train.log`` and TensorBoard events when tensorboard is installed.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import math
import os
import socket
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from salad_ros.model import (
    BACKBONES,
    VARIANTS,
    CheckpointError,
    DinoSalad,
    build_model,
    input_size,
    load_model,
    read_state_dict,
    resolve_device,
    variant_dims,
)

from .augment import RandAugment, TrainTransform
from .benchmarks import Benchmark, gsv_benchmark, load_benchmark
from .data import GSVCities, PlaceBatchSampler, available_cities, collate_places, worker_init

log = logging.getLogger("training.train")

#: Keys of the model configuration stored in checkpoints; a resumed run must match them.
MODEL_KEYS = ("backbone", "num_clusters", "cluster_dim", "token_dim")


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data-root", help="GSV-Cities root (Dataframes/, Images/)")
    g.add_argument("--cities", default=None, help="comma-separated training cities (default: all CSVs minus --val-cities)")
    g.add_argument("--img-per-place", type=int, default=4)
    g.add_argument("--min-img-per-place", type=int, default=None, help="drop places with fewer images (default: img-per-place)")
    g.add_argument("--batch-size", type=int, default=60, help="places per step, over all processes")
    g.add_argument("--image-size", type=int, default=224, help="square training size, multiple of 14")
    g.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1), help="data loader processes per GPU")
    g.add_argument("--no-augment", action="store_true", help="resize only, no RandAugment")
    g.add_argument("--randaugment-ops", type=int, default=3)
    g.add_argument("--randaugment-magnitude", type=int, default=9, help="bin in [0, 30]")

    g = p.add_argument_group("model")
    g.add_argument("--backbone", default="dinov2_vitb14", choices=sorted(BACKBONES))
    g.add_argument("--variant", default="salad-8448", choices=sorted(VARIANTS), help="descriptor shape (m x l + g)")
    g.add_argument("--num-trainable-blocks", type=int, default=4, help="last backbone blocks trained, the rest frozen")
    g.add_argument("--dropout", type=float, default=0.3)
    g.add_argument("--init", default="auto",
                   help="starting weights: 'hub:dinov2' (Meta's DINOv2, downloaded once), a file (DINOv2 backbone or "
                        "SALAD checkpoint), 'random', or 'auto' = hub:dinov2 falling back to random when offline")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=4)
    g.add_argument("--lr", type=float, default=6e-5)
    g.add_argument("--weight-decay", type=float, default=9.5e-9)
    g.add_argument("--lr-end-factor", type=float, default=0.2, help="final lr as a fraction of --lr (linear decay per step)")
    g.add_argument("--ms-alpha", type=float, default=1.0)
    g.add_argument("--ms-beta", type=float, default=50.0)
    g.add_argument("--ms-base", type=float, default=0.0)
    g.add_argument("--miner-epsilon", type=float, default=0.1)
    g.add_argument("--amp", default="auto", choices=["auto", "fp16", "bf16", "off"],
                   help="autocast dtype; auto = bf16 on CUDA GPUs that support it, else fp16; off on CPU")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many steps in total (the lr schedule still spans --epochs)")

    g = p.add_argument_group("validation")
    g.add_argument("--val-dataset", action="append", nargs="+", default=[], metavar=("ROOT", "GT_PREFIX"),
                   help="benchmark folder (database/, queries/), or an image root followed by the prefix of its "
                        "GSV-Cities protocol lists (PREFIX_dbImages.npy, ...); repeatable; R@1 of the first picks "
                        "best.ckpt")
    g.add_argument("--val-cities", default=None, help="comma-separated GSV cities held out as a validation set")
    g.add_argument("--val-max-places", type=int, default=1000, help="cap on held-out GSV places")
    g.add_argument("--val-image-size", type=int, default=None, help="default: --image-size")
    g.add_argument("--val-batch-size", type=int, default=32)
    g.add_argument("--validate-first", action="store_true", help="also validate before the first step")

    g = p.add_argument_group("run")
    g.add_argument("--out", default=None, help="output folder")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda (under torchrun each process uses its LOCAL_RANK GPU)")
    g.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from a checkpoint (no value: <out>/last.ckpt, starting fresh if absent)")
    g.add_argument("--save-every", type=int, default=500, help="also write last.ckpt every N steps (0: per epoch only)")
    g.add_argument("--log-every", type=int, default=1, help="steps between CSV/TensorBoard rows")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in batch jobs)")

    g = p.add_argument_group("export")
    g.add_argument("--export-weights", metavar="CKPT", default=None,
                   help="only write the flat weights of CKPT (for the node) and exit")
    g.add_argument("--export-to", metavar="FILE", default=None, help="export destination (default: CKPT with .pth)")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject inconsistent settings before any data or model is touched."""
    if args.data_root is None:
        p.error("--data-root is required for training")
    if args.out is None:
        p.error("--out is required for training")
    for name in ("image_size", "val_image_size"):
        size = getattr(args, name)
        if size is None:
            continue
        try:
            input_size(size)
        except ValueError as exc:
            p.error(f"--{name.replace('_', '-')}: {exc}")
        m = variant_dims(args.variant)[0]
        if (size // 14) ** 2 <= m:
            p.error(f"--{name.replace('_', '-')} {size} gives {(size // 14) ** 2} patches, not more than the "
                    f"{m} clusters of {args.variant}: use a larger image or a smaller variant")
    for val in args.val_dataset:
        if len(val) > 2:
            p.error(f"--val-dataset takes a root and at most one list prefix, got {' '.join(val)}")
    if args.min_img_per_place is None:
        args.min_img_per_place = args.img_per_place
    if args.img_per_place < 2:
        p.error("--img-per-place must be >= 2 (positives come from the same place)")
    if args.epochs < 1 or args.batch_size < 2:
        p.error("--epochs must be >= 1 and --batch-size >= 2")
    if not 0 <= args.randaugment_magnitude <= 30:
        p.error("--randaugment-magnitude must be in [0, 30]")


# ----------------------------------------------------------------------------- distributed


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


# ----------------------------------------------------------------------------- model, optimiser


def init_model(args: argparse.Namespace) -> tuple[DinoSalad, str]:
    """The model at its starting weights and a description of where they came from."""
    kw = {"backbone": args.backbone, "variant": args.variant,
          "num_trainable_blocks": args.num_trainable_blocks, "dropout": args.dropout}
    init = args.init
    if init == "auto":
        try:
            # A bounded wait: an offline machine should fall back quickly, not hang on DNS/TCP.
            old = socket.getdefaulttimeout()
            socket.setdefaulttimeout(60)
            try:
                return load_model("hub:dinov2", **kw), "hub:dinov2"
            finally:
                socket.setdefaulttimeout(old)
        except Exception as exc:  # noqa: BLE001 - any download/cache failure means "not available"
            log.warning("could not get DINOv2 pretrained weights (%s): falling back to random init", exc)
            init = "random"
    if init == "random":
        banner = "!" * 78
        log.warning("%s\n!!! TRAINING FROM A RANDOMLY INITIALISED BACKBONE: results will be far below the paper.\n"
                    "!!! Use --init hub:dinov2 (needs internet once) or --init <dinov2 weights file>.\n%s", banner, banner)
        return build_model(args.backbone, args.variant, num_trainable_blocks=args.num_trainable_blocks,
                           dropout=args.dropout), "random"
    return load_model(init, **kw), init


def model_config(model: DinoSalad) -> dict:
    a = model.aggregator
    return {"backbone": model.backbone_name, "num_clusters": a.num_clusters, "cluster_dim": a.cluster_dim,
            "token_dim": a.token_dim, "num_trainable_blocks": model.backbone.num_trainable_blocks}


def amp_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or ``None`` for full precision."""
    if choice == "off":
        return None
    if device.type != "cuda":
        if choice == "fp16":
            raise ValueError("--amp fp16 needs CUDA; use --amp bf16 or off on CPU")
        return torch.bfloat16 if choice == "bf16" else None  # auto: CPU trains in fp32
    if choice == "bf16" or (choice == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def make_loss(args: argparse.Namespace, info: DistInfo):
    """Multi-similarity miner and loss; under DDP both see the whole global batch."""
    from pytorch_metric_learning import distances, losses, miners

    miner = miners.MultiSimilarityMiner(epsilon=args.miner_epsilon, distance=distances.CosineSimilarity())
    loss = losses.MultiSimilarityLoss(alpha=args.ms_alpha, beta=args.ms_beta, base=args.ms_base,
                                      distance=distances.DotProductSimilarity())
    if info.enabled:
        # Gathers descriptors from all processes so that mining and the loss use the global
        # batch, as in single-GPU training; the wrapper scales the loss by the world size so
        # that DDP's gradient averaging yields the full-batch gradient.
        from pytorch_metric_learning.utils.distributed import DistributedLossWrapper, DistributedMinerWrapper

        miner, loss = DistributedMinerWrapper(miner), DistributedLossWrapper(loss)
    return miner, loss


def step_seed(seed: int, global_step: int, rank: int) -> int:
    """Torch RNG seed for one step (dropout): a resumed run draws what the uninterrupted one did."""
    return int(np.random.SeedSequence([seed, global_step, rank, 7]).generate_state(1)[0])


# ----------------------------------------------------------------------------- checkpoints, logs


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


class RunLog:
    """CSV logs (always) plus TensorBoard when importable; only rank 0 writes."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.out = out
        self.tb = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        except Exception:  # noqa: BLE001 - tensorboard missing or broken: CSV only
            log.info("tensorboard not available: logging to %s/train_log.csv and val_log.csv", out)

    def row(self, name: str, values: dict, step: int) -> None:
        if not self.enabled:
            return
        file = self.out / f"{name}_log.csv"
        new = not file.exists()
        with open(file, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(values))
            if new:
                w.writeheader()
            w.writerow(values)
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{name}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


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


# ----------------------------------------------------------------------------- validation


def load_val_sets(args: argparse.Namespace) -> list[Benchmark]:
    """Validation benchmarks: ``--val-dataset ROOT [GT_PREFIX]`` entries, then held-out GSV cities."""
    sets = [load_benchmark(root, gt_prefix=prefix[0] if prefix else None) for root, *prefix in args.val_dataset]
    without = [b.name for b in sets if not b.ground_truth]
    if without:
        raise ValueError(f"--val-dataset {without[0]}: its lists carry no ground truth, so it cannot validate")
    if args.val_cities:
        sets.append(gsv_benchmark(args.data_root, args.val_cities.split(","), args.val_max_places))
    return sets


def validate(model: DinoSalad, sets: list[Benchmark], args: argparse.Namespace, device: torch.device) -> dict[str, dict]:
    """Recall@1/5/10 of every validation set (rank 0 only)."""
    from .evaluate import evaluate_benchmark  # faiss is needed only when validating

    size = args.val_image_size or args.image_size
    results = {}
    for bench in sets:
        res, _ = evaluate_benchmark(model, bench, size, device, args.val_batch_size, min(args.num_workers, 4),
                                    ks=(1, 5, 10), amp=device.type == "cuda", show_progress=not args.no_progress)
        results[bench.name] = res
        log.info("validation %s: R@1 %.2f  R@5 %.2f  R@10 %.2f", bench.name,
                 100 * res["recall@1"], 100 * res["recall@5"], 100 * res["recall@10"])
    return results


# ----------------------------------------------------------------------------- training


def setup_logging(out: Path | None, main_process: bool) -> list[logging.Handler]:
    """Console (and ``train.log``) logging for rank 0; other ranks log warnings only."""
    root = logging.getLogger()
    handlers: list[logging.Handler] = []
    if not root.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(h)
        handlers.append(h)
    root.setLevel(logging.INFO if main_process else logging.WARNING)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is noise here
    if out is not None and main_process:
        fh = logging.FileHandler(out / "train.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(fh)
        handlers.append(fh)
    return handlers


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


def train(args: argparse.Namespace) -> dict:
    """Run training as configured; returns a summary (steps, final loss, best R@1, bad images)."""
    info, device = setup_distributed(args.device)
    out = Path(args.out)
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
    barrier(info)
    handlers = setup_logging(out, info.main)
    try:
        return _train(args, info, device, out)
    finally:
        for h in handlers:
            logging.getLogger().removeHandler(h)
            h.close()
        if info.enabled:
            dist.destroy_process_group()


def _train(args: argparse.Namespace, info: DistInfo, device: torch.device, out: Path) -> dict:
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls on Ampere+ GPUs: much faster than fp32
        torch.backends.cudnn.allow_tf32 = True
    run = _Run(args, info, device, out)
    if args.validate_first and run.global_step == 0:
        run.validation(0, 0)
    t0 = time.time()
    for epoch in range(run.start_epoch, args.epochs):
        if run.epoch(epoch):
            break
    return run.finish(t0)


class _Run:
    """One training run: data, model, optimiser, counters and logs, and the steps that use them
    (set up, train an epoch, validate, checkpoint, finish). Every process of a DDP run has one."""

    def __init__(self, args: argparse.Namespace, info: DistInfo, device: torch.device, out: Path) -> None:
        self.args, self.info, self.device, self.out = args, info, device, out
        self._setup_data()
        self._setup_model()
        self._write_config()
        self.runlog = RunLog(out, info.main)
        self.bad = BadImages()
        self.losses: list[float] = []

    # -- setup

    def _setup_data(self) -> None:
        args, info = self.args, self.info
        val_cities = set(args.val_cities.split(",")) if args.val_cities else set()
        self.cities = args.cities.split(",") if args.cities else \
            [c for c in available_cities(args.data_root) if c not in val_cities]
        overlap = val_cities & set(self.cities)
        if overlap:
            log.warning("cities %s are used for both training and validation", sorted(overlap))
        augment = None if args.no_augment else RandAugment(args.randaugment_ops, args.randaugment_magnitude)
        self.dataset = GSVCities(args.data_root, self.cities, args.img_per_place, args.min_img_per_place,
                                 TrainTransform(args.image_size, augment))
        self.sampler = PlaceBatchSampler(len(self.dataset), args.batch_size, args.seed, info.rank, info.world_size)
        self.steps_per_epoch = self.sampler.batches_per_epoch
        self.val_sets = load_val_sets(args) if info.main else []

    def _setup_model(self) -> None:
        """The model at its starting weights (resumed or initialised), optimiser, schedule, loss."""
        args, device = self.args, self.device
        resume_path = resolve_resume(args, self.out)
        ckpt = torch.load(resume_path, map_location="cpu", weights_only=True) if resume_path else None
        if ckpt is not None:
            self.model = build_model(args.backbone, args.variant, num_trainable_blocks=args.num_trainable_blocks,
                                     dropout=args.dropout)
            mismatch = {k: (ckpt["config"][k], v) for k, v in model_config(self.model).items()
                        if k in MODEL_KEYS and ckpt["config"].get(k) != v}
            if mismatch:
                raise ValueError(f"--resume {resume_path}: model settings differ (checkpoint, now): {mismatch}")
            self.model.load_state_dict(ckpt["state_dict"])
            self.init_source = ckpt.get("init", "unknown")
        else:
            self.model, self.init_source = init_model(args)
        self.model.to(device).train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=args.lr, weight_decay=args.weight_decay)
        total_steps = self.steps_per_epoch * args.epochs
        self.scheduler = torch.optim.lr_scheduler.LinearLR(self.optimizer, 1.0, args.lr_end_factor,
                                                           total_iters=max(total_steps, 1))
        self.dtype = amp_dtype(args.amp, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.start_epoch, self.start_batch, self.global_step, self.best_r1 = 0, 0, 0, -1.0
        if ckpt is not None:
            self._restore(ckpt, resume_path)
            del ckpt
        self.ddp_model = self.model
        if self.info.enabled:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.miner, self.loss_fn = make_loss(args, self.info)

    def _restore(self, ckpt: dict, path: Path) -> None:
        """Optimiser, schedule, scaler and counters of a resumed run."""
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if "scaler" in ckpt and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch, self.start_batch = int(ckpt["epoch"]), int(ckpt["step_in_epoch"])
        self.global_step, self.best_r1 = int(ckpt["global_step"]), float(ckpt.get("best_r1", -1.0))
        log.info("resumed from %s at epoch %d, step %d of the epoch (global step %d)",
                 path, self.start_epoch, self.start_batch, self.global_step)

    def _write_config(self) -> None:
        args, info = self.args, self.info
        n_train = sum(p.numel() for p in self.params)
        log.info("model %s (%s init), %.1fM trainable parameters; %d places from %d cities; %d steps/epoch x %d epochs; "
                 "%d process(es) on %s, amp %s", self.model.variant, self.init_source, n_train / 1e6, len(self.dataset),
                 len(self.cities), self.steps_per_epoch, args.epochs, info.world_size, self.device, self.dtype)
        self.config = {**model_config(self.model), "image_size": args.image_size, "variant": args.variant}
        self.run_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        if info.main:
            (self.out / "config.json").write_text(
                json.dumps({"model": self.config, "args": self.run_args, "init": self.init_source}, indent=2) + "\n")

    # -- checkpoints and validation

    def checkpoint(self, epoch: int, step_in_epoch: int) -> dict:
        """Everything a resumed run needs, at this point of this epoch."""
        return {"state_dict": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "epoch": epoch,
                "step_in_epoch": step_in_epoch, "global_step": self.global_step, "best_r1": self.best_r1,
                "config": self.config, "args": self.run_args, "init": self.init_source,
                "world_size": self.info.world_size}

    def validation(self, epoch: int, step_in_epoch: int) -> None:
        """Validate on rank 0 (``best.ckpt`` on a new best R@1 of the first set); all ranks wait."""
        if self.info.main and self.val_sets:
            results = validate(self.model, self.val_sets, self.args, self.device)
            first = results[self.val_sets[0].name]
            for name, res in results.items():
                self.runlog.row("val", {"epoch": epoch, "step": self.global_step, "dataset": name,
                                        **{f"R@{k}": res[f"recall@{k}"] for k in (1, 5, 10)}}, self.global_step)
            if first["recall@1"] > self.best_r1:
                self.best_r1 = first["recall@1"]
                save_checkpoint(self.out / "best.ckpt", {**self.checkpoint(epoch, step_in_epoch), "val": results})
                log.info("new best R@1 %.2f on %s: saved best.ckpt", 100 * self.best_r1, self.val_sets[0].name)
        barrier(self.info)

    # -- training

    def epoch(self, epoch: int) -> bool:
        """Train one epoch (the first from the resumed batch), then checkpoint and validate.
        True when ``--max-steps`` stopped the run."""
        args, info = self.args, self.info
        self.sampler.set_epoch(epoch, self.start_batch if epoch == self.start_epoch else 0)
        loader = DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=args.num_workers,
                            collate_fn=collate_places, pin_memory=self.device.type == "cuda",
                            worker_init_fn=worker_init, persistent_workers=False)
        step_in_epoch = self.sampler.start_batch
        bar = tqdm(loader, total=self.steps_per_epoch, initial=step_in_epoch, desc=f"epoch {epoch + 1}/{args.epochs}",
                   disable=not info.main or args.no_progress, dynamic_ncols=True)
        stop = False
        for batch in bar:
            value, stats = self.step(batch)
            step_in_epoch += 1
            self._log_step(bar, epoch, value, stats)
            stop = args.max_steps is not None and self.global_step >= args.max_steps
            if info.main and (stop or (args.save_every and self.global_step % args.save_every == 0)):
                save_checkpoint(self.out / "last.ckpt", self.checkpoint(epoch, step_in_epoch))
            if stop:
                break
        bar.close()
        if stop and step_in_epoch != self.steps_per_epoch:  # stopped mid-epoch: last.ckpt is saved above
            self.validation(epoch, step_in_epoch)
            return True
        # The epoch's end (a stop that fell on it is recorded as such).
        if info.main:
            save_checkpoint(self.out / "last.ckpt", self.checkpoint(epoch + 1, 0))
        self.validation(epoch + 1, 0)
        return stop

    def step(self, batch: dict) -> tuple[float, dict]:
        """One optimisation step on a batch; returns the loss and the mining statistics."""
        info, device = self.info, self.device
        self.bad.add(batch)
        torch.manual_seed(step_seed(self.args.seed, self.global_step, info.rank))
        images = batch["images"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True)
        autocast = torch.autocast(device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()
        with autocast:
            desc = self.ddp_model(images)
        desc = desc.float()  # mining and loss in fp32: beta=50 exponentials overflow in fp16
        pairs = self.miner(desc, labels)
        loss = self.loss_fn(desc, labels, pairs)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.global_step += 1

        value = loss.item() / info.world_size  # the DDP wrapper scales the loss by the world size
        if not math.isfinite(value):
            log.warning("step %d: non-finite loss %s", self.global_step, value)
        self.losses.append(value)
        anchors = torch.cat([pairs[0], pairs[2]]).unique().numel()
        stats = {"pos_pairs": len(pairs[0]), "neg_pairs": len(pairs[2]),
                 # Share of the (global) batch's images that anchor a hard pair: falls as the
                 # model learns. Under DDP the miner indexes the gathered global batch.
                 "mined_frac": anchors / (len(desc) * info.world_size)}
        return value, stats

    def _log_step(self, bar: tqdm, epoch: int, value: float, stats: dict) -> None:
        if not self.info.main:
            return
        lr = self.scheduler.get_last_lr()[0]
        bar.set_postfix(loss=f"{value:.4f}", pos=stats["pos_pairs"], neg=stats["neg_pairs"], lr=f"{lr:.2e}")
        if self.global_step % max(self.args.log_every, 1) == 0:
            self.runlog.row("train", {"step": self.global_step, "epoch": epoch, "loss": value, "lr": lr, **stats,
                                      "bad_images": self.bad.events}, self.global_step)

    # -- the end

    def finish(self, t0: float) -> dict:
        """Merge bad-image reports, export ``weights.pth`` and write ``summary.json`` (rank 0)."""
        bad_all = self.bad.merged(self.info)
        summary = {"global_step": self.global_step, "losses": self.losses,
                   "best_r1": self.best_r1 if self.best_r1 >= 0 else None,
                   "bad_images": sorted(bad_all.paths), "bad_image_events": bad_all.events,
                   "places_resampled": bad_all.resampled, "seconds": time.time() - t0}
        out = self.out
        if self.info.main:
            final = out / ("best.ckpt" if (out / "best.ckpt").is_file() else "last.ckpt")
            if final.is_file():
                weights = export_weights(final, out / "weights.pth")
                log.info("exported %s -> %s (load_model(path, backbone=%r, variant=%r))", final.name, weights,
                         self.args.backbone, self.args.variant)
            if bad_all.events:
                log.warning("%d unreadable training images (%d distinct files; %d places resampled), e.g. %s",
                            bad_all.events, len(bad_all.paths), bad_all.resampled, sorted(bad_all.paths)[:5])
            else:
                log.info("no unreadable training images")
            (out / "summary.json").write_text(
                json.dumps({k: v for k, v in summary.items() if k != "losses"}, indent=2) + "\n")
        self.runlog.close()
        return summary


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (console script ``salad_train``)."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.export_weights:
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        try:
            dest = export_weights(args.export_weights, args.export_to)
        except CheckpointError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {dest}")
        return 0
    check_args(p, args)
    try:
        train(args)
    except (ValueError, FileNotFoundError, CheckpointError) as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
