#!/usr/bin/env python3
"""Inference benchmark: ms per image of every inference path, and how close each stays to the reference.

A *path* is a backend, a precision and a device (``--paths``; the first one is the reference):

  CPU   torch-fp32, torch-bf16, onnxruntime-fp32, openvino-fp32, openvino-bf16   (the default here)
  CUDA  torch-fp32-cuda, torch-fp16-cuda, onnxruntime-fp32-cuda (CUDA execution provider),
        tensorrt-fp16 (an engine built and verified with ``export.tensorrt``)

For each backbone and input size, every path encodes the same uint8 images already at the input
size (so the time is the network plus normalisation, not the resize) at each ``--batches`` size.
Timing is round-robin: one call of every path per repeat, ``--repeats`` times after ``--warmup``,
so load from other processes falls on all paths alike. Each cell is the best call (what the path
does when nothing disturbs it; on a shared machine medians swing several-fold with the load, and
OpenMP's barriers in torch suffer most) and, in brackets, the median.
Columns: ms per image per batch size, speed-up over the reference at the first batch size (best
calls), the minimum cosine of the descriptors to the reference's (timing images and demo frames),
and the top-1 retrieval agreement with the reference on ``--frames`` frames of the demo bag's two
laps: each frame's most similar other frame (frames within ``--exclude`` of it left out) must be
the one the reference picks. Weights are the seeded random initialisation (speed does not depend on them).
Paths this machine cannot run (no native bf16, no CUDA, a missing package) are listed with the
reason, not timed.

    .venv/bin/python bench/bench_inference.py --threads 2                       # ViT-S and ViT-B, 224 and 322
    .venv/bin/python bench/bench_inference.py --backbones dinov2_vitb14 --sizes 224 --repeats 5 --frames 48
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from export.compare import synthetic_images  # noqa: E402
from export.onnx import export_onnx  # noqa: E402
from salad_ros.backends import (  # noqa: E402
    Encoder,
    ModelConfig,
    cpu_features,  # noqa: E402
    create_encoder,
)
from salad_ros.model import load_model, variant_dims  # noqa: E402
from salad_ros.params import ConfigError  # noqa: E402


@dataclass(frozen=True)
class InferencePath:
    """One way of computing descriptors: ``backend`` at ``precision`` on ``device``."""

    name: str
    backend: str
    precision: str
    device: str

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}" + (" CUDA" if self.device == "cuda" else "")


PATHS = {p.name: p for p in (
    InferencePath("torch-fp32", "torch", "fp32", "cpu"),
    InferencePath("torch-bf16", "torch", "bf16", "cpu"),
    InferencePath("onnxruntime-fp32", "onnxruntime", "fp32", "cpu"),
    InferencePath("openvino-fp32", "openvino", "fp32", "cpu"),
    InferencePath("openvino-bf16", "openvino", "bf16", "cpu"),
    InferencePath("torch-fp32-cuda", "torch", "fp32", "cuda"),
    InferencePath("torch-fp16-cuda", "torch", "fp16", "cuda"),
    InferencePath("onnxruntime-fp32-cuda", "onnxruntime", "fp32", "cuda"),
    InferencePath("tensorrt-fp16", "tensorrt", "fp16", "cuda"),
)}
CPU_PATHS = ("torch-fp32", "torch-bf16", "onnxruntime-fp32", "openvino-fp32", "openvino-bf16")
GPU_PATHS = ("torch-fp32-cuda", "torch-fp16-cuda", "onnxruntime-fp32-cuda", "tensorrt-fp16")


def demo_frames(n: int, size: tuple[int, int] = (320, 240), seed: int = 0) -> list[np.ndarray]:
    """``n`` RGB frames of the demo bag's drive (two laps, the second at dusk), evenly in time."""
    from salad_ros.evaluation import demo_bag

    scene = demo_bag.Scene(seed)
    drive = demo_bag.Drive(scene)
    frames = []
    for i in range(n):
        x, y, yaw, h, lap = drive.state(drive.duration * i / n)
        light = demo_bag.DAY if lap == 0 else demo_bag.DUSK
        frames.append(scene.render(x, y, yaw, h, light, size, np.random.default_rng([seed, i]), supersample=1))
    return frames


