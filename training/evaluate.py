"""Recall@K of a SALAD model on a VPR benchmark, with cached descriptors and a retrieval figure.

    python -m training.evaluate --weights hub --dataset /data/mapillary \\
        --gt-prefix datasets/msls_val/msls_val --out results/msls_val
    python -m training.evaluate --weights weights.pth --backbone dinov2_vitb14 \\
        --image-size 322 --dataset /data/pitts30k/images/test --out results/pitts30k

Defaults are the paper's setting: the released weights (``--weights hub``), ViT-B/14,
the 8448-D descriptor, 322 x 322 input. ``--gt-prefix`` reads the GSV-Cities protocol lists
(:mod:`training.gsv_lists`); without it, folder layouts (:mod:`training.benchmarks`).

Writes ``<out>/results.json`` (``recall@1``, ``recall@5``, ... as fractions in [0, 1]),
``<out>/retrievals.png`` (the first queries and their top-3, green = right, red = wrong) and
caches descriptors under ``<out>/cache`` (``--cache-dir``), keyed by weights file (path, size,
modification time), model shape, image size and the image list. ``--submission FILE`` writes
the MSLS-challenge prediction file (lists without ground truth give no recalls).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from salad_ros.backends import ModelConfig, check_weights_file, is_random_model_name
from salad_ros.fileio import file_fingerprint, write_bytes_atomic
from salad_ros.model import (
    BACKBONES,
    SALAD_RELEASE_URL,
    VARIANTS,
    DinoSalad,
    input_size,
    load_model,
    preprocess,
    resolve_device,
    weights_file,
)

from .benchmarks import LAYOUTS, Benchmark, load_benchmark
from .cli import DeprecatedAlias
from .data import read_rgb, worker_init

log = logging.getLogger("training.evaluate")

DEFAULT_KS = (1, 5, 10, 20)
#: Database keys per query in an MSLS-challenge submission (what the paper's code writes).
SUBMISSION_K = 25


class ImageList(Dataset):
    """Images by path, preprocessed exactly as at inference; unreadable ones become black."""

    def __init__(self, paths: Sequence[str], size: int) -> None:
        self.paths = list(paths)
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        img = read_rgb(self.paths[i])
        ok = img is not None
        if not ok:  # keeps indices aligned with the benchmark; counted and reported by the caller
            img = np.zeros((self.size, self.size, 3), np.uint8)
        return preprocess(img, self.size)[0], ok


@torch.no_grad()
def compute_descriptors(
    model: DinoSalad,
    paths: Sequence[str],
    image_size: int,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    num_workers: int = 0,
    amp: bool = False,
    desc: str = "descriptors",
    show_progress: bool = True,
) -> tuple[np.ndarray, list[str]]:
    """Unit-norm float32 descriptors ``[N, D]`` of ``paths`` and the list of unreadable files."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loader = DataLoader(ImageList(paths, image_size), batch_size=batch_size, num_workers=num_workers,
                        worker_init_fn=worker_init, pin_memory=device.type == "cuda")
    out = np.zeros((len(paths), model.output_dim), np.float32)
    bad: list[str] = []
    autocast = torch.autocast("cuda", dtype=torch.float16) if amp and device.type == "cuda" else nullcontext()
    i = 0
    for images, ok in tqdm(loader, desc=desc, leave=False, disable=not show_progress):
        with autocast:
            d = model(images.to(device, non_blocking=True))
        d = torch.nn.functional.normalize(d.float(), dim=-1)  # re-normalise after a half-precision pass
        out[i:i + len(d)] = d.cpu().numpy()
        bad.extend(p for p, good in zip(paths[i:i + len(d)], ok.tolist()) if not good)
        i += len(d)
    model.train(was_training)
    return out, bad


def search(query: np.ndarray, database: np.ndarray, k: int, with_scores: bool = False):
    """Database indices ranked by inner product, ``[num_queries, min(k, len(database))]``; with
    ``with_scores`` also their inner products (cosine similarities of unit descriptors)."""
    import faiss  # imported here: only evaluation needs it

    index = faiss.IndexFlatIP(database.shape[1])
    index.add(np.ascontiguousarray(database, dtype=np.float32))
    scores, ranked = index.search(np.ascontiguousarray(query, dtype=np.float32), min(k, len(database)))
    return (ranked, scores) if with_scores else ranked


