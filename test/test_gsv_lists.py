"""GSV-Cities protocol lists (``<prefix>_dbImages/_qImages/_gt/_qIdx/_pIdx.npy``): safe reading,
cross-checks, Recall@K with answers known by construction, MSLS-challenge submissions, training's
``--val-dataset ROOT PREFIX``.

Images are distinct random textures; every query is an exact copy of one database image, so its
rank-1 retrieval is that image whatever the (random) model weights. Positive lists are chosen
by the tests, some deliberately wrong, so each recall is known in advance.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shlex
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from salad_ros.model import build_model
from training import evaluate
from training import train as train_mod
from training.benchmarks import load_benchmark
from training.gsv_lists import ListError, load_gsv_lists, read_lists, read_npy

MODEL = ["--backbone", "dinov2_vits14", "--descriptor", "salad-544", "--image-size", "70", "--device", "cpu",
         "--num-workers", "0", "--batch-size", "4"]


def texture(i: int) -> np.ndarray:
    rng = np.random.default_rng(100 + i)
    return cv2.resize(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), (84, 84), interpolation=cv2.INTER_NEAREST)


def object_array(rows: list) -> np.ndarray:
    """What the GSV-Cities repositories save as ``_gt`` / ``_pIdx``: an object array (a pickle in the .npy)."""
    arr = np.empty(len(rows), dtype=object)
    for i, r in enumerate(rows):
        arr[i] = r
    return arr


def write_lists(prefix: Path, db: list[str], qs: list[str], gt: list | None = None,
                q_idx: list[int] | None = None, p_idx: list | None = None) -> Path:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    np.save(f"{prefix}_dbImages.npy", np.array(db))
    np.save(f"{prefix}_qImages.npy", np.array(qs))
    if gt is not None:
        np.save(f"{prefix}_gt.npy", object_array([np.asarray(g, np.int64) for g in gt]))
    if q_idx is not None:
        np.save(f"{prefix}_qIdx.npy", np.asarray(q_idx, np.int64))
    if p_idx is not None:
        np.save(f"{prefix}_pIdx.npy", object_array([np.asarray(p, np.int64) for p in p_idx]))
    return prefix


def write_images(root: Path, db: int, copies: dict[str, int]) -> tuple[list[str], list[str]]:
    """``db`` database textures and query images ``{relative name: copied database index}``."""
    db_rel = [f"ref/seq1/db_{i:03d}.png" for i in range(db)]
    for i, rel in enumerate(db_rel):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / rel), texture(i))
    for rel, src in copies.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / rel), texture(src))
    return db_rel, list(copies)


@pytest.fixture
def known(tmp_path):
    """5 database textures, 4 queries copying db 0-3; q3's only positive is db 4 (wrong on purpose).

    R@1 = 3/4 (q3 retrieves db 3 first), R@5 = 1 (the whole database is within the top 5).
    """
    root = tmp_path / "data"
    db, qs = write_images(root, 5, {f"query/q_{i}.png": i for i in range(4)})
    prefix = write_lists(tmp_path / "lists" / "toy" / "toy", db, qs, gt=[[0], [1, 2], [2], [4]])
    return root, prefix, db, qs


def run_cli(tmp_path, weights: Path, *extra: str, out: str = "out") -> tuple[int, dict]:
    rc = evaluate.main(["--weights", str(weights), *MODEL, "--out", str(tmp_path / out), "--figure-queries", "2",
                        *extra])
    res_file = tmp_path / out / "results.json"
    return rc, json.loads(res_file.read_text()) if rc == 0 else {}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "w.pth"
    torch.save(build_model("dinov2_vits14", "salad-544", seed=7).state_dict(), path)
    return path


# ----------------------------------------------------------------------------- reading the .npy files safely


def test_object_array_gt_is_a_pickle_read_back_by_the_restricted_reader(tmp_path):
    rows = [np.array([3, 1], np.int64), np.array([], np.int64), np.array([7], np.int32), np.array([])]
    np.save(tmp_path / "x_gt.npy", object_array(rows))
    with pytest.raises(ValueError, match="allow_pickle"):
        np.load(tmp_path / "x_gt.npy", allow_pickle=False)  # proves the format: a pickle inside the .npy
    got = read_npy(tmp_path / "x_gt.npy")
    assert got.dtype == object and [r.tolist() for r in got] == [[3, 1], [], [7], []]

    # Files written by numpy 1 (the released lists: pickle protocol 3) name numpy.core.multiarray;
    # protocol 2 stores bytes through _codecs.encode(..., "latin1"). Both are admitted.
    from numpy.lib import format as npy_format

    for protocol in (2, 3):
        with open(tmp_path / "old_gt.npy", "wb") as f:
            npy_format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": (4,)})
            blob = pickle.dumps(object_array(rows), protocol=protocol)
            assert b"numpy._core.multiarray\n_reconstruct" in blob
            f.write(blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
        assert [r.tolist() for r in read_npy(tmp_path / "old_gt.npy")] == [[3, 1], [], [7], []]
    # Image lists are plain unicode arrays, read without any unpickling.
    np.save(tmp_path / "x_qImages.npy", np.array(["a/b.jpg", "c.png"]))
    assert read_npy(tmp_path / "x_qImages.npy").tolist() == ["a/b.jpg", "c.png"]


class Payload:
    """A pickle that runs a shell command when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, weights, capsys):
    root = tmp_path / "data"
    db, qs = write_images(root, 2, {"q.png": 0})
    marker = tmp_path / "PWNED"
    prefix = write_lists(tmp_path / "evil", db, qs)
    np.save(f"{prefix}_gt.npy", object_array([Payload(marker)]), allow_pickle=True)

    with pytest.raises(ListError, match=r"refused to load '(posix|os)\.system'"):
        read_npy(f"{prefix}_gt.npy")
    assert not marker.exists()
    rc = evaluate.main(["--weights", str(weights), *MODEL, "--dataset", str(root), "--gt-prefix", str(prefix),
                        "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "refused to load" in err and len(err.splitlines()) == 1
    assert not marker.exists()
    # The payload is real: numpy's own unrestricted loader runs it.
    np.load(f"{prefix}_gt.npy", allow_pickle=True)
    assert marker.exists()


BAD_LISTS = {
    # name: (how to spoil the good lists, expected words in the one-line error)
    "lengths disagree": (lambda p, db, qs: write_lists(p, db, qs, gt=[[0], [1]]), "2 positive lists but 4 evaluated"),
    "gt index out of range": (lambda p, db, qs: write_lists(p, db, qs, gt=[[0], [1], [9], [2]]),
                              "entry 2 holds index 9, out of range for 5 database images"),
    "negative index": (lambda p, db, qs: write_lists(p, db, qs, gt=[[0], [-1], [2], [3]]), "holds index -1"),
    "qIdx out of range": (lambda p, db, qs: write_lists(p, db, qs, q_idx=[0, 4], p_idx=[[0], [1]]),
                          "query index 4 out of range for 4 listed queries"),
    "pIdx vs qIdx": (lambda p, db, qs: write_lists(p, db, qs, q_idx=[0, 1], p_idx=[[0], [1], [2]]),
                     "3 positive lists but 2 evaluated queries (4 listed)"),
    "strings in gt": (lambda p, db, qs: np.save(f"{write_lists(p, db, qs)}_gt.npy",
                                                object_array([np.array(["x"])] * 4)), "entry 0 is a <U1 array"),
    "floats in gt": (lambda p, db, qs: np.save(f"{write_lists(p, db, qs)}_gt.npy",
                                               object_array([np.array([0.5])] * 4)), "entry 0 is a float64 array"),
    "python lists in gt": (lambda p, db, qs: np.save(f"{write_lists(p, db, qs)}_gt.npy", object_array([[0], [1]] * 2)),
                           "entry 0 is a list, not an array of integer indices"),
    "empty qIdx": (lambda p, db, qs: write_lists(p, db, qs, q_idx=[], p_idx=[]), "the query set is empty"),
    "empty qImages": (lambda p, db, qs: write_lists(p, db, [], gt=[]), "the query set is empty"),
    "no dbImages": (lambda p, db, qs: (write_lists(p, db, qs, gt=[[0]] * 4), os.remove(f"{p}_dbImages.npy")),
                    "no bad_dbImages.npy"),
    "numbers as image paths": (lambda p, db, qs: (write_lists(p, db, qs, gt=[[0]] * 4),
                                                  np.save(f"{p}_qImages.npy", np.arange(4))),
                               "expected image paths (strings), got an array of int64"),
}


@pytest.mark.parametrize("case", sorted(BAD_LISTS))
def test_bad_lists_give_one_clear_error_and_exit_2(case, known, tmp_path, weights, capsys):
    root, _, db, qs = known
    spoil, words = BAD_LISTS[case]
    prefix = tmp_path / "lists" / "bad"
    spoil(prefix, db, qs)
    with pytest.raises(ListError, match=re.escape(words)):
        load_gsv_lists(root, prefix)
    rc = evaluate.main(["--weights", str(weights), *MODEL, "--dataset", str(root), "--gt-prefix", str(prefix),
                        "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and words in err[0], err


# ----------------------------------------------------------------------------- loading and recall by construction


def test_msls_style_qidx_pidx_subset_and_alignment(tmp_path):
    root = tmp_path / "data"
    # Six listed queries; only 5, 0, 2 are evaluated: the others' images need not exist.
    db, _ = write_images(root, 4, {"q/q0.png": 0, "q/q2.png": 2, "q/q5.png": 3})
    qs = [f"q/q{i}.png" for i in range(6)]
    prefix = write_lists(tmp_path / "msls_val" / "msls_val", db, qs, gt=[[9]] * 6,
                         q_idx=[5, 0, 2], p_idx=[[3], [], [2, 1]])
    bench = load_gsv_lists(root, prefix)
    assert bench.layout == "gsv-lists" and bench.name == "msls_val"
    assert [Path(p).name for p in bench.query_paths] == ["q5.png", "q0.png", "q2.png"]
    assert [p.tolist() for p in bench.positives] == [[3], [], [2, 1]]  # pIdx wins over gt
    assert bench.num_without_positives == 1
    assert bench.info["listed_queries"] == 6 and bench.info["ground_truth_list"] == "pIdx"
    # pIdx with one entry per listed query is indexed by qIdx.
    write_lists(prefix, db, qs, q_idx=[5, 0, 2], p_idx=[[0], [1], [2], [3], [0], [1]])
    assert [p.tolist() for p in read_lists(prefix).positives] == [[1], [0], [2]]
    # A _gt of equal-length lists may be a plain 2-D integer array; integer scalars are one positive.
    np.save(f"{prefix}_pIdx.npy", np.array([[0, 1], [2, 3], [1, 1], [0, 0], [3, 2], [1, 0]]))
    assert [p.tolist() for p in read_lists(prefix).positives] == [[1, 0], [0, 1], [1, 1]]
    np.save(f"{prefix}_pIdx.npy", object_array([np.int64(2), 3, np.array([1])]))
    assert [p.tolist() for p in read_lists(prefix).positives] == [[2], [3], [1]]
    # Through the benchmark registry (auto layout picks gsv-lists with a prefix).
    assert load_benchmark(root, gt_prefix=prefix).name == "msls_val"
    with pytest.raises(ValueError, match="needs --gt-prefix"):
        load_benchmark(root, layout="gsv-lists")
    with pytest.raises(ValueError, match="goes with the gsv-lists layout"):
        load_benchmark(root, layout="utm", gt_prefix=prefix)


def test_missing_images_are_counted_or_skipped_with_renumbering(known, tmp_path):
    root, prefix, db, qs = known
    os.remove(root / db[1])
    os.remove(root / qs[2])
    with pytest.raises(ListError, match=r"1 of 5 database and 1 of 4 query images .* missing under .*, first: "
                                        r"ref/seq1/db_001.png, query/q_2.png \(--skip-missing evaluates the rest\)"):
        load_gsv_lists(root, prefix)
    bench = load_gsv_lists(root, prefix, skip_missing=True, show_progress=False)
    assert [Path(p).name for p in bench.db_paths] == ["db_000.png", "db_002.png", "db_003.png", "db_004.png"]
    assert [Path(p).name for p in bench.query_paths] == ["q_0.png", "q_1.png", "q_3.png"]
    # gt [[0], [1, 2], [2], [4]]: db 1 is gone, db 2 -> 1, db 4 -> 3; query 2 is gone.
    assert [p.tolist() for p in bench.positives] == [[0], [1], [3]]
    assert (bench.info["skipped_database"], bench.info["skipped_queries"]) == (1, 1)
    for f in (root / "query").iterdir():
        f.unlink()
    with pytest.raises(ListError, match="nothing left to evaluate"):
        load_gsv_lists(root, prefix, skip_missing=True)


def test_cli_recall_known_by_construction_json_and_submission(known, tmp_path, weights, capsys):
    root, prefix, db, qs = known
    sub = tmp_path / "preds.txt"
    rc, res = run_cli(tmp_path, weights, "--dataset", str(root), "--gt-prefix", str(prefix), "--submission", str(sub))
    assert rc == 0
    assert (res["recall@1"], res["recall@5"], res["recall@10"], res["recall@20"]) == (0.75, 1.0, 1.0, 1.0)
    assert res["recall_percent"]["R@1"] == 75.0
    assert (res["num_queries"], res["num_database"], res["queries_without_positives"]) == (4, 5, 0)
    assert res["gt_prefix"] == str(prefix.resolve()) and res["layout"] == "gsv-lists" and res["name"] == "toy"
    assert (res["backbone"], res["descriptor"], res["descriptor_dim"]) == ("dinov2_vits14", "salad-544", 544)
    assert "variant" not in res and res["image_size"] == 70
    out = capsys.readouterr().out
    assert "toy" in out and "75.00" in out and "4 queries, 5 database images" in out
    assert (tmp_path / "out" / "retrievals.png").is_file()
    lines = [line.split(" ") for line in sub.read_text().splitlines()]
    assert [line[0] for line in lines] == ["q_0", "q_1", "q_2", "q_3"]
    assert all(len(line) == 1 + 5 for line in lines)  # 25 keys asked, capped by the 5 database images
    assert [line[1] for line in lines] == ["db_000", "db_001", "db_002", "db_003"]  # exact copies rank first
    assert all(sorted(line[1:]) == [f"db_{i:03d}" for i in range(5)] for line in lines)


def test_cli_queries_without_positives_and_skip_missing_reported(known, tmp_path, weights, capsys):
    root, _, db, qs = known
    # qIdx picks queries 3, 0, 1; pIdx: q3 -> db 3 (right), q0 -> nothing, q1 -> db 4 (wrong): R@1 = 1/3.
    prefix = write_lists(tmp_path / "lists" / "sub" / "sub", db, qs, q_idx=[3, 0, 1], p_idx=[[3], [], [4]])
    rc, res = run_cli(tmp_path, weights, "--dataset", str(root), "--gt-prefix", str(prefix), "--ks", "1,5")
    assert rc == 0 and res["recall@1"] == pytest.approx(1 / 3) and res["recall@5"] == pytest.approx(2 / 3)
    assert (res["num_queries"], res["listed_queries"], res["queries_without_positives"]) == (3, 4, 1)
    assert "1 queries without positives" in capsys.readouterr().out

    os.remove(root / db[4])  # q1's only positive disappears with it: it now has none either
    rc, _ = run_cli(tmp_path, weights, "--dataset", str(root), "--gt-prefix", str(prefix), out="out2")
    assert rc == 2 and "1 of 5 database and 0 of 3 query images" in capsys.readouterr().err
    rc, res = run_cli(tmp_path, weights, "--dataset", str(root), "--gt-prefix", str(prefix), "--skip-missing",
                      "--ks", "1", out="out3")
    assert rc == 0 and res["recall@1"] == pytest.approx(1 / 3)
    assert (res["skipped_database"], res["skipped_queries"], res["num_database"]) == (1, 0, 4)
    assert res["queries_without_positives"] == 2
    assert "SKIPPED (--skip-missing) 1 database and 0 query images" in capsys.readouterr().out


def test_cli_challenge_lists_without_ground_truth_need_submission(tmp_path, weights, capsys):
    root = tmp_path / "data"
    db, qs = write_images(root, 3, {"q/a1b2.jpg": 2, "q/zz.jpg": 0})
    prefix = write_lists(tmp_path / "msls_test" / "msls_test", db, qs)
    rc, _ = run_cli(tmp_path, weights, "--dataset", str(root), "--gt-prefix", str(prefix))
    assert rc == 2 and "no ground truth" in capsys.readouterr().err
    sub = tmp_path / "sub" / "msls_test.txt"
    rc, res = run_cli(tmp_path, weights, "--dataset", str(root), "--gt-prefix", str(prefix), "--submission", str(sub),
                      "--submission-k", "2")
    assert rc == 0 and not any(k.startswith("recall") for k in res)
    assert res["ground_truth_list"] == "none" and res["submission_k"] == 2 and res["num_queries"] == 2
    lines = sub.read_text().splitlines()
    assert [line.split(" ")[:2] for line in lines] == [["a1b2", "db_002"], ["zz", "db_000"]]
    assert all(len(line.split(" ")) == 3 for line in lines)
    assert not (tmp_path / "out" / "retrievals.png").exists()


# ----------------------------------------------------------------------------- training's --val-dataset


def test_training_val_dataset_takes_root_and_prefix(known, tmp_path, weights):
    root, prefix, _, _ = known
    folder = tmp_path / "folder"
    for part in ("database", "queries"):
        (folder / part).mkdir(parents=True)
        cv2.imwrite(str(folder / part / "f_00001.png"), texture(0))
    p = train_mod.build_parser()
    args = p.parse_args(["--data-root", str(tmp_path), "--out", str(tmp_path / "run"), "--backbone", "dinov2_vits14",
                         "--descriptor", "salad-544", "--image-size", "70", "--num-workers", "0", "--no-progress",
                         "--val-dataset", str(root), str(prefix), "--val-dataset", str(folder)])
    train_mod.check_args(p, args)
    sets = train_mod.load_val_sets(args)
    assert [(b.name, b.layout) for b in sets] == [("toy", "gsv-lists"), ("folder", "sequence")]
    model = build_model("dinov2_vits14", "salad-544")
    model.load_state_dict(torch.load(weights, weights_only=True))
    res = train_mod.validate(model, sets[:1], args, torch.device("cpu"))
    assert res["toy"]["recall@1"] == 0.75 and res["toy"]["recall@5"] == 1.0  # as the evaluator measures it

    with pytest.raises(SystemExit):
        train_mod.check_args(p, p.parse_args(["--data-root", "d", "--out", "o", "--val-dataset", "a", "b", "c"]))
    nogt = write_lists(tmp_path / "nogt" / "nogt", ["ref/seq1/db_000.png"], ["query/q_0.png"])
    args.val_dataset = [[str(root), str(nogt)]]
    with pytest.raises(ValueError, match="no ground truth, so it cannot validate"):
        train_mod.load_val_sets(args)
