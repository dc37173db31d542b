"""Offline evaluation: benchmark layouts, Recall@K with known answers, CLI outputs and cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from salad_ros.fileio import file_fingerprint
from salad_ros.model import build_model
from training import evaluate
from training.benchmarks import (
    detect_layout,
    gsv_benchmark,
    load_benchmark,
    load_sequence_benchmark,
    load_utm_benchmark,
    parse_utm,
)


def touch_images(folder: Path, names: list[str], size: int = 16) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        assert cv2.imwrite(str(folder / name), np.full((size, size, 3), 128, np.uint8))


def unit(v) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_recall_at_k_on_hand_made_descriptors():
    db = unit([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    queries = unit([
        [1, 0.1, 0],     # nearest db0 (positive)              -> hit at 1
        [0.1, 1, 0.05],  # ranking db1, db3, ...; positive db3 -> hit at 2
        [0, 0.2, 1],     # ranking db2, db1, db3, db0; positive db0 -> hit at 4
        [0, 0, 1],       # no positive at all                  -> never a hit
    ])
    positives = [np.array([0]), np.array([3]), np.array([0]), np.array([], int)]
    recalls, ranked = evaluate.recall_at_k(queries, db, positives, ks=(1, 2, 3, 4, 10))
    assert recalls == {1: 0.25, 2: 0.5, 3: 0.5, 4: 0.75, 10: 0.75}
    assert ranked.shape == (4, 4)  # K capped by the database size
    assert ranked[0, 0] == 0 and ranked[1, :2].tolist() == [1, 3] and ranked[2, 0] == 2


def test_utm_layout_positives_within_threshold(tmp_path):
    root = tmp_path / "bench"
    touch_images(root / "images" / "test" / "database", ["@100@200@a@.jpg", "@120@200@b@.jpg", "@200@200@c@.jpg"])
    touch_images(root / "images" / "test" / "queries", ["@110@200@q0@.jpg", "@300@300@q1@.jpg", "@190.5@210@q2@.jpg"])
    assert detect_layout(root) == "utm"
    bench = load_benchmark(root)
    assert bench.layout == "utm" and len(bench.db_paths) == 3
    # Sorted by name: q0 (@110) is 10 m from a and b, q2 (@190.5) 13.8 m from c, q1 (@300) far from all.
    assert [Path(p).name.split("@")[3] for p in bench.query_paths] == ["q0", "q2", "q1"]
    assert [p.tolist() for p in bench.positives] == [[0, 1], [2], []]
    assert bench.num_without_positives == 1
    tight = load_utm_benchmark(root, threshold=9.9)
    assert [p.tolist() for p in tight.positives] == [[], [], []]
    assert parse_utm("@1.5@-2@x@y@.jpg") == (1.5, -2.0) and parse_utm("frame_001.jpg") is None
    with pytest.raises(FileNotFoundError):
        load_benchmark(tmp_path / "nothing")


def test_sequence_layout_positives_by_frame_tolerance(tmp_path):
    touch_images(tmp_path / "seq" / "database", [f"summer_{i:05d}.png" for i in range(10)])
    touch_images(tmp_path / "seq" / "queries", [f"winter_{i:05d}.png" for i in (0, 4, 9)])
    assert detect_layout(tmp_path / "seq") == "sequence"
    bench = load_sequence_benchmark(tmp_path / "seq", tolerance=2)
    assert [p.tolist() for p in bench.positives] == [[0, 1, 2], [2, 3, 4, 5, 6], [7, 8, 9]]
    # Names without numbers fall back to sorted position.
    touch_images(tmp_path / "seq2" / "database", ["a.jpg", "b.jpg", "c.jpg"])
    touch_images(tmp_path / "seq2" / "queries", ["x.jpg", "y.jpg"])
    bench = load_benchmark(tmp_path / "seq2", tolerance=0)
    assert [p.tolist() for p in bench.positives] == [[0], [1]]


def test_gsv_heldout_places_as_benchmark(tmp_path):
    import csv

    (tmp_path / "Dataframes").mkdir()
    with open(tmp_path / "Dataframes" / "Town.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["place_id", "year", "month", "northdeg", "city_id", "lat", "lon", "panoid"])
        for pid, n in ((0, 3), (1, 1), (2, 2)):
            for i in range(n):
                w.writerow([pid, 2020, i + 1, 0, "Town", 1.5, 2.5, f"p{pid}{i}"])
    bench = gsv_benchmark(tmp_path, ["Town"])
    assert len(bench.query_paths) == 2 and len(bench.db_paths) == 3  # place 1 has no second image
    assert [p.tolist() for p in bench.positives] == [[0, 1], [2]]
    assert bench.query_paths[0].endswith("Town_0000000_2020_01_000_1.5_2.5_p00.jpg")


def write_known_case(root: Path) -> None:
    """4 distinct random textures; queries are exact copies of database images.

    Queries 0-2 sit where their copy is (right at rank 1); query 3 copies database image 0
    but sits 5 m from database image 3, so rank 1 is wrong and the positive comes later.
    """
    rng = np.random.default_rng(5)
    imgs = [cv2.resize(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), (84, 84), interpolation=cv2.INTER_NEAREST)
            for _ in range(4)]
    db_xy = [(1000, 0), (2000, 0), (3000, 0), (4000, 0)]
    for i, (e, n) in enumerate(db_xy):
        (root / "database").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "database" / f"@{e}@{n}@db{i}@.png"), imgs[i])
    (root / "queries").mkdir(parents=True, exist_ok=True)
    for q, (src, (e, n)) in enumerate([(0, (1003, 0)), (1, (2000, 4)), (2, (2990, 0)), (0, (4005, 0))]):
        cv2.imwrite(str(root / "queries" / f"@{e}@{n}@q{q}@.png"), imgs[src])


def test_evaluate_cli_known_answer_json_figure_and_cache(tmp_path, monkeypatch):
    write_known_case(tmp_path / "bench")
    weights = tmp_path / "w.pth"
    torch.save(build_model("dinov2_vits14", "salad-544", seed=3).state_dict(), weights)
    argv = ["--weights", str(weights), "--backbone", "dinov2_vits14", "--descriptor", "salad-544", "--image-size", "70",
            "--dataset", str(tmp_path / "bench"), "--out", str(tmp_path / "out"), "--num-workers", "0",
            "--device", "cpu", "--batch-size", "3"]
    assert evaluate.main(argv) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["recall@1"] == 0.75 and res["recall@5"] == 1.0 and res["recall@10"] == 1.0
    assert res["num_queries"] == 4 and res["num_database"] == 4 and res["layout"] == "utm"
    assert res["recall_percent"]["R@1"] == 75.0
    assert (res["backbone"], res["descriptor"], res["descriptor_dim"]) == ("dinov2_vits14", "salad-544", 544)
    assert "variant" not in res
    # named as the node names its descriptors: trained weights, not random
    assert res["model_name"] == f"dinov2_vits14/16x32+32@70/{file_fingerprint(weights)}" and res["random_weights"] is False
    png = tmp_path / "out" / "retrievals.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((tmp_path / "out" / "cache").glob("*.npy"))) == 2

    # Second run: descriptors come from the cache (computing them again would fail here).
    def no_compute(*a, **k):
        raise AssertionError("descriptors recomputed despite the cache")

    monkeypatch.setattr(evaluate, "compute_descriptors", no_compute)
    png.unlink()
    assert evaluate.main(argv + ["--figure-queries", "2"]) == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["recall@1"] == 0.75
    assert png.is_file()
    # Rewritten weights (new size/mtime) get a new cache key, so stale descriptors are never reused.
    before = evaluate.weights_identity(str(weights))
    os.utime(weights, ns=(1, 1))
    assert evaluate.weights_identity(str(weights)) != before
    assert evaluate.weights_identity("random") == "random"


def test_evaluate_random_weights_are_flagged_like_the_node_does(tmp_path, capsys):
    write_known_case(tmp_path / "bench")
    argv = ["--weights", "random", "--backbone", "dinov2_vits14", "--descriptor", "salad-544", "--image-size", "70",
            "--dataset", str(tmp_path / "bench"), "--out", str(tmp_path / "out"), "--num-workers", "0",
            "--device", "cpu", "--no-cache", "--figure-queries", "0"]
    assert evaluate.main(argv) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["random_weights"] is True and res["model_name"].endswith("@70/random")
    assert "RANDOM WEIGHTS" in capsys.readouterr().err


def test_evaluate_cli_errors(tmp_path, capsys):
    assert evaluate.main(["--weights", "random", "--dataset", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                          "--backbone", "dinov2_vits14", "--image-size", "70"]) == 2
    assert evaluate.main(["--weights", str(tmp_path / "missing.pth"), "--dataset", str(tmp_path), "--out",
                          str(tmp_path / "o"), "--image-size", "100"]) == 2
    write_known_case(tmp_path / "bench")
    capsys.readouterr()
    assert evaluate.main(["--weights", str(tmp_path / "missing.pth"), "--dataset", str(tmp_path / "bench"), "--out",
                          str(tmp_path / "o"), "--image-size", "70", "--backbone", "dinov2_vits14"]) == 2
    assert capsys.readouterr().err == f"error: parameter 'weights': file not found: {tmp_path / 'missing.pth'}\n"


def test_defaults_are_the_papers_setting_and_variant_is_a_deprecated_alias(capsys):
    args = evaluate.build_parser().parse_args(["--dataset", "d", "--out", "o"])
    paper = ("hub", "dinov2_vitb14", "salad-8448", 322)
    assert (args.weights, args.backbone, args.descriptor, args.image_size) == paper
    with pytest.warns(FutureWarning, match="--variant is deprecated; use --descriptor"):
        args = evaluate.build_parser().parse_args(["--dataset", "d", "--out", "o", "--variant", "salad-544"])
    assert args.descriptor == "salad-544"
    with pytest.raises(SystemExit):
        evaluate.build_parser().parse_args(["--help"])
    help_text = capsys.readouterr().out
    assert "--descriptor" in help_text and "--variant" not in help_text and "--gt-prefix" in help_text


def test_hub_weights_unreachable_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    import urllib.error

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(evaluate, "load_model", offline)
    write_known_case(tmp_path / "bench")
    assert evaluate.main(["--dataset", str(tmp_path / "bench"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--weights hub: cannot fetch the released weights" in err[0]
    assert "dino_salad.ckpt" in err[0]
