"""What replay says when its numbers are thin: which keyframe rule cut how many frames, and why no
query has a true loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_replay import PARAMS, TinyEncoder

from salad_ros.evaluation import demo_bag, replay

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """24 frames (12 per lap) of the demo route, 160x120."""
    path = tmp_path_factory.mktemp("demo") / "bag"
    demo_bag.generate(path, frames=24, size=(160, 120), supersample=1)
    return path


def replay_with(tmp_path: Path, demo: Path, detector: dict, *extra: str) -> tuple[dict, str, str]:
    params = tmp_path / "p.yaml"
    merged = {**PARAMS["detector"], **detector}
    params.write_text(yaml.safe_dump({"salad_loop_closure": {"ros__parameters": {"detector": merged}}}))
    out = tmp_path / "out"
    import contextlib
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = replay.main([str(demo), "--image-topic", demo_bag.IMAGE_TOPIC, "--gt-topic", demo_bag.ODOM_TOPIC,
                            "--params", str(params), "--allow-random-weights", "--out", str(out), "--no-progress",
                            "--no-plots", *extra], encoder=TinyEncoder())
    assert code == 0, stderr.getvalue()
    return json.loads((out / "report.json").read_text()), stdout.getvalue(), stderr.getvalue()


def test_keyframe_rules_say_how_many_frames_each_cut(tmp_path: Path, demo: Path) -> None:
    report, out, _ = replay_with(tmp_path, demo, {"keyframe_min_interval_s": 1.5, "keyframe_max_similarity": 0.0})
    cuts = report["keyframe_cuts"]
    assert set(cuts) <= {"keyframe_min_interval_s", "keyframe_max_similarity"} and cuts["keyframe_max_similarity"] > 0
    assert report["keyframes"] + sum(cuts.values()) == report["frames_processed"] == 24
    line = next(s for s in out.splitlines() if s.startswith("keyframes"))
    assert f"{report['keyframes']} of 24 frames" in line and f"{cuts['keyframe_max_similarity']} by keyframe_max_similarity" in line
    # Nothing left to score: the summary says why, naming the rule.
    assert report["queries_with_loop"] == 0
    assert "keyframe_max_similarity" in report["no_loop_cause"] and "keyframe_max_similarity" in out.split("---")[-1]


def test_no_true_loop_because_the_exclusion_window_hides_the_revisits(tmp_path: Path, demo: Path) -> None:
    report, out, _ = replay_with(tmp_path, demo, {"exclude_recent_keyframes": 1000})
    assert report["keyframes"] == 24 and report["keyframe_cuts"] == {}
    assert report["queries_with_loop"] == 0
    assert "exclude_recent_keyframes" in report["no_loop_cause"] and "revisit" in report["no_loop_cause"]
    assert report["no_loop_cause"] in out


def test_no_true_loop_because_the_route_never_comes_back(tmp_path: Path, demo: Path) -> None:
    report, out, _ = replay_with(tmp_path, demo, {}, "--max-frames", "8")  # two thirds of the first lap
    assert report["queries_with_loop"] == 0
    assert "never comes back" in report["no_loop_cause"] and "--radius" in report["no_loop_cause"]
    assert report["no_loop_cause"] in out


def test_trajectory_plot_with_hundreds_of_candidates(tmp_path: Path) -> None:
    """True and false candidates in separate panels, a query's best of each kind only, the path
    coloured by time (two laps)."""
    import cv2
    import numpy as np

    from salad_ros.evaluation.plots import plot_trajectory

    t = np.linspace(0.0, 2.0, 1000)
    path = np.stack([20 * np.cos(2 * np.pi * t) * (1 + 0.05 * (t > 1)), 12 * np.sin(2 * np.pi * t)], axis=1)
    kf = path[::5]
    rng = np.random.default_rng(0)
    n = len(kf)
    edges = [(q, q - n // 2 + int(rng.integers(-1, 2)), True) for q in range(n // 2 + 1, n)]
    edges += [(q, int(rng.integers(0, n // 2)), False) for q in range(n // 2, n) for _ in range(3)]
    png = plot_trajectory(path, kf, edges, tmp_path / "t.png", "two laps", t * 60)
    img = cv2.imread(str(png))
    h, w, _ = img.shape
    assert w > 1200 and h > 450
    left, right = img[:, : w // 2].astype(int), img[:, w // 2 :].astype(int)
    green = lambda a: ((a[..., 1] > 100) & (a[..., 2] < 80) & (a[..., 0] < 110)).sum()  # noqa: E731 (BGR)
    red = lambda a: ((a[..., 2] > 150) & (a[..., 1] < 90) & (a[..., 0] < 90)).sum()  # noqa: E731
    assert green(left) > 20 * max(green(right), 1) and red(right) > 5 * max(red(left), 1)
