"""``python -m export.onnx ... --check-openvino``: the exported file, run by OpenVINO on this CPU.

The same inputs as the onnxruntime check go through OpenVINO in fp32 (thresholds of fp32) and,
where the CPU has native bf16 (:mod:`salad_ros.backends.cpu_features`), in bf16 (cosine >= 0.999).
Each precision is also timed at batch 1 against PyTorch fp32 (best of 5 interleaved calls), so the
result says which verified path is the fastest on this machine. The report is written next to the file
as ``<file>.openvino.json`` (the demo reads it to pick its path).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from salad_ros.backends import cpu_features
from salad_ros.backends.contract import INPUT_NAME, run_in_batches
from salad_ros.backends.openvino_backend import compile_onnx, compile_properties, default_threads, import_openvino

from .compare import THRESHOLDS, check_agreement

#: bf16 has 8 significand bits (fp16 has 11): the fp16 threshold, not fp32's, applies.
BF16_MIN_COSINE = 0.999


@dataclass
class OpenVINOCheck:
    precision: str
    passed: bool
    min_cosine: float
    max_abs: float
    ms_per_image: float
    summary: str


def report_path(onnx_path: str | Path) -> Path:
    """Where ``--check-openvino`` writes its report: ``<file>.openvino.json``."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + ".openvino.json")


def _best_ms(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Best ms per call of each function, calls interleaved (fair under changing load: the best
    call is what a path does when other processes leave it alone)."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[k].append(1000 * (time.perf_counter() - t0))
    return [min(t) for t in times]


def check_openvino(
    model: torch.nn.Module, path: str | Path, inputs: torch.Tensor, *, fixed_batch: int | None = None,
    repeats: int = 5, min_cosine: float | None = None, max_abs: float | None = None,
) -> dict[str, object]:
    """Verify ``path`` in OpenVINO (fp32, and bf16 where native) against ``model`` on ``inputs``.

    Returns the report: per precision the agreement and batch-1 ms per image, torch's ms, the
    fastest passing path, and why bf16 was skipped if it was.
    """
    ov = import_openvino()
    model = model.eval().cpu()
    x = np.ascontiguousarray(inputs.numpy())
    with torch.no_grad():
        reference = model(inputs).numpy()
    precisions = ["fp32"]
    bf16_problem = cpu_features.cpu_bf16_problem()
    if bf16_problem is None:
        precisions.append("bf16")
    threads = default_threads()
    runners: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    checks: dict[str, OpenVINOCheck] = {}
    for precision in precisions:
        compiled = compile_onnx(ov, path, compile_properties(precision, threads), cache_dir=None)
        request = compiled.create_infer_request()
        output = compiled.outputs[0]
        runners[precision] = lambda b, r=request, o=output: np.array(r.infer({INPUT_NAME: b})[o], copy=True)
        out = run_in_batches(x, runners[precision], fixed_batch)
        if precision == "fp32":
            cos, diff = THRESHOLDS["fp32"]
            cos, diff = (min_cosine if min_cosine is not None else cos), (max_abs if max_abs is not None else diff)
        else:
            cos, diff = BF16_MIN_COSINE, None
        agreement = check_agreement(reference, out, cos, diff)
        checks[precision] = OpenVINOCheck(precision, agreement.passed, agreement.min_cosine, agreement.max_abs,
                                          float("nan"), agreement.summary())
    one = x[:1] if fixed_batch is None else x[:fixed_batch]
    per_call = fixed_batch or 1
    with torch.no_grad():
        torch_fn = lambda: model(torch.from_numpy(one))  # noqa: E731
        fns = [torch_fn] + [lambda p=p: runners[p](one) for p in precisions]
        for fn in fns:  # warm-up
            fn()
        ms = _best_ms(fns, repeats)
    for precision, t in zip(precisions, ms[1:]):
        checks[precision].ms_per_image = t / per_call
    speeds = {"torch-fp32": ms[0] / per_call}
    speeds.update({f"openvino-{p}": c.ms_per_image for p, c in checks.items() if c.passed})
    return {
        "file": str(Path(path).name),
        "openvino_version": ov.__version__,
        "cpu": cpu_features.cpu_model(),
        "threads": threads,
        "checks": {p: asdict(c) for p, c in checks.items()},
        "bf16_skipped": bf16_problem,
        "torch_fp32_ms_per_image": ms[0] / per_call,
        "fastest": min(speeds, key=speeds.get),
        "passed": checks["fp32"].passed,
    }


def print_report(report: dict[str, object], count: int) -> None:
    checks = report["checks"]
    for precision, c in checks.items():
        print(f"OpenVINO {report['openvino_version'].split('-')[0]} {precision} vs PyTorch on {count} inputs: "
              f"cosine min {c['min_cosine']:.7f}, max abs difference {c['max_abs']:.3e}, "
              f"{'passed' if c['passed'] else 'FAILED'}; {c['ms_per_image']:.0f} ms per image at batch 1")
    if report["bf16_skipped"]:
        print(f"OpenVINO bf16 not checked: {report['bf16_skipped']}")
    print(f"PyTorch fp32: {report['torch_fp32_ms_per_image']:.0f} ms per image at batch 1 ({report['threads']} threads); "
          f"fastest verified path here: {report['fastest']}")


def write_report(report: dict[str, object], onnx_path: str | Path) -> Path:
    out = report_path(onnx_path)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return out


def choose_path(report: dict[str, object], cpu: str, openvino_version: str | None) -> tuple[str, str]:
    """The fastest verified path of a ``--check-openvino`` report, if the report is of this machine
    (same CPU model and OpenVINO version); else ``torch-fp32``. Returns ``(path, reason)``."""
    if openvino_version is None:
        return "torch-fp32", "openvino is not installed"
    if report.get("cpu") != cpu or report.get("openvino_version") != openvino_version:
        return "torch-fp32", (f"the OpenVINO check was made on {report.get('cpu')} with OpenVINO "
                              f"{report.get('openvino_version')}, not on this machine")
    if not report.get("passed"):
        return "torch-fp32", "OpenVINO did not reproduce PyTorch fp32"
    checks = report["checks"]
    fastest = str(report["fastest"])
    timings = ", ".join([f"torch fp32 {report['torch_fp32_ms_per_image']:.0f}"]
                        + [f"openvino {p} {c['ms_per_image']:.0f}" + ("" if c["passed"] else " (failed)")
                           for p, c in checks.items()])
    why = f"fastest verified path on this CPU when the file was checked ({timings} ms per image at batch 1)"
    if "bf16" not in checks:
        why += f"; bf16 not available: {report.get('bf16_skipped')}"
    return fastest, why


def main(argv: list[str] | None = None) -> int:
    """``python -m export.openvino_check choose REPORT``: print ``path<TAB>reason`` for this machine."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "choose":
        print("usage: python -m export.openvino_check choose FILE.onnx.openvino.json", file=sys.stderr)
        return 2
    try:
        report = json.loads(Path(args[1]).read_text())
    except (OSError, ValueError) as exc:
        print(f"torch-fp32\tno usable OpenVINO check report ({exc})")
        return 0
    try:
        version = import_openvino().__version__
    except Exception:  # noqa: BLE001 - ConfigError when missing; anything else is as bad
        version = None
    path, reason = choose_path(report, cpu_features.cpu_model(), version)
    print(f"{path}\t{reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