def recalls_from_ranking(ranked: np.ndarray, positives: Sequence[np.ndarray], ks: Sequence[int]) -> dict[int, float]:
    """Recall@K: the fraction of queries with any positive among their top K retrievals.

    Queries without any positive count as failures (they stay in the denominator), as in the
    GSV-Cities protocol; K beyond the ranking's width is capped at it.
    """
    if len(positives) != len(ranked):
        raise ValueError(f"{len(ranked)} ranked queries but {len(positives)} positive lists")
    if not len(ranked):
        return {k: 0.0 for k in ks}
    hits = np.zeros(ranked.shape, bool)
    for qi, pos in enumerate(positives):
        hits[qi] = np.isin(ranked[qi], pos)
    first_hit_within = np.cumsum(hits, axis=1) > 0  # [q, k]: a positive among the top k+1
    return {k: float(first_hit_within[:, min(k, ranked.shape[1]) - 1].mean()) for k in ks}


def recall_at_k(
    query: np.ndarray, database: np.ndarray, positives: Sequence[np.ndarray], ks: Sequence[int] = DEFAULT_KS
) -> tuple[dict[int, float], np.ndarray]:
    """Recall@K by inner product (see :func:`recalls_from_ranking`) and the ranking ``[num_queries, max K]``."""
    if len(positives) != len(query):
        raise ValueError(f"{len(query)} query descriptors but {len(positives)} positive lists")
    ranked = search(query, database, max(ks))
    return recalls_from_ranking(ranked, positives, ks), ranked


def weights_identity(weights: str | None) -> str:
    """What identifies a weights source for caching: path + size + mtime for files."""
    if weights is None or weights in ("random", "hub", "hub:dinov2"):
        return str(weights)
    st = os.stat(weights)
    return f"{Path(weights).resolve()}:{st.st_size}:{st.st_mtime_ns}"


def cache_key(weights_id: str, model: DinoSalad, image_size: int, paths: Sequence[str]) -> str:
    h = hashlib.sha1()
    h.update(f"{weights_id}|{model.variant}|{image_size}|".encode())
    for p in paths:
        h.update(p.encode() + b"\0")
    return h.hexdigest()[:20]


def cached_descriptors(cache_dir: Path | None, key: str | None, compute) -> tuple[np.ndarray, list[str], bool]:
    """Load ``<cache_dir>/<key>.npy`` or call ``compute()`` and store its result there."""
    if cache_dir is None or key is None:
        return (*compute(), False)
    file = cache_dir / f"{key}.npy"
    if file.is_file():
        return np.load(file), [], True
    desc, bad = compute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp.npy")
    np.save(tmp, desc)
    os.replace(tmp, file)  # atomic: an interrupted run never leaves a truncated cache entry
    return desc, bad, False


