"""Build a TensorRT engine from an exported ONNX file, check it against PyTorch, then save it.

    python -m export.tensorrt --onnx salad.onnx --precision fp16 --out salad.engine

fp16 keeps LayerNorm, softmax and the whole SALAD head (Sinkhorn log-sum-exp, normalisations)
in fp32: ViT LayerNorm statistics overflow in fp16. With TensorRT >= 10 the network is strongly
typed and precision comes from the graph (:func:`export.graph.to_mixed_precision` inserts the
casts); older versions get per-layer precision constraints (:func:`apply_fp32_islands`). Both use
the same rule, :func:`export.graph.runs_in_fp16`.

The engine is compared with PyTorch on the GPU (fp32 reference) and is not saved unless every
input reaches the cosine threshold (fp16 0.999, fp32 0.99999). Accepted engines are cached,
keyed by GPU, compute capability, TensorRT version, ONNX hash, precision and batch profile.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import torch
from tqdm import tqdm

from salad_ros.backends import ModelConfig, check_weights_file, is_random_model_name
from salad_ros.backends.contract import (
    EXPORT_METADATA_KEYS,
    INPUT_NAME,
    OUTPUT_NAME,
    default_cache_dir,
    read_onnx_metadata,
    run_in_batches,
)
from salad_ros.backends.tensorrt_backend import (
    TensorRTRunner,
    TensorRTUnavailable,
    gpu_identity,
    import_tensorrt,
    require_cuda,
    sidecar_path,
)
from salad_ros.fileio import file_fingerprint, sha256_file, write_bytes_atomic
from salad_ros.model import load_model, variant_dims
from salad_ros.params import ConfigError

from .compare import THRESHOLDS, Agreement, check_agreement, verification_inputs
from .graph import runs_in_fp16, to_mixed_precision

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
EXIT_REFUSED = 1
EXIT_UNAVAILABLE = 3


def engine_cache_key(
    gpu: str, compute_capability: str, trt_version: str, onnx_sha256: str, precision: str, profile: Sequence[int]
) -> str:
    """Content key of an engine: anything that changes the built kernels changes the key."""
    ident = {
        "format": CACHE_FORMAT, "gpu": gpu, "sm": compute_capability, "tensorrt": trt_version,
        "onnx": onnx_sha256, "precision": precision, "batch_profile": list(profile),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def batch_profile(onnx_batch: str, min_batch: int, opt_batch: int, max_batch: int) -> tuple[int, int, int]:
    """``(min, opt, max)`` batch of the optimisation profile; a static ONNX batch fixes all three."""
    if onnx_batch != "dynamic":
        n = int(onnx_batch)
        return n, n, n
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"batch profile needs 1 <= min <= opt <= max, got {min_batch}, {opt_batch}, {max_batch}")
    return min_batch, opt_batch, max_batch


def layer_needs_fp32(name: str, kind: str, output_dtypes: Sequence[str]) -> bool:
    """Whether a layer of a weakly typed network gets an fp32 precision constraint: every
    floating-point layer outside the fp16 region (shape and integer layers are left alone)."""
    if not output_dtypes or any(dt not in ("FLOAT", "HALF") for dt in output_dtypes):
        return False
    if kind in ("SHAPE", "CONSTANT"):
        return False
    return not runs_in_fp16(name, kind)


def apply_fp32_islands(network: Any, trt: ModuleType) -> int:
    """Pin fp32 on the layers :func:`layer_needs_fp32` selects (weakly typed fp16 builds, which
    need ``BuilderFlag.OBEY_PRECISION_CONSTRAINTS``); returns how many layers were pinned."""
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        dtypes = [layer.get_output(j).dtype.name for j in range(layer.num_outputs)]
        if layer_needs_fp32(layer.name, layer.type.name, dtypes):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
    return pinned


def strongly_typed_supported(trt: ModuleType) -> bool:
    return hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


def network_onnx(model: onnx.ModelProto, file_precision: str, precision: str, strongly_typed: bool) -> onnx.ModelProto:
    """The graph handed to the parser: the fp16 islands graph for strongly typed fp16 builds."""
    if file_precision == "fp16" and precision == "fp32":
        raise ValueError("an fp16 ONNX file cannot give an fp32 engine: export with --precision fp32")
    if precision == "fp16" and strongly_typed and file_precision == "fp32":
        return to_mixed_precision(model)
    if precision == "fp16" and not strongly_typed and file_precision == "fp16":
        raise ValueError("TensorRT without strongly typed networks needs the fp32 ONNX file for an fp16 engine")
    return model


class _BuildProgress:
    """tqdm bars for TensorRT's top-level build phases (``IProgressMonitor``, TensorRT >= 10)."""

    @staticmethod
    def create(trt: ModuleType, enabled: bool) -> Any | None:
        if not enabled or not hasattr(trt, "IProgressMonitor"):
            return None

        class Monitor(trt.IProgressMonitor):
            def __init__(self) -> None:
                trt.IProgressMonitor.__init__(self)
                self.bars: dict[str, tqdm] = {}

            def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
                if parent_phase is None:
                    self.bars[phase_name] = tqdm(total=num_steps, desc=f"TensorRT {phase_name}", leave=False)

            def step_complete(self, phase_name: str, step: int) -> bool:
                if phase_name in self.bars:
                    self.bars[phase_name].update()
                return True  # never cancel

            def phase_finish(self, phase_name: str) -> None:
                bar = self.bars.pop(phase_name, None)
                if bar is not None:
                    bar.close()

        return Monitor()


