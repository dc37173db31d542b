"""Export DINOv2 SALAD to ONNX and verify it against PyTorch with onnxruntime (and OpenVINO).

    python -m export.onnx --weights dino_salad.ckpt --backbone dinov2_vitb14 --image-size 322 --out salad.onnx
    python -m export.onnx ... --check-openvino     # also verify (and time) it in OpenVINO on this CPU

The graph takes normalised float32 ``images [B, 3, S, S]`` (ImageNet mean/std already applied)
and returns unit-norm ``descriptors [B, dim]``. Backbone, SALAD head (three Sinkhorn iterations,
unrolled) and all normalisations are in it; the positional embedding is interpolated once for
the export size and stored as a constant. Batch is dynamic unless ``--batch N`` fixes it.
The file is only written if onnxruntime (and, with ``--check-openvino``, OpenVINO) reproduces
PyTorch within the thresholds.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from tqdm import tqdm

from salad_ros.backends import ModelConfig, check_weights_file, is_random_model_name
from salad_ros.backends.contract import INPUT_NAME, OUTPUT_NAME, run_in_batches
from salad_ros.fileio import file_fingerprint, move_into_place, sha256_file
from salad_ros.model import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PATCH_SIZE,
    VARIANTS,
    CheckpointError,
    DinoSalad,
    load_model,
    variant_dims,
)
from salad_ros.params import ConfigError

from .compare import THRESHOLDS, Agreement, check_agreement, verification_inputs
from .graph import bypass_identities, prune_initializers, stabilize_logsumexp, to_mixed_precision

log = logging.getLogger(__name__)

MIN_OPSET = 17  # LayerNormalization is a single op from 17 on (TensorRT maps it to its normalization layer)
FORMAT = "salad_ros-onnx/1"


class ExportableSalad(nn.Module):
    """``DinoSalad`` with the positional embedding for one input size precomputed as a buffer,
    so that the bicubic interpolation (and its data-dependent sizes) stays out of the graph."""

    def __init__(self, model: DinoSalad, image_size: int) -> None:
        super().__init__()
        self.model = model
        grid = image_size // PATCH_SIZE
        with torch.no_grad():
            pos = model.backbone.model.interpolated_pos_embed(grid, grid).detach().clone()
        self.register_buffer("pos_embed", pos)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cls, fmap = self.model.backbone(images, self.pos_embed)
        return self.model.aggregator(cls, fmap)


def descriptor_name(model: DinoSalad) -> str:
    """The ``VARIANTS`` key (e.g. ``salad-8448``) of the model's descriptor shape."""
    a = model.aggregator
    dims = (a.num_clusters, a.cluster_dim, a.token_dim)
    return next((name for name, v in VARIANTS.items() if v == dims), f"custom-{a.output_dim}")


def build_metadata(
    model: DinoSalad, image_size: int, batch: int | None, precision: str, weights: str | Path | None, opset: int
) -> dict[str, str]:
    """Metadata stored in the ONNX file; ``model_name`` equals the torch backend's for the same
    weights and size, so keyframe databases stay interchangeable between backends."""
    fingerprint = file_fingerprint(weights)
    return {
        "format": FORMAT,
        "model_name": f"{model.variant}@{image_size}/{fingerprint}",
        "variant": model.variant,
        "backbone": model.backbone_name,
        "descriptor": descriptor_name(model),
        "image_size": str(image_size),
        "input_shape": f"{batch or 'batch'},3,{image_size},{image_size}",
        "batch": str(batch) if batch else "dynamic",
        "input_normalization": "RGB/255, then (x - mean) / std",
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
        "descriptor_dim": str(model.output_dim),
        "sinkhorn_iters": str(model.aggregator.sinkhorn_iters),
        "precision": precision,
        "weights_fingerprint": fingerprint,
        "weights_sha256": sha256_file(weights) if weights else "random",
        "weights_file": str(Path(weights).resolve()) if weights else "",
        "opset": str(opset),
        "torch_version": torch.__version__,
    }