def benchmark_descriptors(
    model: DinoSalad,
    bench: Benchmark,
    image_size: int,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    num_workers: int = 0,
    amp: bool = False,
    cache_dir: Path | None = None,
    weights_id: str | None = None,
    show_progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Database and query descriptors (cached when ``cache_dir`` and ``weights_id`` are given) and unreadable files."""
    bad: list[str] = []
    descs = []
    for part, paths in (("database", bench.db_paths), ("queries", bench.query_paths)):
        key = cache_key(weights_id, model, image_size, paths) if weights_id is not None else None
        d, b, hit = cached_descriptors(cache_dir, key, lambda paths=paths, part=part: compute_descriptors(
            model, paths, image_size, device, batch_size, num_workers, amp, f"{bench.name} {part}", show_progress))
        if hit:
            log.info("%s %s: descriptors from cache %s", bench.name, part, cache_dir / f"{key}.npy")
        descs.append(d)
        bad.extend(b)
    if bad:
        log.warning("%s: %d unreadable images replaced by black frames, e.g. %s", bench.name, len(bad), bad[:3])
    return descs[0], descs[1], bad


def score_benchmark(
    bench: Benchmark, ranked: np.ndarray, bad: Sequence[str], ks: Sequence[int] = DEFAULT_KS
) -> dict:
    """Recall@K from a ranking (when the benchmark has ground truth) and the counts of the run."""
    out: dict = {}
    if bench.ground_truth:
        out.update({f"recall@{k}": r for k, r in recalls_from_ranking(ranked, bench.positives, ks).items()})
    out.update({
        "num_queries": len(bench.query_paths),
        "num_database": len(bench.db_paths),
        "queries_without_positives": bench.num_without_positives if bench.ground_truth else None,
        "unreadable_images": len(bad),
    })
    if bench.ground_truth and bench.num_without_positives:
        log.warning("%s: %d queries have no positive; they count as failures", bench.name, bench.num_without_positives)
    return out


def evaluate_benchmark(
    model: DinoSalad,
    bench: Benchmark,
    image_size: int,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    num_workers: int = 0,
    ks: Sequence[int] = DEFAULT_KS,
    amp: bool = False,
    cache_dir: Path | None = None,
    weights_id: str | None = None,
    show_progress: bool = True,
) -> tuple[dict, np.ndarray]:
    """Descriptors (cached when ``cache_dir`` and ``weights_id`` are given) and Recall@K."""
    db, queries, bad = benchmark_descriptors(model, bench, image_size, device, batch_size, num_workers, amp,
                                             cache_dir, weights_id, show_progress)
    ranked = search(queries, db, max(ks))
    return score_benchmark(bench, ranked, bad, ks), ranked


def write_submission(path: str | Path, bench: Benchmark, ranked: np.ndarray) -> Path:
    """The MSLS-challenge prediction file: per query, its key and the ranked database keys.

    A key is the image's file name without extension; one line per query, space-separated.
    """
    db_keys = [Path(p).stem for p in bench.db_paths]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (" ".join([Path(q).stem, *(db_keys[j] for j in row)]) + "\n" for q, row in zip(bench.query_paths, ranked))
    write_bytes_atomic(path, "".join(lines).encode())
    return path


def format_table(name: str, results: dict, ks: Sequence[int] = DEFAULT_KS) -> str:
    """A small fixed-width table of Recall@K in percent."""
    head = f"{'dataset':<24}" + "".join(f"{'R@' + str(k):>8}" for k in ks)
    row = f"{name[:24]:<24}" + "".join(f"{100 * results[f'recall@{k}']:>8.2f}" for k in ks)
    return f"{head}\n{row}"


def save_retrieval_figure(bench: Benchmark, ranked: np.ndarray, path: str | Path, num_queries: int = 8, top: int = 3,
                          scores: np.ndarray | None = None) -> Path:
    """PNG of the first ``num_queries`` queries and their top ``top`` retrievals: each titled
    with its rank, cosine similarity (``scores``, same shape as ``ranked``) and right/wrong
    (green/red frame and text), and the file name, in print-readable sizes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = min(num_queries, len(bench.query_paths))
    top = min(top, ranked.shape[1])
    fig = Figure(figsize=(3.2 * (top + 1), 3.0 * n + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, top + 1, squeeze=False)
    for qi in range(n):
        positives = set(bench.positives[qi].tolist())
        cells = [(bench.query_paths[qi], f"query {qi}", "black")]
        for r in range(top):
            j = int(ranked[qi, r])
            right = j in positives
            score = "" if scores is None else f"  cos {float(scores[qi, r]):.3f}"
            cells.append((bench.db_paths[j], f"#{r + 1}{score}  {'RIGHT' if right else 'WRONG'}",
                          "#1a7f37" if right else "#c62828"))
        for ax, (p, title, colour) in zip(axes[qi], cells):
            img = read_rgb(p)
            ax.imshow(img if img is not None else np.zeros((8, 8, 3), np.uint8))
            ax.set_title(title, fontsize=11, color=colour, fontweight="bold" if colour != "black" else "normal", pad=3)
            ax.set_xlabel(_short_name(Path(p).name), fontsize=8, color="#333333", labelpad=2)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(5 if colour != "black" else 1)
    fig.suptitle(f"{bench.name}: first {n} queries, top {top} retrievals (green frame = a true positive, "
                 "red = not; cos = cosine similarity)", fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _short_name(name: str, width: int = 34) -> str:
    """A file name fitted to ``width`` characters, keeping its start and end."""
    return name if len(name) <= width else name[: width // 2 - 1] + "\u2026" + name[-(width // 2):]


def build_parser() -> argparse.ArgumentParser:
    """The command line; defaults are the paper's evaluation setting."""
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", default="hub",
                   help="weights file (flat or training checkpoint), 'hub' for the released SALAD weights, 'random'")
    p.add_argument("--backbone", default="dinov2_vitb14", choices=sorted(BACKBONES))
    p.add_argument("--descriptor", default="salad-8448", choices=sorted(VARIANTS), help="descriptor variant")
    p.add_argument("--variant", dest="descriptor", choices=sorted(VARIANTS), action=DeprecatedAlias,
                   default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--image-size", type=int, default=322, help="square input size, multiple of 14 (paper: 322)")
    p.add_argument("--dataset", required=True,
                   help="benchmark root: database/ + queries/, or the folder the --gt-prefix image paths start from")
    p.add_argument("--gt-prefix", default=None, metavar="PREFIX",
                   help="GSV-Cities protocol lists PREFIX_dbImages.npy, PREFIX_qImages.npy and PREFIX_gt.npy "
                        "(or PREFIX_qIdx.npy + PREFIX_pIdx.npy)")
    p.add_argument("--skip-missing", action="store_true",
                   help="--gt-prefix: leave out listed images missing under --dataset (reported) instead of failing")
    p.add_argument("--layout", default="auto", choices=LAYOUTS)
    p.add_argument("--threshold", type=float, default=25.0, help="utm layout: positive radius in metres")
    p.add_argument("--tolerance", type=int, default=10, help="sequence layout: positive frame distance")
    p.add_argument("--out", required=True, help="output folder (results.json, retrievals.png, cache/)")
    p.add_argument("--submission", default=None, metavar="FILE",
                   help="also write an MSLS-challenge prediction file (query key, then the top database keys)")
    p.add_argument("--submission-k", type=int, default=SUBMISSION_K, help="database keys per query in --submission")
    p.add_argument("--cache-dir", default=None, help="descriptor cache (default <out>/cache)")
    p.add_argument("--no-cache", action="store_true", help="always recompute descriptors")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--amp", action="store_true", help="fp16 autocast on CUDA")
    p.add_argument("--ks", default="1,5,10,20", help="comma-separated K values")
    p.add_argument("--figure-queries", type=int, default=8, help="queries shown in retrievals.png (0: no figure)")
    return p


def parse_ks(text: str) -> list[int]:
    """Sorted distinct K values from ``"1,5,10"``; refuses non-positive ones."""
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        ks = []
    if not ks or ks[0] < 1:
        raise ValueError(f"--ks must list positive integers, got '{text}'")
    return ks


def prepare(args: argparse.Namespace) -> tuple[Benchmark, DinoSalad, torch.device, list[int]]:
    """Check the arguments, load the benchmark and the model; raises on bad input."""
    input_size(args.image_size)
    ks = parse_ks(args.ks)
    if args.submission_k < 1:
        raise ValueError(f"--submission-k must be >= 1, got {args.submission_k}")
    bench = load_benchmark(args.dataset, args.layout, args.threshold, args.tolerance, args.gt_prefix, args.skip_missing)
    if not bench.ground_truth and not args.submission:
        raise ValueError(f"{bench.name}: the lists carry no ground truth (no _gt.npy or _pIdx.npy): "
                         "pass --submission FILE to write the challenge's prediction file")
    device = resolve_device(args.device)
    weights = None if args.weights == "random" else args.weights
    if weights is not None:
        check_weights_file(ModelConfig(weights=weights))  # the node's and replay's check (ConfigError)
    try:
        model = load_model(weights, backbone=args.backbone, variant=args.descriptor, device=device)
    except OSError as exc:
        if weights != "hub":
            raise
        raise RuntimeError(f"--weights hub: cannot fetch the released weights ({exc}); download "
                           f"{SALAD_RELEASE_URL} and pass the file") from exc
    return bench, model, device, ks


def run(args: argparse.Namespace, bench: Benchmark, model: DinoSalad, device: torch.device, ks: list[int],
        out_dir: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    """Descriptors, ranking (indices and cosine similarities), recalls and (with
    ``--submission``) the prediction file."""
    cache_dir = None if args.no_cache else Path(args.cache_dir or out_dir / "cache")
    weights_id = weights_identity(None if args.weights == "random" else args.weights) if cache_dir else None
    db, queries, bad = benchmark_descriptors(model, bench, args.image_size, device, args.batch_size,
                                             args.num_workers, args.amp, cache_dir, weights_id)
    ranked, scores = search(queries, db, max(max(ks), args.submission_k if args.submission else 0), with_scores=True)
    results = score_benchmark(bench, ranked[:, :max(ks)], bad, ks)
    if args.submission:
        sub = write_submission(args.submission, bench, ranked[:, :args.submission_k])
        log.info("MSLS-challenge prediction file (top %d per query): %s", min(args.submission_k, len(db)), sub)
    return results, ranked[:, :max(ks)], scores[:, :max(ks)]


def build_report(args: argparse.Namespace, bench: Benchmark, model: DinoSalad, results: dict, ks: list[int]) -> dict:
    """``results.json``: recalls, counts, the benchmark's definition and the model (named as the
    node and replay name it, with the same notion of random weights)."""
    weights = None if args.weights == "random" else args.weights
    report = dict(results)
    if bench.ground_truth:
        report["recall_percent"] = {f"R@{k}": round(100 * results[f"recall@{k}"], 2) for k in ks}
    report.update({"dataset": str(Path(args.dataset).resolve()), "name": bench.name, "layout": bench.layout})
    if bench.layout == "utm":
        report["threshold_m"] = args.threshold
    elif bench.layout == "sequence":
        report["tolerance_frames"] = args.tolerance
    else:
        report.update(bench.info)
    model_name = f"{model.variant}@{args.image_size}/{file_fingerprint(weights_file(weights, model.backbone_name))}"
    report.update({
        "weights": args.weights,
        "model_name": model_name,
        "random_weights": is_random_model_name(model_name),
        "backbone": model.backbone_name,
        "descriptor": args.descriptor,
        "descriptor_dim": model.output_dim,
        "image_size": args.image_size,
    })
    if args.submission:
        report.update({"submission": str(Path(args.submission).resolve()), "submission_k": args.submission_k})
    return report


def format_counts(report: dict) -> str:
    """One line: queries, database images, queries without positives and any skipped images."""
    line = f"{report['name']}: {report['num_queries']} queries, {report['num_database']} database images"
    if report.get("queries_without_positives"):
        line += f", {report['queries_without_positives']} queries without positives (counted as failures)"
    if report.get("skipped_database") or report.get("skipped_queries"):
        line += (f"; SKIPPED (--skip-missing) {report['skipped_database']} database and "
                 f"{report['skipped_queries']} query images missing under the root: not the full benchmark")
    return line


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (console script ``salad_evaluate``)."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is noise here
    try:
        bench, model, device, ks = prepare(args)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("%s (%s layout): %d queries, %d database images; model %s at %d px",
             bench.name, bench.layout, len(bench.query_paths), len(bench.db_paths), model.variant, args.image_size)
    results, ranked, scores = run(args, bench, model, device, ks, out_dir)
    report = build_report(args, bench, model, results, ks)
    if report["random_weights"]:
        print("WARNING: RANDOM WEIGHTS - these recalls are not a measure of SALAD", file=sys.stderr)
    if bench.ground_truth:
        print(format_table(bench.name, report, ks))
    print(format_counts(report))
    (out_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.figure_queries > 0 and bench.ground_truth:
        fig = save_retrieval_figure(bench, ranked, out_dir / "retrievals.png", args.figure_queries, scores=scores)
        log.info("retrieval figure: %s", fig)
    log.info("results: %s", out_dir / "results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
