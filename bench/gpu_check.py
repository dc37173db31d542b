#!/usr/bin/env python3
"""The Python half of ``scripts/gpu_check.sh``: everything in it that can be tested without a GPU.

Subcommands (each exits non-zero, with one line on stderr, when its check fails):

  torch-index NVIDIA_SMI_TXT    the PyTorch wheel index URL for the driver's CUDA version
  junit REPORT.xml              the GPU tests ran: none failed, none errored, none skipped
  search --json OUT             time single-query search of the flat keyframe index on GPU 0
  table --inference J --search J  one table of the GPU timings; refuses missing or CPU-only rows

    .venv/bin/python bench/gpu_check.py torch-index <(nvidia-smi)
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

#: The rows of the GPU table, in order (``bench/bench_inference.py`` path names); the first is
#: the reference of the cosine column.
GPU_PATHS = ("torch-fp32-cuda", "torch-fp16-cuda", "onnxruntime-fp32-cuda", "tensorrt-fp16")
#: Minimum cosine to torch fp32 on CUDA per path (fp16 keeps ~3 decimal digits).
MIN_COSINE = {"torch-fp32-cuda": 0.9999, "torch-fp16-cuda": 0.999, "onnxruntime-fp32-cuda": 0.9999,
              "tensorrt-fp16": 0.999}
SIZES = (224, 322)
BATCHES = (1, 8)
BACKBONE = "dinov2_vitb14"
#: CUDA builds of PyTorch on download.pytorch.org, newest first. CUDA 12 builds are preferred:
#: onnxruntime-gpu, faiss-gpu and tensorrt from PyPI are CUDA 12 builds, and one process should
#: load one CUDA major version. Override with TORCH_INDEX_URL in gpu_check.sh.
TORCH_CUDA_TAGS = ("cu129", "cu128", "cu126")
TORCH_INDEX = "https://download.pytorch.org/whl/{tag}"


class CheckFailed(Exception):
    """A check of the GPU run failed; the message says what."""


# ---------------------------------------------------------------------------------------------
# Which PyTorch build


def driver_cuda_version(nvidia_smi: str) -> tuple[int, int]:
    """The highest CUDA version the driver supports, from ``nvidia-smi``'s banner ("CUDA Version: 12.8")."""
    m = re.search(r"CUDA Version\s*:\s*(\d+)\.(\d+)", nvidia_smi)
    if not m:
        raise CheckFailed("nvidia-smi shows no 'CUDA Version: X.Y': is the NVIDIA driver loaded?")
    return int(m.group(1)), int(m.group(2))


def torch_cuda_tag(driver: tuple[int, int], tags: Sequence[str] = TORCH_CUDA_TAGS) -> str:
    """The newest CUDA build in ``tags`` (``cuXYZ``) that the driver can run."""
    def version(tag: str) -> tuple[int, int]:
        digits = tag[2:]
        return int(digits[:-1]), int(digits[-1])

    usable = [t for t in tags if version(t) <= driver]
    if not usable:
        oldest = min(tags, key=version)
        raise CheckFailed(f"the driver supports CUDA {driver[0]}.{driver[1]}, the oldest PyTorch CUDA build here "
                          f"needs {'.'.join(map(str, version(oldest)))}: update the NVIDIA driver")
    return max(usable, key=version)


# ---------------------------------------------------------------------------------------------
# The GPU tests


def junit_problems(report: str | Path) -> tuple[int, list[str]]:
    """``(tests run, problems)`` of a pytest ``--junitxml`` report: every failure, error and skip
    (on a GPU machine a skipped GPU test means a missing package or device)."""
    try:
        root = ET.parse(report).getroot()
    except (OSError, ET.ParseError) as exc:
        raise CheckFailed(f"no readable test report {report} ({exc}): did pytest start?") from exc
    problems, total = [], 0
    for case in root.iter("testcase"):
        total += 1
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                message = " ".join((node.get("message") or node.text or "").split())[:200]
                problems.append(f"{kind}: {name}: {message}")
    if total == 0:
        problems.append("no GPU test was collected (pytest -m gpu)")
    return total, problems


# ---------------------------------------------------------------------------------------------
# Keyframe index on the GPU