def export_onnx(
    model: DinoSalad,
    out: str | Path,
    image_size: int,
    *,
    batch: int | None = None,
    opset: int = MIN_OPSET,
    precision: str = "fp32",
    weights: str | Path | None = None,
    progress: bool = True,
) -> dict[str, str]:
    """Write ``model`` as ONNX to ``out`` (unverified); returns the metadata written."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is below the minimum {MIN_OPSET}")
    model = model.eval().cpu()
    wrapper = ExportableSalad(model, image_size).eval()
    # Trace with two images for a dynamic batch so that no size-1 dimension gets specialised.
    dummy = torch.randn(batch or 2, 3, image_size, image_size)
    dynamic = None if batch else {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    out = Path(out)
    steps = tqdm(total=4, desc="export onnx", unit="step", disable=not progress, leave=False)
    traced = out.with_name(f".{out.name}.trace")
    try:
        steps.set_postfix_str("tracing")
        with warnings.catch_warnings(), torch.no_grad():
            # The tracer warns about every Python int taken from a shape: expected, sizes are fixed.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, (dummy,), str(traced), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                opset_version=opset, dynamic_axes=dynamic, do_constant_folding=True, dynamo=False,
            )
        steps.update()
        steps.set_postfix_str("graph passes")
        proto = onnx.load(str(traced))
        bypass_identities(proto)
        stabilize_logsumexp(proto)
        prune_initializers(proto)
        _declare_output_shape(proto, batch, model.output_dim)
        if precision == "fp16":
            proto = to_mixed_precision(proto)
        elif precision != "fp32":
            raise ValueError(f"precision must be fp32 or fp16, got {precision}")
        steps.update()
        steps.set_postfix_str("metadata")
        meta = build_metadata(model, image_size, batch, precision, weights, opset)
        del proto.metadata_props[:]
        for key, value in meta.items():
            proto.metadata_props.add(key=key, value=value)
        proto.producer_name = "salad_ros"
        proto.doc_string = f"DINOv2 SALAD {meta['variant']} at {image_size}px: normalised images -> descriptors"
        steps.update()
        steps.set_postfix_str("checking")
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(out))
        steps.update()
    finally:
        traced.unlink(missing_ok=True)
        steps.close()
    return meta


def _declare_output_shape(proto: onnx.ModelProto, batch: int | None, dim: int) -> None:
    # The tracer leaves the descriptor width symbolic; consumers (and TensorRT) like it concrete.
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    del dims[:]
    first = dims.add()
    if batch:
        first.dim_value = batch
    else:
        first.dim_param = "batch"
    dims.add().dim_value = dim


def onnx_session(path: str | Path):
    """A CPU onnxruntime session for ``path`` with its log noise silenced."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def verify_onnx(
    model: DinoSalad,
    path: str | Path,
    *,
    precision: str = "fp32",
    count: int = 4,
    image_dir: str | Path | None = None,
    min_cosine: float | None = None,
    max_abs: float | None = None,
    progress: bool = True,
) -> Agreement:
    """Run the ONNX file with onnxruntime (CPU) and PyTorch on the same inputs and compare."""
    default_cos, default_abs = THRESHOLDS[precision]
    min_cosine = default_cos if min_cosine is None else min_cosine
    max_abs = default_abs if max_abs is None else max_abs
    session = onnx_session(path)
    batch = session.get_inputs()[0].shape[0]
    fixed = batch if isinstance(batch, int) else None
    size = session.get_inputs()[0].shape[2]
    x = verification_inputs(size, count, image_dir=image_dir)
    # A dynamic graph is fed one image, then the rest together: two different batch sizes.
    groups = [x] if fixed else [x[:1], x[1:]]
    refs, cands = [], []
    model = model.eval().cpu()
    for group in tqdm(groups, desc="verify onnxruntime vs torch", unit="batch", disable=not progress, leave=False):
        if len(group) == 0:
            continue
        with torch.no_grad():
            refs.append(model(group).numpy())
        run = lambda b: session.run([OUTPUT_NAME], {INPUT_NAME: b})[0]  # noqa: E731
        cands.append(run_in_batches(np.ascontiguousarray(group.numpy()), run, fixed))
    return check_agreement(np.concatenate(refs), np.concatenate(cands), min_cosine, max_abs)


