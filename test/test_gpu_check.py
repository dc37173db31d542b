"""scripts/gpu_check.sh and bench/gpu_check.py, tested on a CPU: the driver-to-wheel choice, the judging
of the GPU test report, the table and its completeness check (fed by a real, tiny bench_inference run
with CPU paths), and the script's own refusal without an NVIDIA GPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_inference  # noqa: E402
import gpu_check  # noqa: E402
from gpu_check import CheckFailed  # noqa: E402

SMI = """+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 570.86.15              Driver Version: 570.86.15      CUDA Version: 12.8     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
|   0  NVIDIA RTX A4000               Off |   00000000:01:00.0 Off |                  Off |
"""


def test_torch_wheel_index_follows_the_driver(tmp_path, capsys):
    assert gpu_check.driver_cuda_version(SMI) == (12, 8)
    assert gpu_check.torch_cuda_tag((12, 8)) == "cu128"
    assert gpu_check.torch_cuda_tag((12, 7)) == "cu126"  # the newest build the driver can run
    assert gpu_check.torch_cuda_tag((13, 0)) == "cu129"  # CUDA 12 builds only (onnxruntime-gpu, tensorrt)
    with pytest.raises(CheckFailed, match="supports CUDA 12.2, the oldest PyTorch CUDA build here needs 12.6"):
        gpu_check.torch_cuda_tag((12, 2))
    with pytest.raises(CheckFailed, match="no 'CUDA Version: X.Y'"):
        gpu_check.driver_cuda_version("NVIDIA-SMI has failed because it couldn't communicate with the driver")
    smi = tmp_path / "smi.txt"
    smi.write_text(SMI)
    assert gpu_check.main(["torch-index", str(smi)]) == 0
    assert capsys.readouterr().out.strip() == "https://download.pytorch.org/whl/cu128"
    smi.write_text(SMI.replace("12.8", "11.8"))
    assert gpu_check.main(["torch-index", str(smi)]) == 1
    assert "update the NVIDIA driver" in capsys.readouterr().err


def _junit(path: Path, cases: str) -> Path:
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{cases}</testsuite></testsuites>')
    return path


def test_gpu_test_report_must_have_no_failure_error_or_skip(tmp_path, capsys):
    ok = '<testcase classname="test.test_gpu" name="test_a" time="1"/>'
    skipped = ('<testcase classname="test.test_export" name="test_trt[fp16]" time="0">'
               '<skipped type="pytest.skip" message="tensorrt not importable (ModuleNotFoundError)"/></testcase>')
    failed = '<testcase classname="test.test_gpu" name="test_b"><failure message="assert 0.99 &gt;= 0.999"/></testcase>'
    total, problems = gpu_check.junit_problems(_junit(tmp_path / "a.xml", ok + skipped + failed))
    assert total == 3 and problems == [
        "skipped: test.test_export::test_trt[fp16]: tensorrt not importable (ModuleNotFoundError)",
        "failure: test.test_gpu::test_b: assert 0.99 >= 0.999",
    ]
    assert gpu_check.junit_problems(_junit(tmp_path / "b.xml", ok)) == (1, [])
    assert gpu_check.junit_problems(_junit(tmp_path / "c.xml", ""))[1] == ["no GPU test was collected (pytest -m gpu)"]
    assert gpu_check.main(["junit", str(tmp_path / "a.xml")]) == 1
    assert "2 of 3 GPU tests did not pass" in capsys.readouterr().err
    assert gpu_check.main(["junit", str(tmp_path / "b.xml")]) == 0
    assert gpu_check.main(["junit", str(tmp_path / "missing.xml")]) == 1
    assert "did pytest start?" in capsys.readouterr().err


def _row(path: str, size: int, device: str = "cuda:0", cosine: float = 0.9995, ms: float = 2.0) -> dict:
    p = bench_inference.PATHS[path]
    return {"backbone": "dinov2_vitb14", "size": size, "path": path, "label": p.label, "device": device,
            "ms_per_image": {"1": ms, "8": ms / 3}, "speedup": 1.0, "min_cosine": cosine, "top1_agreement": 1.0,
            "frames": 32}


def test_gpu_table_lists_every_path_size_and_batch_and_refuses_gaps(tmp_path, capsys):
    rows = [_row(p, s, cosine=0.9995 if "fp16" in p else 0.99999) for p in gpu_check.GPU_PATHS for s in (224, 322)]
    search = {"keyframes": 10000, "dim": 8448, "fp16": True, "k": 10, "median_ms": 0.41, "p99_ms": 0.9}
    table = gpu_check.format_table(rows, search)
    lines = table.splitlines()
    assert lines[0] == ("| dinov2_vitb14, ms per image | 224 px b1 | 224 px b8 | 322 px b1 | 322 px b8 "
                        "| min cosine vs torch-fp32-cuda |")
    assert [line.split(" | ")[0] for line in lines[2:6]] == [
        "| torch fp32 CUDA", "| torch fp16 CUDA", "| onnxruntime fp32 CUDA", "| tensorrt fp16 CUDA"]
    assert lines[3] == "| torch fp16 CUDA | 2.00 | 0.67 | 2.00 | 0.67 | 0.999500 |"
    assert "flat GPU index search, 10000 keyframes × 8448-D (fp16), one query | 0.41 ms median, 0.90 ms p99 |" in lines[6]
    assert all(line.count("|") == lines[0].count("|") for line in lines)  # a well-formed markdown table
    assert gpu_check.table_problems(rows) == []
    # A path that did not run, one that fell back to the CPU, one too far from the reference:
    broken = [r for r in rows if (r["path"], r["size"]) != ("tensorrt-fp16", 322)]
    broken = [_row("onnxruntime-fp32-cuda", 224, device="cpu", cosine=1.0) if (r["path"], r["size"]) == ("onnxruntime-fp32-cuda", 224)
              else _row("torch-fp16-cuda", 322, cosine=0.98) if (r["path"], r["size"]) == ("torch-fp16-cuda", 322)
              else r for r in broken]
    assert gpu_check.table_problems(broken) == [
        "torch-fp16-cuda at 322 px: cosine 0.980000 to torch-fp32-cuda is below 0.999",
        "onnxruntime-fp32-cuda at 224 px ran on cpu, not on the GPU",
        "tensorrt-fp16 at 322 px: no row (the path did not run; see the bench output)",
    ]
    assert "| tensorrt fp16 CUDA | 2.00 | 0.67 | – | – | 0.999500 |" in gpu_check.format_table(broken, search)
    # The command line: complete -> 0; incomplete or without a search time (or a reason) -> 1.
    inference, found = tmp_path / "inference.json", tmp_path / "search.json"
    inference.write_text(json.dumps({"rows": rows}))
    found.write_text(json.dumps(search))
    assert gpu_check.main(["table", "--inference", str(inference), "--search", str(found)]) == 0
    assert capsys.readouterr().out.strip() == table
    assert gpu_check.main(["table", "--inference", str(inference)]) == 1
    assert "no flat GPU index search time" in capsys.readouterr().err
    assert gpu_check.main(["table", "--inference", str(inference), "--search-skipped", "faiss-gpu 1.15.1 missing"]) == 0
    assert "| flat GPU index search | not measured: faiss-gpu 1.15.1 missing |" in capsys.readouterr().out
    inference.write_text(json.dumps({"rows": broken}))
    assert gpu_check.main(["table", "--inference", str(inference), "--search", str(found)]) == 1
    assert "the GPU table is incomplete" in capsys.readouterr().err


def test_bench_inference_rows_feed_the_table(tmp_path, monkeypatch):
    """A real (tiny, CPU) bench_inference run writes the rows the GPU table reads."""
    monkeypatch.setenv("SALAD_ROS_CACHE", str(tmp_path / "cache"))  # OpenVINO's compiled model: not in ~/.cache
    out = tmp_path / "rows.json"
    assert bench_inference.main(["--backbones", "dinov2_vits14", "--sizes", "70", "--batches", "1,2",
                                 "--descriptor", "salad-544", "--paths", "torch-fp32,openvino-fp32", "--repeats", "1",
                                 "--warmup", "0", "--frames", "6", "--exclude", "1", "--work-dir", str(tmp_path),
                                 "--json", str(out), "--quiet"]) == 0
    data = json.loads(out.read_text())
    assert "load_start" in data and "CPU" in data["machine"]
    rows = data["rows"]
    assert [r["path"] for r in rows] == ["torch-fp32", "openvino-fp32"]
    assert rows[1]["min_cosine"] > 0.99999 and rows[1]["top1_agreement"] == 1.0 and rows[1]["frames"] == 6
    kw = dict(paths=("torch-fp32", "openvino-fp32"), sizes=(70,), batches=(1, 2), backbone="dinov2_vits14")
    assert gpu_check.table_problems(rows, **kw) == ["torch-fp32 at 70 px ran on cpu, not on the GPU",
                                                    "openvino-fp32 at 70 px ran on cpu, not on the GPU"]
    assert "| openvino fp32 |" in gpu_check.format_table(rows, None, **kw)


def test_top1_agreement_is_over_frames_outside_the_excluded_window():
    import numpy as np

    d = np.eye(8, dtype=np.float32)
    d[4] = d[0] * 0.9 + d[4] * 0.1  # frame 4 looks like frame 0
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    assert bench_inference.top1(d, exclude=1)[4] == 0 and bench_inference.top1(d, exclude=1)[0] == 4
    assert bench_inference.top1(d, exclude=4)[4] not in (0, 4)  # frame 0 is within 4 of frame 4: excluded
    assert bench_inference.top1(d[:5], exclude=4)[4] == -1  # nothing left to match
    other = d.copy()
    other[4] = d[7]  # now frame 4 matches frame 7
    assert bench_inference.top1_agreement(d, d, 1) == 1.0
    assert bench_inference.top1_agreement(d, other, 1) < 1.0
    with pytest.raises(SystemExit):
        bench_inference.main(["--paths", "torch-fp32,tensorrt-fp8"])


def test_gpu_check_script_is_valid_and_refuses_without_a_gpu(tmp_path):
    script = ROOT / "scripts" / "gpu_check.sh"
    assert script.stat().st_mode & 0o111, "executable"
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stdout
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"  # a driver that is not loaded
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver'\nexit 9\n")
    smi.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:/usr/bin:/bin", "GPU_CHECK_OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 3 and "needs an NVIDIA GPU and driver" in proc.stderr
    assert not (tmp_path / "out").exists()  # refused before touching anything
    text = script.read_text()
    for needle in ("set -euo pipefail", "pytest -m gpu", "export.tensorrt", "bench_inference.py", "gpu_check.py search",
                   "onnxruntime-gpu", "faiss-gpu", "tensorrt==", "GPU_CHECK_BUDGET_S:-480"):
        assert needle in text, needle


def test_gpu_tests_are_marked_so_the_script_finds_them():
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "test"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ids = {line for line in proc.stdout.splitlines() if "::" in line}
    for expected in ("test/test_export.py::test_tensorrt_engine_matches_pytorch_on_gpu[fp16]",
                     "test/test_export.py::test_tensorrt_refuses_engine_that_fails_the_check",
                     "test/test_backends.py::test_tensorrt_backend_refuses_onnx_and_engines_without_metadata",
                     "test/test_gpu.py::test_onnxruntime_cuda_provider_matches_torch",
                     "test/test_gpu.py::test_gpu_flat_index_finds_what_the_cpu_index_finds[True]"):
        assert expected in ids, expected
