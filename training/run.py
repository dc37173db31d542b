"""One training run: model initialisation, loss, logs, validation and the :class:`_Run` that owns
data, model, optimiser and counters (set up, train an epoch, validate, checkpoint, finish).
:func:`train` runs it as :mod:`training.train` configured it."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import socket
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from salad_ros.model import DinoSalad, build_model, load_model

from .augment import RandAugment, TrainTransform
from .benchmarks import Benchmark, gsv_benchmark, load_benchmark
from .checkpoints import MODEL_KEYS, export_weights, model_config, resolve_resume, save_checkpoint
from .data import GSVCities, PlaceBatchSampler, available_cities, collate_places, worker_init
from .distributed import BadImages, DistInfo, barrier, setup_distributed

log = logging.getLogger("training.train")


# ----------------------------------------------------------------------------- model, optimiser


def init_model(args: argparse.Namespace) -> tuple[DinoSalad, str]:
    """The model at its starting weights and a description of where they came from."""
    kw = {"backbone": args.backbone, "variant": args.descriptor,
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
        return build_model(args.backbone, args.descriptor, num_trainable_blocks=args.num_trainable_blocks,
                           dropout=args.dropout), "random"
    return load_model(init, **kw), init


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


# ----------------------------------------------------------------------------- logs


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
            self.model = build_model(args.backbone, args.descriptor, num_trainable_blocks=args.num_trainable_blocks,
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
        self.config = {**model_config(self.model), "image_size": args.image_size, "descriptor": args.descriptor}
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
                weights, _ = export_weights(final, out / "weights.pth")
                log.info("exported %s -> %s (load_model(path, backbone=%r, variant=%r))", final.name, weights,
                         self.args.backbone, self.args.descriptor)
            if bad_all.events:
                log.warning("%d unreadable training images (%d distinct files; %d places resampled), e.g. %s",
                            bad_all.events, len(bad_all.paths), bad_all.resampled, sorted(bad_all.paths)[:5])
            else:
                log.info("no unreadable training images")
            (out / "summary.json").write_text(
                json.dumps({k: v for k, v in summary.items() if k != "losses"}, indent=2) + "\n")
        self.runlog.close()
        return summary