def top1(descriptors: np.ndarray, exclude: int) -> np.ndarray:
    """Each row's most similar other row, rows within ``exclude`` positions of it left out
    (-1 where that leaves none)."""
    sim = descriptors @ descriptors.T
    idx = np.arange(len(sim))
    sim[np.abs(idx[:, None] - idx[None, :]) <= exclude] = -np.inf
    return np.where(np.isfinite(sim).any(axis=1), sim.argmax(axis=1), -1)


def top1_agreement(reference: np.ndarray, candidate: np.ndarray, exclude: int) -> float:
    """Fraction of rows whose top-1 neighbour (see :func:`top1`) is the same in both."""
    return float(np.mean(top1(reference, exclude) == top1(candidate, exclude)))


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a.astype(np.float64) * b, axis=1)))


def unavailable(path: InferencePath, cuda: bool) -> str | None:
    """Why ``path`` cannot run here, or None."""
    import importlib.util

    if path.device == "cuda" and not cuda:
        return "no CUDA device"
    if path.device == "cpu" and path.precision == "bf16":
        problem = cpu_features.cpu_bf16_problem()
        if problem:
            return problem
    if path.backend in ("onnxruntime", "openvino") and importlib.util.find_spec(path.backend) is None:
        return f"{path.backend} not installed"
    if path.backend == "tensorrt":
        from salad_ros.backends.tensorrt_backend import unavailable_reason

        return unavailable_reason()
    return None


def build_encoder(path: InferencePath, base: dict, onnx_file: Callable[[], Path], max_batch: int, quiet: bool) -> Encoder:
    if path.backend == "torch":
        return create_encoder(ModelConfig(allow_random_weights=True, device=path.device, precision=path.precision, **base))
    if path.backend == "tensorrt":
        engine = _tensorrt_engine(onnx_file(), max_batch, quiet)
        return create_encoder(ModelConfig(backend="tensorrt", engine=str(engine), device="cuda", precision="fp16", **base))
    cfg = ModelConfig(backend=path.backend, engine=str(onnx_file()), device=path.device, precision=path.precision,
                      batch_size=max_batch, **base)
    if path.backend == "onnxruntime" and path.device == "cuda":
        # The row is onnxruntime's CUDA execution provider: keep its TensorRT provider out of it.
        from salad_ros.backends import onnxruntime_backend as ortb

        choose = ortb.select_providers
        with mock.patch.object(ortb, "select_providers", lambda d, a, _t, c=None: choose(d, a, False, c)):
            return create_encoder(cfg)
    return create_encoder(cfg)


def _tensorrt_engine(onnx_path: Path, max_batch: int, quiet: bool) -> Path:
    """Build (or take from the cache) a verified fp16 engine."""
    from export import tensorrt as xtrt

    engine = onnx_path.with_suffix(".engine")
    argv = ["--onnx", str(onnx_path), "--precision", "fp16", "--out", str(engine), "--opt-batch", "1",
            "--max-batch", str(max_batch)] + (["--quiet"] if quiet else [])
    rc = xtrt.main(argv)
    if rc != 0:
        raise RuntimeError(f"export.tensorrt exit status {rc}")
    return engine


def encode_chunks(encoder: Encoder, images: Sequence[np.ndarray], chunk: int = 8) -> np.ndarray:
    return np.concatenate([encoder.encode(images[i:i + chunk]) for i in range(0, len(images), chunk)])