def build_engine(
    model: onnx.ModelProto,
    file_precision: str,
    precision: str,
    profile: tuple[int, int, int],
    *,
    workspace_gb: float = 4.0,
    trt: ModuleType | None = None,
    progress: bool = True,
    verbose: bool = False,
) -> bytes:
    """Serialised engine for ``model`` (``images`` input ``[B, 3, S, S]``) at ``precision``."""
    trt = trt or import_tensorrt()
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly = strongly_typed_supported(trt)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    graph = network_onnx(model, file_precision, precision, strongly)
    if not parser.parse(graph.SerializeToString()):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse the ONNX graph:\n{errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if hasattr(trt.BuilderFlag, "TF32"):
        # TF32 would round fp32 matmul inputs to 10 mantissa bits: the fp32 islands must be real fp32.
        config.clear_flag(trt.BuilderFlag.TF32)
    if precision == "fp16" and not strongly:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = apply_fp32_islands(network, trt)
        log.info("weakly typed fp16 build: %d of %d layers pinned to fp32", pinned, network.num_layers)
    inp = network.get_input(0)
    if inp.name != INPUT_NAME:
        raise RuntimeError(f"ONNX input is '{inp.name}', expected '{INPUT_NAME}'")
    shape = tuple(inp.shape)
    if shape[0] < 0:
        opt = builder.create_optimization_profile()
        opt.set_shape(INPUT_NAME, *[(b, *shape[1:]) for b in profile])
        config.add_optimization_profile(opt)
    monitor = _BuildProgress.create(trt, progress)
    if monitor is not None:
        config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the TensorRT log above)")
    return bytes(serialized)


def resolve_reference_weights(meta: Mapping[str, str], weights: str | None) -> tuple[bool, str | None]:
    """``(available, checkpoint)`` for the PyTorch reference: ``--weights`` if given (its fingerprint
    must match the export), else the exported checkpoint if it is still where it was, or the seeded
    random weights when the export used those."""
    expected = meta["weights_fingerprint"]
    if weights:
        found = file_fingerprint(weights)
        if found != expected:
            raise ValueError(f"--weights {weights} has fingerprint {found}, the ONNX was exported from {expected}")
        return True, weights
    if expected == "random":
        return True, None
    recorded = meta.get("weights_file", "")
    if recorded and Path(recorded).is_file() and file_fingerprint(recorded) == expected:
        return True, recorded
    return False, None


def torch_reference(meta: Mapping[str, str], checkpoint: str | None, device: torch.device) -> Callable[[torch.Tensor], np.ndarray]:
    """fp32 PyTorch descriptors on ``device`` (TF32 off, so the reference is exact fp32)."""
    m, l, g = variant_dims(meta["descriptor"])
    model = load_model(checkpoint, meta["backbone"], m, l, g, device, num_trainable_blocks=0)

    def run(x: torch.Tensor) -> np.ndarray:
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            with torch.no_grad():
                return model(x.to(device)).float().cpu().numpy()
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32

    return run


def onnxruntime_reference(onnx_path: str | Path) -> Callable[[torch.Tensor], np.ndarray]:
    """Descriptors from onnxruntime on the CPU (used when the checkpoint is not at hand)."""
    from .onnx import onnx_session

    session = onnx_session(onnx_path)
    batch = session.get_inputs()[0].shape[0]
    fixed = batch if isinstance(batch, int) else None
    run = lambda b: session.run([OUTPUT_NAME], {INPUT_NAME: b})[0]  # noqa: E731
    return lambda x: run_in_batches(np.ascontiguousarray(x.cpu().numpy()), run, fixed)


