"""The node as a separate process, started through its console script.

Three processes: ``loop_closure_node --ros-args --params-file ... -r image:=...``, an image
publisher (``test/_ros_helpers.py publish``) and this test process subscribing to candidates and
/diagnostics. Then SIGTERM: exit 0 within 5 s with the database saved. All of them inherit
localhost-only discovery and the random domain from conftest.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _ros_helpers import SEC, TEST_DETECTOR, TEST_MODEL, Collector, Spinner, wait_until

from salad_ros.database import KeyframeDatabase
from salad_ros.params import DEFAULT_NODE_NAME

HERE = Path(__file__).resolve().parent
NODE = f"/salad_proc/{DEFAULT_NODE_NAME}"


def console_script() -> str:
    """``loop_closure_node`` from the venv running the tests (scripts/setup.sh installs it)."""
    path = shutil.which("loop_closure_node", path=str(Path(sys.executable).parent)) or shutil.which("loop_closure_node")
    if path is None:
        pytest.fail("console script loop_closure_node not found: run scripts/setup.sh "
                    "(pip install --no-deps -e . into the venv)")
    return path


def write_params(path: Path, **extra) -> Path:
    flat = {**TEST_MODEL, **TEST_DETECTOR, "diagnostics_period": 0.5, **extra}
    tree: dict = {}
    for name, value in flat.items():  # nested maps, as a user writes them
        *parents, leaf = name.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    # '/**/<name>': the section applies in any namespace (a plain '<name>:' key only without one)
    path.write_text(yaml.safe_dump({f"/**/{DEFAULT_NODE_NAME}": {"ros__parameters": tree}}))
    return path


def start_node(*ros_args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RCUTILS_COLORIZED_OUTPUT": "0"}
    return subprocess.Popen([console_script(), "--ros-args", *ros_args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen, sig: int, within: float = 5.0) -> tuple[int, float, str]:
    """Send ``sig``; return (exit code, seconds to exit, combined output)."""
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=within + 5)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"node did not exit within {within + 5} s after signal {sig}:\n{err[-3000:]}")
    return proc.returncode, time.monotonic() - t0, out + err




def test_console_script_end_to_end_then_sigterm_saves(ctx, tmp_path):
    db = tmp_path / "map"
    params = write_params(tmp_path / "params.yaml", database_path=str(db), save_on_shutdown=True)
    node = start_node("--params-file", str(params), "-r", "__ns:=/salad_proc", "-r", "image:=/salad_proc/camera")
    publisher = None
    col = Collector(NODE, context=ctx, image_topic="/salad_proc/unused")
    try:
        with Spinner(ctx, col):
            # Our own subscriptions must be matched before the node publishes (volatile topics keep
            # nothing for late joiners); the publisher process waits for the node by itself.
            assert wait_until(lambda: col.count_publishers(f"{NODE}/loop_candidates") > 0, 60), "node not discovered"
            scenes = [0, 1, 2, 3, 0, 1]
            publisher = subprocess.Popen(
                [sys.executable, str(HERE / "_ros_helpers.py"), "publish", "--topic", "/salad_proc/camera",
                 "--node", NODE, "--scenes", ",".join(map(str, scenes))],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            out, err = publisher.communicate(timeout=120)
            if publisher.returncode != 0:
                node.kill()
                pytest.fail(f"publisher failed:\n{err[-3000:]}\nnode:\n{node.communicate()[1][-3000:]}")
            stamps = [int(s) for s in out.split(",")]
            assert len(stamps) == len(scenes)
            # candidates on the two revisits, none elsewhere, with the first visits' ids and stamps
            assert wait_until(lambda: len(col.candidate_rows()) == 2, 20), col.candidate_rows()
            found = dict(col.candidate_rows())
            assert sorted(found) == [stamps[4], stamps[5]]
            for k, first in ((4, 0), (5, 1)):
                rows = found[stamps[k]]
                assert rows["query_id"].tolist() == [k] and rows["match_id"].tolist() == [first]
                assert int(rows["match_stamp_sec"][0]) * SEC + int(rows["match_stamp_nanosec"][0]) == stamps[first]
                assert rows["score"][0] > 0.999
            assert wait_until(lambda: (col.last_diagnostics() or {}).get("frames_processed") == "6", 10)
            diag = col.last_diagnostics()
            assert diag["database_size"] == "6" and diag["candidates"] == "2" and diag["bad_frames"] == "0"
            assert diag["backend"] == "torch" and diag["device"] == "cpu"
        code, seconds, output = stop(node, signal.SIGTERM)
        assert code == 0, output[-3000:]
        assert seconds < 5.0
        assert "Traceback" not in output
        assert "saved 6 keyframes" in output
        loaded = KeyframeDatabase.load(db)
        assert len(loaded) == 6 and [loaded.get(k).stamp_ns for k in range(6)] == stamps
    finally:
        col.destroy_node()
        for p in (node, publisher):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()


def test_ctrl_c_exits_cleanly_with_the_shipped_config(ctx):
    """config/salad_ros.yaml as rcl reads it (plain 'salad_loop_closure:' key, no namespace),
    with a small model given on the command line (later arguments win)."""
    node = start_node("--params-file", str(HERE.parent / "config" / "salad_ros.yaml"),
                      "-p", "allow_random_weights:=true", "-p", "backbone:=dinov2_vits14", "-p", "image_size:=224",
                      "-p", "device:=cpu", "-p", "diagnostics_period:=0.2")
    col = Collector(f"/{DEFAULT_NODE_NAME}", context=ctx, image_topic="/image")
    try:
        with Spinner(ctx, col):
            assert wait_until(col.last_diagnostics, 60), "node never published diagnostics"
            assert col.last_diagnostics()["_level"] == 1  # WARN: random weights, no images
            # diagnostic_updater's form in the root namespace: '<node name>: <task>', no slash
            assert col.last_diagnostics()["_name"] == f"{DEFAULT_NODE_NAME}: loop closure"
        code, seconds, output = stop(node, signal.SIGINT)
        assert code == 0 and seconds < 5.0, output[-3000:]
        assert "Traceback" not in output and "RANDOM WEIGHTS" in output
    finally:
        col.destroy_node()
        if node.poll() is None:
            node.kill()
            node.communicate()


INVALID = [
    (["-p", "allow_random_weights:=true", "-p", "image_size:=100"], "parameter 'image_size': 100 is not a multiple of 14"),
    (["-p", "weights:=/nonexistent/salad.ckpt"], "parameter 'weights': file not found: /nonexistent/salad.ckpt"),
    ([], "parameter 'weights' is empty"),
    # rcl refuses these before any node exists (rclpy.init raised RCLError: a traceback, exit 1)
    (["--params-file", "/nonexistent/params.yaml"], "Couldn't parse params file: '--params-file /nonexistent/params.yaml'"),
    (["--params-file", "{bad_yaml}"], "Couldn't parse params file: '--params-file {bad_yaml}'"),
    (["-p", "image_size:=["], "Couldn't parse parameter override rule: '-p image_size:=['"),
]  # every kind of refusal is covered in-process by test_node.py; these check the process's exit


def test_invalid_parameters_refused_with_one_line(tmp_path):
    """Exit code 2 and one FATAL line naming the parameter or the file, no traceback; the checks
    run before the model is built. The processes run side by side (each mostly waits for imports)."""
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text(f"{DEFAULT_NODE_NAME}:\n  ros__parameters:\n    image_size: [224\n")
    procs = [(start_node(*(a.format(bad_yaml=bad_yaml) for a in args)), message.format(bad_yaml=bad_yaml))
             for args, message in INVALID]
    for proc, message in procs:
        out, err = proc.communicate(timeout=60)
        lines = [line for line in (out + err).splitlines() if line.strip()]
        assert proc.returncode == 2, (message, lines)
        assert len(lines) == 1 and message in lines[0] and "FATAL" in lines[0], lines


def test_further_signals_do_not_interrupt_the_shutdown_save(ctx, tmp_path):
    """A second SIGTERM (or a Ctrl-C) while the node saves its map on shutdown used to raise
    KeyboardInterrupt inside the save: exit -2 and the session lost. Here the map is 20000
    keyframes (~340 MB, the save takes most of a second) and signals keep coming every 50 ms
    after the first: the save completes and the node exits 0."""
    import numpy as np

    from salad_ros.backends import ModelConfig, create_encoder
    from salad_ros.database import DatabaseConfig

    encoder = create_encoder(ModelConfig(**TEST_MODEL))  # for its descriptor identity
    db = tmp_path / "map"
    block = np.random.default_rng(0).standard_normal((1000, encoder.dim)).astype(np.float32)
    block /= np.linalg.norm(block, axis=1, keepdims=True)
    big = KeyframeDatabase.from_config(encoder.dim, DatabaseConfig(), encoder.model_name)
    for k in range(20):
        big.add(block, np.arange(k * 1000, (k + 1) * 1000) * SEC)
    big.save(db)
    del big, encoder
    params = write_params(tmp_path / "params.yaml", database_path=str(db), save_on_shutdown=True,
                          diagnostics_period=0.2)
    node = start_node("--params-file", str(params), "-r", "__ns:=/salad_sig")
    col = Collector(f"/salad_sig/{DEFAULT_NODE_NAME}", context=ctx, image_topic="/salad_sig/unused")
    try:
        with Spinner(ctx, col):
            assert wait_until(col.last_diagnostics, 90), "node never published diagnostics"
            assert col.last_diagnostics()["database_size"] == "20000"
        node.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        sent = 1
        while node.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            node.send_signal(signal.SIGINT if sent % 3 == 0 else signal.SIGTERM)
            sent += 1
        code, _, output = stop(node, signal.SIGTERM) if node.poll() is None else (node.returncode, 0.0, "".join(node.communicate()))
        assert code == 0, output[-3000:]
        assert sent > 3, "the signals came while the node was shutting down"
        assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
        saving, saved = output.find("saving 20000 keyframes"), output.find("saved 20000 keyframes")
        assert 0 <= saving < saved, output[-3000:]
        assert "please wait" in output[saving:saved], "signals arrived during the save"
        assert len(KeyframeDatabase.load(db)) == 20000
    finally:
        col.destroy_node()
        if node.poll() is None:
            node.kill()
            node.communicate()