def time_round_robin(encoders: Sequence[Encoder], images: list[np.ndarray], warmup: int,
                     repeats: int) -> list[tuple[float, float]]:
    """``(best, median)`` seconds per ``encode(images)`` call of each encoder, calls interleaved."""
    for enc in encoders:
        for _ in range(warmup):
            enc.encode(images)
    times: list[list[float]] = [[] for _ in encoders]
    for _ in range(repeats):
        for k, enc in enumerate(encoders):
            t0 = time.perf_counter()
            enc.encode(images)
            times[k].append(time.perf_counter() - t0)
    return [(min(t), statistics.median(t)) for t in times]


def build_rows(args: argparse.Namespace, work: Path) -> tuple[list[dict[str, object]], list[str]]:
    cuda = torch.cuda.is_available() and not args.cpu_only
    paths = [PATHS[n] for n in args.paths]
    skipped: list[str] = []
    runnable = []
    for p in paths:
        reason = unavailable(p, cuda)
        if reason:
            skipped.append(f"{p.name}: {reason}")
        else:
            runnable.append(p)
    if not runnable or runnable[0] != paths[0]:
        raise SystemExit(f"the reference path {paths[0].name} cannot run here: {'; '.join(skipped)}")
    frames = demo_frames(args.frames) if args.frames else []
    rows: list[dict[str, object]] = []
    for backbone in args.backbones:
        for size in args.sizes:
            base = dict(backbone=backbone, descriptor=args.descriptor, image_size=size)
            onnx_path = work / f"{backbone}_{size}.onnx"

            def onnx_file(onnx_path: Path = onnx_path, backbone: str = backbone, size: int = size) -> Path:
                if not onnx_path.is_file():
                    m, l, g = variant_dims(args.descriptor)
                    model = load_model(None, backbone, m, l, g, "cpu", num_trainable_blocks=0)
                    export_onnx(model, onnx_path, size, progress=not args.quiet)
                return onnx_path

            built: list[tuple[InferencePath, Encoder]] = []
            for p in runnable:
                try:
                    built.append((p, build_encoder(p, base, onnx_file, max(args.batches), args.quiet)))
                except (ConfigError, RuntimeError) as exc:
                    if p == runnable[0]:
                        raise
                    skipped.append(f"{p.name} at {backbone}/{size}: {' '.join(str(exc).split())}")
            encoders = [e for _, e in built]
            ms: dict[int, list[float]] = {}
            median_ms: dict[int, list[float]] = {}
            cosines = [math.inf] * len(encoders)
            for batch in args.batches:
                images = synthetic_images(batch, size, seed=batch)
                outs = [e.encode(images) for e in encoders]
                cosines = [min(c, min_cosine(outs[0], o)) for c, o in zip(cosines, outs)]
                seconds = time_round_robin(encoders, images, args.warmup, args.repeats)
                ms[batch] = [1000 * best / batch for best, _ in seconds]
                median_ms[batch] = [1000 * median / batch for _, median in seconds]
            agreement: list[float | None] = [None] * len(encoders)
            if frames:
                descs = [encode_chunks(e, frames) for e in encoders]
                cosines = [min(c, min_cosine(descs[0], d)) for c, d in zip(cosines, descs)]
                agreement = [top1_agreement(descs[0], d, args.exclude) for d in descs]
            for k, (p, enc) in enumerate(built):
                rows.append(dict(
                    backbone=backbone, size=size, path=p.name, label=p.label, device=enc.device,
                    ms_per_image={str(b): ms[b][k] for b in args.batches},
                    median_ms_per_image={str(b): median_ms[b][k] for b in args.batches},
                    speedup=ms[args.batches[0]][0] / ms[args.batches[0]][k],
                    min_cosine=cosines[k], top1_agreement=agreement[k], frames=len(frames),
                ))
                print(format_row(rows[-1], args.batches), file=sys.stderr, flush=True)
            del built, encoders
    return rows, skipped


