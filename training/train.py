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

This module is the command line; the run itself is :mod:`.run`, checkpoints and the weights
export :mod:`.checkpoints`, torchrun plumbing :mod:`.distributed`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from salad_ros.model import BACKBONES, VARIANTS, CheckpointError, input_size, variant_dims

from .checkpoints import MODEL_KEYS, export_weights, save_checkpoint
from .cli import DeprecatedAlias
from .run import load_val_sets, train, validate

__all__ = ["MODEL_KEYS", "build_parser", "check_args", "export_weights", "load_val_sets", "main", "save_checkpoint",
           "train", "validate"]

log = logging.getLogger("training.train")


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
    g.add_argument("--descriptor", default="salad-8448", choices=sorted(VARIANTS), help="descriptor shape (m x l + g)")
    g.add_argument("--variant", dest="descriptor", choices=sorted(VARIANTS), action=DeprecatedAlias,
                   default=argparse.SUPPRESS, help=argparse.SUPPRESS)
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
        m = variant_dims(args.descriptor)[0]
        if (size // 14) ** 2 <= m:
            p.error(f"--{name.replace('_', '-')} {size} gives {(size // 14) ** 2} patches, not more than the "
                    f"{m} clusters of {args.descriptor}: use a larger image or a smaller descriptor")
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


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (console script ``salad_train``)."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.export_weights:
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        try:
            dest, fits = export_weights(args.export_weights, args.export_to)
        except (CheckpointError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {dest} ({fits})")
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
