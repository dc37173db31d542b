#!/usr/bin/env python3
"""Inference benchmark: milliseconds per image and images per second for every backend.

For each backbone and input size it builds the torch encoder (fp32, on the CPU), exports the
same weights to ONNX and times the onnxruntime encoder (CPU) next to it; on a CUDA machine it
adds torch fp16 and a TensorRT fp16 engine (built with ``export.tensorrt``, which verifies it).
Every row times ``Encoder.encode`` on uint8 images already at the input size (so the timing is
the network plus normalisation, not the resize), median over ``--repeats`` after ``--warmup``
calls, and reports the cosine of its descriptors to torch fp32 on the same images.
Weights are the seeded random initialisation: speed does not depend on the weight values.

    .venv/bin/python bench/bench_inference.py                                  # the full grid
    .venv/bin/python bench/bench_inference.py --backbones dinov2_vits14 --sizes 224 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from export.compare import synthetic_images  # noqa: E402
from export.onnx import export_onnx  # noqa: E402
from salad_ros.backends import Encoder, ModelConfig, create_encoder  # noqa: E402


def time_encoder(encoder: Encoder, images: list[np.ndarray], warmup: int, repeats: int) -> tuple[float, np.ndarray]:
    """Median seconds per ``encode`` call, and the descriptors (encode returns host arrays, so
    GPU work is finished when it returns)."""
    out = encoder.encode(images)
    for _ in range(max(warmup - 1, 0)):
        encoder.encode(images)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        encoder.encode(images)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def build_rows(args: argparse.Namespace, work: Path) -> list[dict[str, object]]:
    cuda = torch.cuda.is_available() and not args.cpu_only
    rows: list[dict[str, object]] = []
    for backbone in args.backbones:
        for size in args.sizes:
            base = dict(backbone=backbone, descriptor=args.descriptor, image_size=size)
            encoders: list[tuple[str, str, Encoder]] = []
            torch_cpu = create_encoder(ModelConfig(allow_random_weights=True, device="cpu", **base))
            encoders.append(("torch", "fp32", torch_cpu))
            onnx_path = work / f"{backbone}_{size}.onnx"
            export_onnx(torch_cpu.model, onnx_path, size, progress=not args.quiet)
            encoders.append(("onnxruntime", "fp32", create_encoder(
                ModelConfig(backend="onnxruntime", engine=str(onnx_path), device="cpu", batch_size=max(args.batches), **base))))
            if cuda:
                encoders.append(("torch", "fp16", create_encoder(
                    ModelConfig(allow_random_weights=True, device="cuda", precision="fp16", **base))))
                engine = _tensorrt_engine(onnx_path, max(args.batches), args.quiet)
                if engine is not None:
                    encoders.append(("tensorrt", "fp16", create_encoder(
                        ModelConfig(backend="tensorrt", engine=str(engine), device="cuda", precision="fp16", **base))))
            for batch in args.batches:
                images = synthetic_images(batch, size, seed=batch)
                reference = None
                for backend, precision, enc in encoders:
                    seconds, desc = time_encoder(enc, images, args.warmup, args.repeats)
                    if reference is None:
                        reference = desc  # torch fp32 on the CPU comes first
                    cosine = float(np.min(np.sum(reference * desc, axis=1)))
                    rows.append(dict(backbone=backbone, size=size, batch=batch, backend=backend, precision=precision,
                                     device=enc.device, ms_per_image=1000 * seconds / batch,
                                     images_per_s=batch / seconds, min_cosine_vs_torch_fp32=cosine))
                    print(_format_row(rows[-1]), file=sys.stderr, flush=True)
            del encoders
    return rows


def _tensorrt_engine(onnx_path: Path, max_batch: int, quiet: bool) -> Path | None:
    """Build (or take from the cache) a verified fp16 engine; None where TensorRT is missing."""
    from export import tensorrt as xtrt

    engine = onnx_path.with_suffix(".engine")
    argv = ["--onnx", str(onnx_path), "--precision", "fp16", "--out", str(engine), "--opt-batch", "1",
            "--max-batch", str(max_batch)] + (["--quiet"] if quiet else [])
    rc = xtrt.main(argv)
    if rc != 0:
        print(f"TensorRT fp16 rows skipped (export.tensorrt exit status {rc})", file=sys.stderr)
        return None
    return engine


def _format_row(r: dict[str, object]) -> str:
    return (f"| {r['backbone']} | {r['size']} | {r['batch']} | {r['backend']} | {r['precision']} | {r['device']} | "
            f"{r['ms_per_image']:.1f} | {r['images_per_s']:.2f} | {r['min_cosine_vs_torch_fp32']:.6f} |")


def format_table(rows: Sequence[dict[str, object]]) -> str:
    head = ("| backbone | size | batch | backend | precision | device | ms/image | images/s | cosine vs torch fp32 |\n"
            "|---|---|---|---|---|---|---|---|---|")
    return "\n".join([head, *(_format_row(r) for r in rows)])


def _csv_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", type=lambda s: s.split(","), default=["dinov2_vits14", "dinov2_vitb14"])
    p.add_argument("--sizes", type=_csv_ints, default=[224, 322])
    p.add_argument("--batches", type=_csv_ints, default=[1, 8])
    p.add_argument("--descriptor", default="salad-8448")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per row (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first per row")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--cpu-only", action="store_true", help="skip the CUDA rows on a GPU machine")
    p.add_argument("--work-dir", help="where the ONNX/engine files go (default: a temporary directory)")
    p.add_argument("--json", help="also write the rows as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        start = time.time()
        rows = build_rows(args, work)
    cpu = os.cpu_count()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.cpu_only else "none"
    # Other processes on the machine slow CPU rows down: the load average says how much to trust them.
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\n{cpu} CPU threads visible, torch {torch.__version__} using {torch.get_num_threads()} threads, GPU: {gpu}; "
          f"median of {args.repeats} after {args.warmup} warm-up; {time.time() - start:.0f} s in total; "
          f"load average at the end {load}\n")
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