def time_flat_search(keyframes: int, dim: int, queries: int, fp16: bool, k: int = 10, seed: int = 0) -> dict[str, object]:
    """Median and p99 ms of single-query searches of the project's flat index on GPU 0."""
    import numpy as np

    from salad_ros.database import KeyframeDatabase

    rng = np.random.default_rng(seed)
    db = KeyframeDatabase(dim, "flat", fp16=fp16, use_gpu="always")
    for start in range(0, keyframes, 1000):
        x = rng.standard_normal((min(1000, keyframes - start), dim), dtype=np.float32)
        db.add(x / np.linalg.norm(x, axis=1, keepdims=True), np.arange(start, start + len(x), dtype=np.int64))
    q = rng.standard_normal((queries, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    for row in q[:5]:  # warm-up
        db.search(row[None], k)
    times = []
    for row in q:
        t0 = time.perf_counter()
        db.search(row[None], k)
        times.append(1000 * (time.perf_counter() - t0))
    return {"keyframes": keyframes, "dim": dim, "fp16": fp16, "queries": queries, "k": k,
            "median_ms": statistics.median(times), "p99_ms": float(np.percentile(times, 99)),
            "device": "GPU 0"}


# ---------------------------------------------------------------------------------------------
# The table


def table_problems(rows: Sequence[Mapping[str, object]], paths: Sequence[str] = GPU_PATHS,
                   sizes: Sequence[int] = SIZES, batches: Sequence[int] = BATCHES,
                   backbone: str = BACKBONE) -> list[str]:
    """What is missing or wrong in the inference rows: every path at every size and batch, on a
    CUDA device, close enough to the reference."""
    problems = []
    index = {(r["path"], int(r["size"])): r for r in rows if r.get("backbone") == backbone}
    for path in paths:
        for size in sizes:
            row = index.get((path, size))
            if row is None:
                problems.append(f"{path} at {size} px: no row (the path did not run; see the bench output)")
                continue
            if not str(row.get("device", "")).startswith("cuda"):
                problems.append(f"{path} at {size} px ran on {row.get('device')}, not on the GPU")
            missing = [b for b in batches if str(b) not in row["ms_per_image"]]
            if missing:
                problems.append(f"{path} at {size} px: no timing at batch {', '.join(map(str, missing))}")
            if float(row["min_cosine"]) < MIN_COSINE.get(path, 0.999):
                problems.append(f"{path} at {size} px: cosine {float(row['min_cosine']):.6f} to {paths[0]} is below "
                                f"{MIN_COSINE.get(path, 0.999)}")
    return problems


def format_table(rows: Sequence[Mapping[str, object]], search: Mapping[str, object] | str | None,
                 paths: Sequence[str] = GPU_PATHS, sizes: Sequence[int] = SIZES,
                 batches: Sequence[int] = BATCHES, backbone: str = BACKBONE) -> str:
    """One markdown table: ms per image of each path at each size and batch (ViT-B/14), the
    minimum cosine to the first path, then the flat GPU index's single-query search time
    (``search``: the ``search`` subcommand's result, or why it was not measured)."""
    cols = [f"{s} px b{b}" for s in sizes for b in batches]
    lines = [f"| {backbone}, ms per image | " + " | ".join(cols) + f" | min cosine vs {paths[0]} |",
             "|---|" + "---|" * (len(cols) + 1)]
    index = {(r["path"], int(r["size"])): r for r in rows if r.get("backbone") == backbone}
    for path in paths:
        cells, cosines = [], []
        for s in sizes:
            row = index.get((path, s))
            for b in batches:
                ms = row["ms_per_image"].get(str(b)) if row else None
                cells.append("–" if ms is None else f"{float(ms):.2f}")
            if row:
                cosines.append(float(row["min_cosine"]))
        label = next((str(index[(path, s)]["label"]) for s in sizes if (path, s) in index), path)
        cosine = f"{min(cosines):.6f}" if cosines else "–"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {cosine} |")
    if isinstance(search, Mapping):
        store = "fp16" if search.get("fp16") else "fp32"
        what = f"flat GPU index search, {search['keyframes']} keyframes × {search['dim']}-D ({store}), one query"
        text = f"{float(search['median_ms']):.2f} ms median, {float(search['p99_ms']):.2f} ms p99"
    else:
        what, text = "flat GPU index search", f"not measured: {search or 'no result'}"
    lines.append(f"| {what} | {text} |" + " |" * len(cols))
    return "\n".join(lines)


def _load_rows(path: str | Path) -> list[dict[str, object]]:
    data = json.loads(Path(path).read_text())
    return data["rows"] if isinstance(data, dict) else data


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/gpu_check.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("torch-index", help="PyTorch wheel index for this driver")
    s.add_argument("nvidia_smi", help="file holding nvidia-smi's output ('-' for stdin)")
    s = sub.add_parser("junit", help="check a pytest --junitxml report of the GPU tests")
    s.add_argument("report")
    s = sub.add_parser("search", help="time the flat keyframe index on GPU 0")
    s.add_argument("--keyframes", type=int, default=10000)
    s.add_argument("--dim", type=int, default=8448)
    s.add_argument("--queries", type=int, default=200)
    s.add_argument("--fp32", action="store_true", help="store fp32 (default fp16, the node's default)")
    s.add_argument("--json", required=True)
    s = sub.add_parser("table", help="print the GPU table; fail on missing rows")
    s.add_argument("--inference", required=True, help="bench/bench_inference.py --json output")
    s.add_argument("--search", help="'search' output")
    s.add_argument("--search-skipped", metavar="REASON", help="why there is no search time (faiss-gpu not available)")
    args = p.parse_args(argv)
    try:
        if args.command == "torch-index":
            text = sys.stdin.read() if args.nvidia_smi == "-" else Path(args.nvidia_smi).read_text()
            print(TORCH_INDEX.format(tag=torch_cuda_tag(driver_cuda_version(text))))
        elif args.command == "junit":
            total, problems = junit_problems(args.report)
            if problems:
                raise CheckFailed(f"{len(problems)} of {total} GPU tests did not pass:\n  " + "\n  ".join(problems))
            print(f"all {total} GPU tests passed")
        elif args.command == "search":
            if args.keyframes < 1 or args.queries < 1:
                p.error("--keyframes and --queries must be positive")
            result = time_flat_search(args.keyframes, args.dim, args.queries, fp16=not args.fp32)
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
            print(f"flat GPU index: {result['median_ms']:.2f} ms median per query over {args.keyframes} keyframes")
        elif args.command == "table":
            rows = _load_rows(args.inference)
            search = json.loads(Path(args.search).read_text()) if args.search else args.search_skipped
            print(format_table(rows, search))
            problems = table_problems(rows)
            if search is None:
                problems.append("no flat GPU index search time (and no --search-skipped reason)")
            if problems:
                raise CheckFailed("the GPU table is incomplete:\n  " + "\n  ".join(problems))
    except CheckFailed as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