def verify_engine(
    runner: TensorRTRunner, reference: Callable[[torch.Tensor], np.ndarray], inputs: torch.Tensor,
    min_cosine: float, progress: bool = True,
) -> Agreement:
    """Compare the engine with ``reference`` one profile-sized batch at a time."""
    refs, cands = [], []
    step = runner.max_batch
    for start in tqdm(range(0, len(inputs), step), desc="verify TensorRT vs reference", disable=not progress, leave=False):
        batch = inputs[start:start + step]
        refs.append(reference(batch))
        cands.append(runner.run(batch.to(runner.device)).cpu().numpy())
    return check_agreement(np.concatenate(refs), np.concatenate(cands), min_cosine)


def engine_metadata(
    onnx_meta: Mapping[str, str], onnx_sha256: str, precision: str, trt_version: str, gpu: str, capability: str,
    profile: Sequence[int], key: str, agreement: Agreement | None, reference: str, typing: str,
) -> dict[str, Any]:
    """Sidecar content: the ONNX metadata (so the engine names the same model) plus build facts."""
    meta: dict[str, Any] = dict(onnx_meta)
    meta.update(
        precision=precision, onnx_sha256=onnx_sha256, tensorrt_version=trt_version, gpu=gpu,
        compute_capability=capability, batch_profile=list(profile), cache_key=key, network_typing=typing,
        built_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    if agreement is not None:
        meta["verification"] = {
            "reference": reference, "min_cosine": agreement.min_cosine, "mean_cosine": agreement.mean_cosine,
            "max_abs": agreement.max_abs,
        }
    return meta


def write_engine(path: str | Path, engine: bytes, meta: Mapping[str, Any]) -> None:
    """Write engine and sidecar atomically (a crash never leaves an engine without metadata)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    side = sidecar_path(path)
    write_bytes_atomic(side, json.dumps(meta, indent=2, sort_keys=True).encode())
    write_bytes_atomic(path, engine)


def copy_engine(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sidecar_path(src), sidecar_path(dst))
    shutil.copyfile(src, dst)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.tensorrt",
        description="Build a TensorRT engine from a salad_ros ONNX export, verify it against PyTorch, save it.",
    )
    p.add_argument("--onnx", required=True, help="ONNX file from 'python -m export.onnx'")
    p.add_argument("--precision", required=True, choices=("fp16", "fp32"),
                   help="fp16 keeps LayerNorm, softmax and the SALAD head in fp32 (INT8 is not supported: uncalibrated)")
    p.add_argument("--out", required=True, help="output .engine file (metadata goes to <out>.json)")
    p.add_argument("--device", default="cuda", help="CUDA device, e.g. cuda or cuda:1")
    p.add_argument("--min-batch", type=int, default=1, help="profile minimum batch (dynamic-batch ONNX only)")
    p.add_argument("--opt-batch", type=int, default=1, help="profile batch TensorRT tunes for (default 1, the live node)")
    p.add_argument("--max-batch", type=int, default=8, help="profile maximum batch (default 8, offline replay)")
    p.add_argument("--workspace-gb", type=float, default=4.0, help="builder workspace limit in GiB")
    p.add_argument("--weights", help="checkpoint for the PyTorch reference (default: the one recorded in the ONNX)")
    p.add_argument("--reference", default="auto", choices=("auto", "torch", "onnxruntime"),
                   help="what the engine is checked against; auto: PyTorch if the checkpoint is found, else onnxruntime")
    p.add_argument("--verify-count", type=int, default=8, help="inputs compared (half random, half images)")
    p.add_argument("--images", help="folder of real images to verify with instead of synthetic ones")
    p.add_argument("--min-cosine", type=float, help="override the cosine threshold (fp16 0.999, fp32 0.99999)")
    p.add_argument("--cache-dir", help="engine cache (default $SALAD_ROS_CACHE/tensorrt or ~/.cache/salad_ros/tensorrt)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the engine cache")
    p.add_argument("--rebuild", action="store_true", help="ignore a cached engine (the new one replaces it)")
    p.add_argument("--verbose", action="store_true", help="verbose TensorRT log")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and cross-check arguments (nothing here needs TensorRT); errors exit with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not Path(args.onnx).is_file():
        parser.error(f"--onnx {args.onnx} does not exist")
    if not args.out.endswith((".engine", ".plan", ".trt")):
        parser.error(f"--out {args.out} should end in .engine (or .plan/.trt)")
    if not 1 <= args.min_batch <= args.opt_batch <= args.max_batch:
        parser.error(f"need 1 <= --min-batch <= --opt-batch <= --max-batch, got "
                     f"{args.min_batch}, {args.opt_batch}, {args.max_batch}")
    if args.workspace_gb <= 0:
        parser.error("--workspace-gb must be positive")
    if args.verify_count < 2:
        parser.error("--verify-count must be at least 2")
    if args.min_cosine is not None and not 0 < args.min_cosine <= 1:
        parser.error("--min-cosine must be in (0, 1]")
    if args.weights:
        try:  # the one weights-file check the node and replay use
            check_weights_file(ModelConfig(weights=args.weights))
        except ConfigError as exc:
            parser.error(f"--weights: {exc}")
    return args


def load_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The salad_ros metadata of an ONNX file; files from elsewhere are refused."""
    meta = read_onnx_metadata(path)
    missing = [k for k in EXPORT_METADATA_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{path} lacks salad_ros metadata ({', '.join(missing)}): export it with 'python -m export.onnx'")
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    progress = not args.quiet
    onnx_path, out = Path(args.onnx), Path(args.out)
    try:
        meta = load_onnx_metadata(onnx_path)
        available, checkpoint = resolve_reference_weights(meta, args.weights)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.reference == "torch" and not available:
        print(f"error: the checkpoint {meta.get('weights_file') or '?'} (fingerprint {meta['weights_fingerprint']}) "
              "is not available: pass --weights or --reference onnxruntime", file=sys.stderr)
        return 2
    try:
        trt = import_tensorrt()
        device = require_cuda(args.device)
    except (TensorRTUnavailable, RuntimeError) as exc:
        print(f"cannot build a TensorRT engine here: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    gpu, capability = gpu_identity(device)
    onnx_sha = sha256_file(onnx_path)
    profile = batch_profile(meta.get("batch", "dynamic"), args.min_batch, args.opt_batch, args.max_batch)
    key = engine_cache_key(gpu, capability, trt.__version__, onnx_sha, args.precision, profile)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir("tensorrt")
    cached = cache_dir / f"{key}.engine"
    if not args.no_cache and not args.rebuild and cached.is_file() and sidecar_path(cached).is_file():
        copy_engine(cached, out)
        print(f"engine cache hit {cached} (verified when it was built): copied to {out}")
        return 0

    typing = "strongly typed" if strongly_typed_supported(trt) else "weakly typed + precision constraints"
    print(f"building {args.precision} engine ({typing}) for {gpu} with TensorRT {trt.__version__}, "
          f"batch profile {profile}; this takes minutes")
    start = time.time()
    try:
        engine = build_engine(onnx.load(str(onnx_path)), meta["precision"], args.precision, profile,
                              workspace_gb=args.workspace_gb, trt=trt, progress=progress, verbose=args.verbose)
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"built in {time.time() - start:.0f} s ({len(engine) / 1e6:.1f} MB)")

    use_torch = args.reference == "torch" or (args.reference == "auto" and available)
    if use_torch:
        reference, ref_name = torch_reference(meta, checkpoint, device), f"PyTorch fp32 on {device}"
    else:
        log.warning("checkpoint not available: verifying against onnxruntime (CPU) on %s instead of PyTorch", onnx_path)
        reference, ref_name = onnxruntime_reference(onnx_path), "onnxruntime CPU"
    runner = TensorRTRunner(engine, device, trt)
    inputs = verification_inputs(int(meta["image_size"]), args.verify_count, image_dir=args.images)
    min_cosine = args.min_cosine if args.min_cosine is not None else THRESHOLDS[args.precision][0]
    report = verify_engine(runner, reference, inputs, min_cosine, progress)
    print(f"TensorRT {args.precision} vs {ref_name} on {len(inputs)} inputs: cosine min {report.min_cosine:.6f}, "
          f"mean {report.mean_cosine:.6f}, max abs difference {report.max_abs:.3e}")
    if not report.passed:
        print(f"refusing to save {out}: {report.summary()}", file=sys.stderr)
        return EXIT_REFUSED
    sidecar = engine_metadata(meta, onnx_sha, args.precision, trt.__version__, gpu, capability, profile, key,
                              report, ref_name, typing)
    write_engine(out, engine, sidecar)
    if not args.no_cache:
        write_engine(cached, engine, sidecar)
    print(f"wrote {out} and {sidecar_path(out)}: {meta['model_name']}")
    if is_random_model_name(meta["model_name"]):
        print(f"WARNING: RANDOM WEIGHTS - {out} computes meaningless descriptors (testing only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
