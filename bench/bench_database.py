#!/usr/bin/env python3
"""Keyframe-database benchmark: single-query search latency, recall and memory per keyframe.

For each database size it times ``KeyframeDatabase.search`` (one query at a time, as the node
does) for flat fp32, flat fp16 and HNSW (one row per efSearch), against a plain numpy
matrix-vector product + argpartition baseline, and prints one markdown table.

Data (``--data``):
  places  SALAD-like: unit vectors = shared mean direction + a smooth per-place field along a
          trajectory (similar over ~16 keyframes) + per-frame noise; queries are revisits of
          random keyframes (cosine ~0.7 to the revisited keyframe, ~0.25 to unrelated ones).
  regions like places plus a coarse "region" field (anchors every 512 keyframes: same building
          or street), so unrelated keyframes of the same region score ~0.3 and others ~0.15.
          Multi-scale structure like this is what lets a graph search (HNSW) navigate.
  random  i.i.d. random unit vectors and queries: no structure, the worst case for HNSW.

Example (the 100k rows need ~8 GB of RAM and a long HNSW build at 8448-D)::

    .venv/bin/python bench/bench_database.py --sizes 1000,10000,100000
    .venv/bin/python bench/bench_database.py --sizes 10000 --methods flat,flat-fp16 --queries 500
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from salad_ros.database import KeyframeDatabase  # noqa: E402

METHODS = ("numpy", "flat", "flat-fp16", "hnsw", "hnsw-fp16")
# Squared weights of the places model: mean direction, place field, session field, noise.
WEIGHTS = (0.25, 0.45, 0.2, 0.1)
# regions model: mean direction, region field, place field, session field, noise.
REGION_WEIGHTS = (0.15, 0.15, 0.4, 0.2, 0.1)
REGION_EVERY = 512
# Keyframes between random anchors of the smooth fields: with keyframes ~0.5 m apart, a place
# stays recognisable over several metres, so each query has a neighbourhood of similar keyframes.
ANCHOR_EVERY = 16


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _anchor(seed: int, field: int, k: int, dim: int) -> np.ndarray:
    # one generator per anchor: any chunk of the trajectory can be made without the others
    return _unit(np.random.default_rng([seed, field, k]).standard_normal(dim, dtype=np.float32))


def _field(seed: int, field: int, idx: np.ndarray, dim: int, every: int = ANCHOR_EVERY) -> np.ndarray:
    """Smooth unit field along the trajectory: anchors every ``every`` keyframes, lerped."""
    pos = idx / every
    k0 = np.floor(pos).astype(np.int64)
    frac = (pos - k0).astype(np.float32)[:, None]
    cache = {k: _anchor(seed, field, k, dim) for k in range(int(k0.min()), int(k0.max()) + 2)}
    a = np.stack([cache[k] for k in k0])
    b = np.stack([cache[k + 1] for k in k0])
    return _unit((1 - frac) * a + frac * b)


def make_data(n: int, dim: int, nq: int, kind: str, seed: int, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(database float32[n, dim], queries float32[nq, dim]), generated chunk by chunk."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, dim), dtype=np.float32)
    if kind == "random":
        for i0 in range(0, n, chunk):
            m = min(chunk, n - i0)
            x[i0:i0 + m] = _unit(rng.standard_normal((m, dim), dtype=np.float32))
        return x, _unit(rng.standard_normal((nq, dim), dtype=np.float32))
    w = [np.float32(np.sqrt(v)) for v in (REGION_WEIGHTS if kind == "regions" else (WEIGHTS[0], 0.0, *WEIGHTS[1:]))]
    mu = _anchor(seed, 0, 0, dim)

    def shared(idx: np.ndarray) -> np.ndarray:  # what a revisit has in common with the keyframe
        out = w[0] * mu + w[2] * _field(seed, 1, idx, dim)
        return out + w[1] * _field(seed, 3, idx, dim, REGION_EVERY) if w[1] else out

    for i0 in range(0, n, chunk):
        idx = np.arange(i0, min(n, i0 + chunk))
        noise = _unit(rng.standard_normal((len(idx), dim), dtype=np.float32))
        x[idx] = _unit(shared(idx) + w[3] * _field(seed, 2, idx, dim) + w[4] * noise)
    revisit = np.sort(rng.choice(n, size=nq, replace=nq > n))
    fresh = _unit(rng.standard_normal((nq, dim), dtype=np.float32))  # another session's appearance
    noise = _unit(rng.standard_normal((nq, dim), dtype=np.float32))
    q = _unit(shared(revisit) + w[3] * fresh + w[4] * noise)
    return x, q.astype(np.float32)


def timed(fn, queries: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    out, times = [], []
    for q in queries:
        t0 = time.perf_counter()
        out.append(fn(q))
        times.append(time.perf_counter() - t0)
    return out, np.array(times) * 1e3


def numpy_search(x: np.ndarray, k: int):
    def run(q: np.ndarray) -> np.ndarray:
        s = x @ q
        top = np.argpartition(-s, k)[:k] if len(s) > k else np.arange(len(s))
        return top[np.argsort(-s[top])]
    return run


def top1(found: list[np.ndarray], truth: list[np.ndarray]) -> float:
    return float(np.mean([len(f) > 0 and f[0] == t[0] for f, t in zip(found, truth)]))


def recall(found: list[np.ndarray], truth: list[np.ndarray], k: int) -> float:
    return float(np.mean([len(set(f[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000", help="comma-separated keyframe counts")
    ap.add_argument("--dim", type=int, default=8448, help="descriptor dimension (SALAD: 8448)")
    ap.add_argument("--queries", type=int, default=200, help="single queries timed per row")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--methods", default="numpy,flat,flat-fp16,hnsw", help=f"subset of {','.join(METHODS)}")
    ap.add_argument("--data", choices=("places", "regions", "random"), default="places")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=80)
    ap.add_argument("--ef-search", default="32,64,128", help="HNSW efSearch values, one row each")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = set(methods) - set(METHODS)
    if bad:
        ap.error(f"unknown methods {sorted(bad)}; choose from {METHODS}")
    efs = [int(v) for v in args.ef_search.split(",")]
    k = args.k
    rows: list[dict] = []
    header = ("| keyframes | method | build s | median ms | p99 ms | recall@10 | top-1 | bytes/keyframe |\n"
              "|---:|---|---:|---:|---:|---:|---:|---:|")
    print(f"# dim={args.dim} data={args.data} queries={args.queries} k={k}", flush=True)
    print(header, flush=True)

    def emit(row: dict) -> None:
        rows.append(row)
        print(f"| {row['n']} | {row['method']} | {row['build_s']:.1f} | {row['median_ms']:.2f} | "
              f"{row['p99_ms']:.2f} | {row['recall']:.3f} | {row['top1']:.3f} | {row['bytes_per_kf']:.0f} |", flush=True)

    for n in (int(s) for s in args.sizes.split(",")):
        x, q = make_data(n, args.dim, args.queries, args.data, args.seed)
        truth, t_np = timed(numpy_search(x, k), q)  # exact answers, and the baseline's timing
        if "numpy" in methods:
            emit({"n": n, "method": "numpy matmul", "build_s": 0.0, "median_ms": float(np.median(t_np)),
                  "p99_ms": float(np.percentile(t_np, 99)), "recall": 1.0, "top1": 1.0,
                  "bytes_per_kf": x.nbytes / n})
        stamps = np.arange(n, dtype=np.int64)
        for method in methods:
            if method == "numpy":
                continue
            kind = "hnsw" if method.startswith("hnsw") else "flat"
            db = KeyframeDatabase(args.dim, kind, method.endswith("fp16"), hnsw_m=args.hnsw_m,
                                  hnsw_ef_construction=args.ef_construction)
            t0 = time.perf_counter()
            for i0 in range(0, n, 8192):
                db.add(x[i0:i0 + 8192], stamps[i0:i0 + 8192])
            build = time.perf_counter() - t0
            per_kf = db.memory_report()["per_keyframe"]
            for ef in efs if kind == "hnsw" else [None]:
                label = f"{method} ({db.backend})"
                if ef is not None:
                    db.set_search_params(hnsw_ef_search=ef)
                    label = f"{method} ef={ef} M={args.hnsw_m} ({db.backend})"
                db.search(q[:1], k)  # warm-up
                found, t = timed(lambda v, db=db: db.search(v, k)[0][0], q)
                emit({"n": n, "method": label, "build_s": build, "median_ms": float(np.median(t)),
                      "p99_ms": float(np.percentile(t, 99)), "recall": recall(found, truth, k),
                      "top1": top1(found, truth), "bytes_per_kf": per_kf})
            del db
            gc.collect()
        del x
        gc.collect()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