def _batch_arg(text: str) -> int | None:
    if text == "dynamic":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch must be 'dynamic' or a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--batch must be positive, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.onnx", description="Export DINOv2 SALAD to ONNX and verify it against PyTorch."
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="SALAD checkpoint (.ckpt/.pth)")
    src.add_argument("--random-weights", action="store_true", help="seeded random weights (testing only)")
    p.add_argument("--backbone", default="dinov2_vitb14", choices=tuple(BACKBONES))
    p.add_argument("--descriptor", default="salad-8448", choices=tuple(VARIANTS), help="descriptor variant")
    p.add_argument("--image-size", type=int, default=322, help="square input size, a multiple of 14 (default 322)")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--batch", type=_batch_arg, default=None, metavar="dynamic|N",
                   help="static batch size N, or 'dynamic' (default)")
    p.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset, >= {MIN_OPSET} (default {MIN_OPSET})")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16"),
                   help="fp16: transformer blocks in fp16, LayerNorm/softmax/SALAD head in fp32 (for GPUs)")
    p.add_argument("--verify-count", type=int, default=4, help="inputs compared with PyTorch (half random, half images)")
    p.add_argument("--images", help="folder of real images to verify with instead of synthetic ones")
    p.add_argument("--min-cosine", type=float, help="override the cosine threshold (fp32 0.99999, fp16 0.999)")
    p.add_argument("--max-abs", type=float, help="override the max |diff| threshold (fp32 1e-4)")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check (not recommended)")
    p.add_argument("--check-openvino", action="store_true",
                   help="also verify the file in OpenVINO on this CPU (fp32, and bf16 where the CPU has it), time "
                        "it against PyTorch and write <out>.openvino.json")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and cross-check arguments; errors exit with status 2 and a message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.image_size % PATCH_SIZE or args.image_size < PATCH_SIZE:
        parser.error(f"--image-size {args.image_size} is not a positive multiple of {PATCH_SIZE}")
    patches = (args.image_size // PATCH_SIZE) ** 2
    clusters = variant_dims(args.descriptor)[0]
    if patches <= clusters:
        smallest = PATCH_SIZE * (int(clusters ** 0.5) + 1)
        parser.error(f"--image-size {args.image_size} gives {patches} patches; {args.descriptor} needs more patches "
                     f"than its {clusters} clusters: use at least {smallest}")
    if args.opset < MIN_OPSET:
        parser.error(f"--opset {args.opset} is below {MIN_OPSET}")
    if args.weights:
        try:  # the one weights-file check the node and replay use
            check_weights_file(ModelConfig(weights=args.weights))
        except ConfigError as exc:  # one line, like a checkpoint that cannot be loaded (see main)
            print(f"{parser.prog}: error: --weights: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    if not args.out.endswith(".onnx"):
        parser.error(f"--out {args.out} should end in .onnx")
    if args.verify_count < 2:
        parser.error("--verify-count must be at least 2")
    if args.check_openvino and args.no_verify:
        parser.error("--check-openvino verifies; it cannot be combined with --no-verify")
    if args.check_openvino and args.precision != "fp32":
        parser.error("--check-openvino needs an fp32 export (OpenVINO applies bf16 itself)")
    return args


def _check_openvino(model: DinoSalad, path: Path, args: argparse.Namespace) -> dict[str, object]:
    """``--check-openvino``: the staged file in OpenVINO, on the inputs of the onnxruntime check."""
    from salad_ros.params import ConfigError

    from .openvino_check import check_openvino, print_report

    inputs = verification_inputs(args.image_size, args.verify_count, image_dir=args.images)
    try:
        report = check_openvino(model, path, inputs, fixed_batch=args.batch, min_cosine=args.min_cosine,
                                max_abs=args.max_abs)
    except ConfigError as exc:  # OpenVINO missing, or it cannot compile the file
        fp32 = {"summary": f"FAIL: {exc}"}
        return {"passed": False, "checks": {"fp32": fp32}}
    print_report(report, args.verify_count)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    m, l, g = variant_dims(args.descriptor)
    try:
        model = load_model(args.weights, args.backbone, m, l, g, "cpu", num_trainable_blocks=0)
    except CheckpointError as exc:  # damaged, foreign or of another model: one line, no traceback
        print(f"python -m export.onnx: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial")
    try:
        meta = export_onnx(model, staging, args.image_size, batch=args.batch, opset=args.opset,
                           precision=args.precision, weights=args.weights, progress=not args.quiet)
        if not args.no_verify:
            report = verify_onnx(model, staging, precision=args.precision, count=args.verify_count,
                                 image_dir=args.images, min_cosine=args.min_cosine, max_abs=args.max_abs,
                                 progress=not args.quiet)
            print(f"onnxruntime vs PyTorch on {args.verify_count} inputs: cosine min {report.min_cosine:.7f}, "
                  f"max abs difference {report.max_abs:.3e}")
            if not report.passed:
                print(f"refusing to write {out}: {report.summary()}", file=sys.stderr)
                return 1
        ov_report = None
        if args.check_openvino:
            ov_report = _check_openvino(model, staging, args)
            if not ov_report["passed"]:
                print(f"refusing to write {out}: OpenVINO fp32 {ov_report['checks']['fp32']['summary']}", file=sys.stderr)
                return 1
        move_into_place(staging, out)
        if ov_report is not None:
            from .openvino_check import write_report

            ov_report["file"] = out.name
            print(f"wrote {write_report(ov_report, out)}")
    finally:
        staging.unlink(missing_ok=True)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {meta['model_name']}, {meta['descriptor_dim']}-D, "
          f"input {meta['input_shape']}, {meta['precision']}, opset {meta['opset']}")
    if is_random_model_name(meta["model_name"]):
        print(f"WARNING: RANDOM WEIGHTS - {out} computes meaningless descriptors (testing only); "
              "the node and salad_replay flag it as random weights")
    return 0


if __name__ == "__main__":
    sys.exit(main())