def format_row(r: dict[str, object], batches: Sequence[int]) -> str:
    ms, med = r["ms_per_image"], r.get("median_ms_per_image", {})
    agree = r.get("top1_agreement")
    timings = [f"{ms[str(b)]:.0f}" + (f" ({med[str(b)]:.0f})" if str(b) in med else "") for b in batches]
    cells = [str(r["backbone"]).replace("dinov2_", ""), str(r["size"]), str(r["label"]),
             *timings, f"{r['speedup']:.2f}x", f"{r['min_cosine']:.6f}",
             "–" if agree is None else f"{agree:.3f} ({r['frames']})"]
    return "| " + " | ".join(cells) + " |"


def format_table(rows: Sequence[dict[str, object]], batches: Sequence[int], reference: str) -> str:
    head = ["backbone", "size", "path", *(f"ms/img b{b}: best (median)" for b in batches), f"speed-up b{batches[0]}",
            f"min cosine vs {reference}", "top-1 agreement (frames)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + [format_row(r, batches) for r in rows])


def machine_summary() -> str:
    flags = cpu_features.native_bf16_flags(cpu_features.cpu_flags(), cpu_features.cpu_machine())
    versions = [f"torch {torch.__version__}"]
    for mod in ("onnxruntime", "openvino"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__.split('-')[0]}")
        except ImportError:
            pass
    return (f"CPU {cpu_features.cpu_model()} ({os.cpu_count()} threads visible; native bf16: "
            f"{', '.join(flags) or 'none'}), {torch.get_num_threads()} inference threads; {', '.join(versions)}")


def _csv(kind: type) -> Callable[[str], list]:
    return lambda text: [kind(v) for v in text.split(",") if v]


def _paths_arg(text: str) -> list[str]:
    names = [v for v in text.split(",") if v]
    unknown = [n for n in names if n not in PATHS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown path(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(PATHS)}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", type=_csv(str), default=["dinov2_vits14", "dinov2_vitb14"])
    p.add_argument("--sizes", type=_csv(int), default=[224, 322])
    p.add_argument("--batches", type=_csv(int), default=[1, 8], help="batch sizes; the first is the speed-up's")
    p.add_argument("--paths", type=_paths_arg, default=None,
                   help=f"comma-separated, the first is the reference (default: {','.join(CPU_PATHS)}, "
                        f"plus {','.join(GPU_PATHS[1:])} with CUDA)")
    p.add_argument("--descriptor", default="salad-8448")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per path and batch (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first per path and batch")
    p.add_argument("--frames", type=int, default=96, help="demo-bag frames for the top-1 agreement (0: skip)")
    p.add_argument("--exclude", type=int, default=3, help="frames within this many of a query are not candidates")
    p.add_argument("--threads", type=int, help="CPU threads for every backend (default: torch's choice)")
    p.add_argument("--cpu-only", action="store_true", help="skip the CUDA rows on a GPU machine")
    p.add_argument("--work-dir", help="where the ONNX/engine files go (default: a temporary directory)")
    p.add_argument("--json", help="also write the rows as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)  # the onnxruntime and openvino backends follow torch's count
    if args.paths is None:
        cuda = torch.cuda.is_available() and not args.cpu_only
        args.paths = list(CPU_PATHS) + (list(GPU_PATHS[1:]) if cuda else [])
    load_start = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows, skipped = build_rows(args, work)
    load_end = " ".join(f"{v:.2f}" for v in os.getloadavg())
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.cpu_only else "none"
    print(f"\n{machine_summary()}; GPU: {gpu}\nbest and median of {args.repeats} round-robin calls after {args.warmup} warm-up; "
          f"{time.time() - start:.0f} s in total; load average (1, 5, 15 min) at the start {load_start}, "
          f"at the end {load_end}\n")
    print(format_table(rows, args.batches, PATHS[args.paths[0]].label))
    for s in skipped:
        print(f"not run: {s}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_summary(), "gpu": gpu, "load_start": load_start,
                                               "load_end": load_end, "rows": rows, "skipped": skipped}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
