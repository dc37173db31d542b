"""ONNX export (verified against PyTorch on the CPU) and the CPU-testable parts of the TensorRT path.

ONNX files are exported once per module: ViT-S at 168 px with the 8448-D head (dynamic batch,
through ``python -m export.onnx`` exactly as documented), and ViT-S at 112 px with the 544-D head
in fp16 with a static batch from a checkpoint file with non-trivial LayerScale.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export import graph as G
from export import onnx as xonnx
from export import tensorrt as xtrt
from export.compare import THRESHOLDS, check_agreement, synthetic_images, verification_inputs
from salad_ros.backends import ModelConfig, check_export_metadata, create_encoder, file_fingerprint
from salad_ros.backends.tensorrt_backend import (
    check_engine_runtime,
    read_engine_metadata,
    sidecar_path,
    unavailable_reason,
)
from salad_ros.model import IMAGENET_MEAN, IMAGENET_STD, build_model
from salad_ros.params import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SIZE = 168




TRT_SKIP = unavailable_reason()
needs_trt = pytest.mark.skipif(TRT_SKIP is not None, reason=TRT_SKIP or "")


def _quiet_session(path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> SimpleNamespace:
    """ViT-S / 8448-D / 168 px, dynamic batch, random weights, via the documented command line."""
    out = tmp_path_factory.mktemp("onnx") / "salad_s168.onnx"
    cmd = [sys.executable, "-m", "export.onnx", "--random-weights", "--backbone", "dinov2_vits14",
           "--image-size", str(SIZE), "--out", str(out), "--verify-count", "2", "--quiet"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # Seeded random init: the torch backend's model has exactly the exported weights.
    torch_enc = create_encoder(ModelConfig(allow_random_weights=True, backbone="dinov2_vits14", image_size=SIZE,
                                           device="cpu"))
    return SimpleNamespace(path=out, stdout=proc.stdout, model=torch_enc.model, torch_encoder=torch_enc,
                           proto=onnx.load(str(out)))


@pytest.fixture(scope="module")
def exported_fp16(tmp_path_factory) -> SimpleNamespace:
    """ViT-S / 544-D / 112 px, static batch 2, fp16 islands, from a checkpoint file whose
    LayerScale is 0.5 (random init has 1e-5, which would hide any fp16 error in the blocks)."""
    d = tmp_path_factory.mktemp("onnx16")
    model = build_model("dinov2_vits14", variant="salad-544")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(0.5)
    weights = d / "salad_s544.pth"
    torch.save(model.state_dict(), weights)
    out = d / "salad_s112_fp16.onnx"
    rc = xonnx.main(["--weights", str(weights), "--backbone", "dinov2_vits14", "--descriptor", "salad-544",
                     "--image-size", "112", "--batch", "2", "--precision", "fp16", "--out", str(out),
                     "--verify-count", "2", "--quiet"])
    assert rc == 0
    return SimpleNamespace(path=out, weights=weights, model=model.eval())


# ---------------------------------------------------------------------------------------------
# ONNX export


def test_cli_reports_agreement_with_pytorch(exported):
    line = next(l for l in exported.stdout.splitlines() if l.startswith("onnxruntime vs PyTorch"))
    cosine = float(line.split("cosine min ")[1].split(",")[0])
    max_abs = float(line.split("max abs difference ")[1])
    assert cosine >= 0.99999 and max_abs <= 1e-4
    assert "wrote" in exported.stdout and exported.path.is_file()


def test_graph_interface_is_normalised_nchw_images_to_descriptors(exported):
    g = exported.proto.graph
    assert [i.name for i in g.input] == ["images"] and [o.name for o in g.output] == ["descriptors"]
    inp = g.input[0].type.tensor_type
    assert inp.elem_type == TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in inp.shape.dim]
    assert dims == ["batch", 3, SIZE, SIZE]
    out_dims = [d.dim_param or d.dim_value for d in g.output[0].type.tensor_type.shape.dim]
    assert out_dims == ["batch", 8448]
    assert G.opset_version(exported.proto) >= 17


def test_graph_is_standard_onnx_with_unrolled_sinkhorn_and_baked_pos_embed(exported):
    nodes = exported.proto.graph.node
    ops = [n.op_type for n in nodes]
    assert all(n.domain in ("", "ai.onnx") for n in nodes), "custom ops (xformers?) in the graph"
    assert not {"Loop", "If", "Scan"} & set(ops), "control flow: Sinkhorn must be unrolled"
    assert "ReduceLogSumExp" not in ops
    # Three Sinkhorn iterations, each a row and a column log-sum-exp, in max-shifted form.
    assert sum(n.op_type == "ReduceMax" and "/aggregator/" in n.name for n in nodes) == 6
    assert "Resize" not in ops, "positional embedding interpolation must not be in the graph"
    pos = {t.name: t for t in exported.proto.graph.initializer}["pos_embed"]
    assert list(pos.dims) == [1, 1 + (SIZE // 14) ** 2, 384]
    grid = SIZE // 14
    expected = exported.model.backbone.model.interpolated_pos_embed(grid, grid).detach().numpy()
    np.testing.assert_array_equal(numpy_helper.to_array(pos), expected)
    assert "LayerNormalization" in ops  # single op from opset 17: TensorRT's normalization layer


def test_metadata_names_the_same_model_as_the_torch_backend(exported):
    meta = {p.key: p.value for p in exported.proto.metadata_props}
    assert meta["model_name"] == exported.torch_encoder.model_name == f"dinov2_vits14/64x128+256@{SIZE}/random"
    assert meta["variant"] == "dinov2_vits14/64x128+256"
    assert (meta["backbone"], meta["descriptor"], meta["image_size"]) == ("dinov2_vits14", "salad-8448", str(SIZE))
    assert meta["descriptor_dim"] == "8448" and meta["batch"] == "dynamic" and meta["precision"] == "fp32"
    assert json.loads(meta["mean"]) == list(IMAGENET_MEAN) and json.loads(meta["std"]) == list(IMAGENET_STD)
    assert meta["weights_fingerprint"] == meta["weights_sha256"] == "random"
    assert int(meta["opset"]) >= 17 and meta["sinkhorn_iters"] == "3"


def test_onnxruntime_matches_pytorch_on_random_and_image_inputs_at_two_batch_sizes(exported):
    session = _quiet_session(exported.path)
    x = verification_inputs(SIZE, 4, seed=3)
    with torch.no_grad():
        ref = exported.model(x).numpy()
    out = np.concatenate([session.run(None, {"images": x[:1].numpy()})[0], session.run(None, {"images": x[1:].numpy()})[0]])
    report = check_agreement(ref, out, min_cosine=0.99999, max_abs=1e-4)
    assert report.passed, report.summary()


def test_fp16_export_keeps_fp32_islands_and_agrees(exported_fp16):
    proto = onnx.load(str(exported_fp16.path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["precision"] == "fp16" and meta["batch"] == "2"
    assert meta["weights_fingerprint"] == file_fingerprint(exported_fp16.weights)
    assert len(meta["weights_sha256"]) == 64 and meta["weights_sha256"].startswith(meta["weights_fingerprint"])
    prec = G.node_precisions(proto)
    by_op: dict[str, set[int]] = {}
    for n in proto.graph.node:
        if n.name in prec:
            by_op.setdefault(n.op_type, set()).add(prec[n.name])
        if "/aggregator/" in n.name and n.name in prec:
            assert prec[n.name] == TensorProto.FLOAT, f"{n.name} is not fp32"
    assert by_op["LayerNormalization"] == {TensorProto.FLOAT}
    assert by_op["Softmax"] == {TensorProto.FLOAT}
    assert TensorProto.FLOAT16 in by_op["MatMul"]
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    # onnxruntime runs fp16 on the CPU too: the islands graph stays close to fp32 PyTorch.
    x = verification_inputs(112, 4, seed=5)
    with torch.no_grad():
        ref = exported_fp16.model(x).numpy()
    session = _quiet_session(exported_fp16.path)
    out = np.concatenate([session.run(None, {"images": x[i:i + 2].numpy()})[0] for i in (0, 2)])
    assert check_agreement(ref, out, min_cosine=0.999).passed


def test_failed_verification_writes_nothing(tmp_path, capsys, monkeypatch):
    # The exporter's control flow with a stub export and a failing check (no second real export).
    def fake_export(model, out, *args, **kwargs):
        Path(out).write_bytes(b"onnx")
        return {"model_name": "m", "descriptor_dim": "544", "input_shape": "batch,3,70,70", "precision": "fp32", "opset": "17"}

    failing = check_agreement(np.eye(2), np.eye(2)[::-1], 0.99999)
    monkeypatch.setattr(xonnx, "export_onnx", fake_export)
    monkeypatch.setattr(xonnx, "verify_onnx", lambda *a, **k: failing)
    monkeypatch.setattr(xonnx, "load_model", lambda *a, **k: None)
    out = tmp_path / "refused.onnx"
    rc = xonnx.main(["--random-weights", "--descriptor", "salad-544", "--image-size", "70", "--out", str(out), "--quiet"])
    assert rc == 1 and not out.exists() and not list(tmp_path.iterdir())
    assert "refusing to write" in capsys.readouterr().err
    monkeypatch.setattr(xonnx, "verify_onnx", lambda *a, **k: check_agreement(np.eye(2), np.eye(2), 0.99999))
    assert xonnx.main(["--random-weights", "--descriptor", "salad-544", "--image-size", "70", "--out", str(out), "--quiet"]) == 0
    assert out.read_bytes() == b"onnx" and [p.name for p in tmp_path.iterdir()] == ["refused.onnx"]


def test_check_openvino_verifies_times_and_reports_the_fastest_path(tmp_path, capsys, monkeypatch):
    from export import openvino_check as ovc
    from salad_ros.backends import cpu_features

    out = tmp_path / "s70.onnx"
    argv = ["--random-weights", "--backbone", "dinov2_vits14", "--descriptor", "salad-544", "--image-size", "70",
            "--out", str(out), "--verify-count", "2", "--quiet", "--check-openvino"]
    assert xonnx.main(argv) == 0
    text = capsys.readouterr().out
    assert "OpenVINO 20" in text and "fp32 vs PyTorch on 2 inputs" in text and "fastest verified path here" in text
    report = json.loads(ovc.report_path(out).read_text())
    assert report["file"] == "s70.onnx" and report["passed"] and report["checks"]["fp32"]["max_abs"] < 1e-4
    assert ("bf16" in report["checks"]) == (cpu_features.cpu_bf16_problem() is None)
    assert report["fastest"] in ("torch-fp32", "openvino-fp32", "openvino-bf16")
    # The demo's choice: the report's fastest path, on this machine only.
    cpu, version = report["cpu"], report["openvino_version"]
    assert ovc.choose_path(report, cpu, version)[0] == report["fastest"]
    assert ovc.choose_path(report, "another CPU", version) == (
        "torch-fp32", f"the OpenVINO check was made on {cpu} with OpenVINO {version}, not on this machine")
    assert ovc.choose_path(report, cpu, None) == ("torch-fp32", "openvino is not installed")
    assert ovc.choose_path({**report, "passed": False}, cpu, version)[0] == "torch-fp32"
    assert ovc.main(["choose", str(ovc.report_path(out))]) == 0
    assert capsys.readouterr().out.startswith(report["fastest"] + "\t")
    assert ovc.main(["choose", str(tmp_path / "none.json")]) == 0
    assert capsys.readouterr().out.startswith("torch-fp32\tno usable OpenVINO check report")
    # A failed OpenVINO fp32 check writes neither the file nor the report.
    refused = tmp_path / "refused.onnx"
    failed = {**report["checks"]["fp32"], "passed": False, "summary": "FAIL: cosine 0.9 is below the required 0.99999"}
    monkeypatch.setattr(ovc, "check_openvino", lambda *a, **k: {**report, "passed": False,
                                                                "checks": {**report["checks"], "fp32": failed}})
    assert xonnx.main([*argv[:-6], "--out", str(refused), "--verify-count", "2", "--quiet", "--check-openvino"]) == 1
    assert "refusing to write" in capsys.readouterr().err
    assert not refused.exists() and not ovc.report_path(refused).exists()


@pytest.mark.parametrize("argv, message", [
    (["--image-size", "100"], "multiple of 14"),
    (["--image-size", "112"], "more patches than its 64 clusters"),
    (["--opset", "16"], "below 17"),
    (["--batch", "0"], "positive"),
    (["--batch", "many"], "'dynamic' or a positive integer"),
    (["--weights", "/nonexistent.ckpt"], "file not found: /nonexistent.ckpt"),
    (["--check-openvino", "--no-verify"], "cannot be combined with --no-verify"),
    (["--check-openvino", "--precision", "fp16"], "needs an fp32 export"),
])
def test_export_cli_rejects_bad_arguments(argv, message, capsys):
    base = ["--out", "x.onnx"] + ([] if "--weights" in argv else ["--random-weights"])
    with pytest.raises(SystemExit) as exc:
        xonnx.parse_args(base + argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_export_cli_defaults():
    args = xonnx.parse_args(["--random-weights", "--out", "m.onnx"])
    assert (args.image_size, args.batch, args.opset, args.precision, args.backbone) == (322, None, 17, "fp32", "dinov2_vitb14")
    assert xonnx.parse_args(["--random-weights", "--out", "m.onnx", "--batch", "8"]).batch == 8


# ---------------------------------------------------------------------------------------------
# Graph passes on small hand-made graphs


def _lse_model(opset: int, keepdims: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 1] if keepdims else [2, 3])
    if opset >= 18:
        axes = numpy_helper.from_array(np.array([2], dtype=np.int64), "axes")
        node = helper.make_node("ReduceLogSumExp", ["x", "axes"], ["y"], "/aggregator/lse", keepdims=keepdims)
        graph = helper.make_graph([node], "g", [x], [y], [axes])
    else:
        node = helper.make_node("ReduceLogSumExp", ["x"], ["y"], "/aggregator/lse", axes=[2], keepdims=keepdims)
        graph = helper.make_graph([node], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


@pytest.mark.parametrize("opset, keepdims", [(17, 0), (17, 1), (18, 0)])
def test_stable_logsumexp_is_exact_and_does_not_overflow(opset, keepdims):
    model = _lse_model(opset, keepdims)
    assert G.stabilize_logsumexp(model) == 1
    onnx.checker.check_model(model, full_check=True)
    assert "ReduceLogSumExp" not in [n.op_type for n in model.graph.node]
    x = (np.random.default_rng(0).standard_normal((2, 3, 5)) * 50 + 500).astype(np.float32)  # exp(500) = inf
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ref = np.log(np.exp(x.astype(np.float64) - x.max(2, keepdims=True)).sum(2, keepdims=True)) + x.max(2, keepdims=True)
    np.testing.assert_allclose(y, ref if keepdims else ref[..., 0], rtol=1e-6)


def test_bypass_identities_rewires_consumers():
    w = numpy_helper.from_array(np.ones((2,), np.float32), "w")
    nodes = [helper.make_node("Identity", ["w"], ["w_alias"], "id"),
             helper.make_node("Add", ["x", "w_alias"], ["y"], "add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    assert G.bypass_identities(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Add"] and list(model.graph.node[0].input) == ["x", "w"]


def _block_model() -> onnx.ModelProto:
    """A toy pre-norm block in DINOv2 naming: LayerNorm -> MatMul -> Softmax -> head MatMul."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             [("ln_w", (8,)), ("ln_b", (8,)), ("w1", (8, 8)), ("w2", (8, 4))]]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "ln_w", "ln_b"], ["n"], "/backbone/blocks.0/norm1/LayerNormalization", axis=-1),
        helper.make_node("MatMul", ["n", "w1"], ["h"], "/backbone/blocks.0/attn/MatMul"),
        helper.make_node("Softmax", ["h"], ["s"], "/backbone/blocks.0/attn/Softmax", axis=-1),
        helper.make_node("MatMul", ["s", "w1"], ["h2"], "/backbone/blocks.0/attn/MatMul_1"),
        helper.make_node("MatMul", ["h2", "w2"], ["y"], "/aggregator/score/MatMul"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_mixed_precision_casts_at_region_borders_only():
    fp32 = _block_model()
    mixed = G.to_mixed_precision(fp32)
    onnx.checker.check_model(mixed, full_check=True)
    prec = G.node_precisions(mixed)
    assert prec["/backbone/blocks.0/norm1/LayerNormalization"] == TensorProto.FLOAT
    assert prec["/backbone/blocks.0/attn/MatMul"] == TensorProto.FLOAT16
    assert prec["/backbone/blocks.0/attn/Softmax"] == TensorProto.FLOAT
    assert prec["/backbone/blocks.0/attn/MatMul_1"] == TensorProto.FLOAT16
    assert prec["/aggregator/score/MatMul"] == TensorProto.FLOAT
    assert sum(n.op_type == "Cast" for n in mixed.graph.node) == 4  # fp32->16, 16->32, 32->16, 16->32
    # w1 is shared by two fp16 matmuls: one fp16 copy; the fp32 original is no longer used.
    names = {t.name for t in mixed.graph.initializer}
    assert "w1__fp16" in names and "w1" not in names
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(mixed), run(fp32), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("name, kind, fp16", [
    ("/backbone/blocks.3/attn/qkv/MatMul", "MatMul", True),
    ("/backbone/blocks.3/mlp/fc1/MatMul", "MATRIX_MULTIPLY", True),
    ("/backbone/patch_embed/proj/Conv", "Conv", True),
    ("/backbone/blocks.3/norm1/LayerNormalization", "LayerNormalization", False),
    ("/backbone/blocks.3/norm2/ReduceMean", "REDUCE", False),
    ("/backbone/blocks.3/attn/Softmax", "SOFTMAX", False),
    ("/backbone/norm/LayerNormalization", "NORMALIZATION", False),
    ("/aggregator/ReduceLogSumExp/stable/Exp", "Exp", False),
    ("/aggregator/score/score.0/Conv", "Conv", False),
    ("(Unnamed Layer* 12) [Shuffle]", "SHUFFLE", False),
])
def test_fp16_rule(name, kind, fp16):
    assert G.runs_in_fp16(name, kind) is fp16


# ---------------------------------------------------------------------------------------------
# Acceptance logic


def test_check_agreement_accepts_and_refuses():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 64)).astype(np.float32)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert check_agreement(ref, ref.copy(), 0.99999, 1e-4).passed
    noisy = ref + rng.standard_normal(ref.shape).astype(np.float32) * 1e-3
    report = check_agreement(ref, noisy, 0.999)
    assert report.passed and 0.999 < report.min_cosine < 1.0
    assert not check_agreement(ref, noisy, 0.99999999).passed
    assert not check_agreement(ref, noisy, 0.999, max_abs=1e-4).passed  # same direction is not enough
    scaled = check_agreement(ref, ref * 2, 0.99999, 1e-4)
    assert scaled.min_cosine == pytest.approx(1.0) and not scaled.passed
    bad = ref.copy()
    bad[2, 5] = np.nan
    nan_report = check_agreement(ref, bad, 0.9)
    assert not nan_report.passed and "NaN" in nan_report.summary()
    assert not check_agreement(ref, ref[:3], 0.9).passed
    assert not check_agreement(ref, np.zeros_like(ref), 0.9).passed
    assert THRESHOLDS["fp16"][0] == 0.999 and THRESHOLDS["fp32"] == (0.99999, 1e-4)


def test_synthetic_images_are_deterministic_natural_looking_uint8():
    a, b = synthetic_images(2, 64, seed=7), synthetic_images(2, 64, seed=7)
    assert all(x.dtype == np.uint8 and x.shape == (64, 64, 3) for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert a[0].std() > 10 and not np.array_equal(a[0], a[1])
    # Most energy at low spatial frequencies, unlike white noise.
    gray = a[0].mean(2)
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(gray - gray.mean())))
    c = 32
    assert spectrum[c - 8:c + 8, c - 8:c + 8].sum() > 0.25 * spectrum.sum()  # white noise: ~0.06


# ---------------------------------------------------------------------------------------------
# TensorRT: everything that needs no GPU


def test_tensorrt_cli_arguments(exported, capsys):
    args = xtrt.parse_args(["--onnx", str(exported.path), "--precision", "fp16", "--out", "m.engine"])
    assert (args.min_batch, args.opt_batch, args.max_batch, args.reference) == (1, 1, 8, "auto")
    for argv, message in [
        (["--precision", "int8"], "invalid choice"),
        (["--precision", "fp16", "--min-batch", "4", "--opt-batch", "2"], "--min-batch <= --opt-batch"),
        (["--precision", "fp16", "--workspace-gb", "0"], "positive"),
    ]:
        with pytest.raises(SystemExit) as exc:
            xtrt.parse_args(["--onnx", str(exported.path), "--out", "m.engine", *argv])
        assert exc.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        xtrt.parse_args(["--onnx", "/nonexistent.onnx", "--precision", "fp16", "--out", "m.engine"])
    with pytest.raises(SystemExit):
        xtrt.parse_args(["--onnx", str(exported.path), "--precision", "fp16", "--out", "m.onnx"])


def test_engine_cache_key_covers_gpu_version_onnx_precision_profile():
    base = dict(gpu="NVIDIA GeForce RTX 4090", compute_capability="8.9", trt_version="10.3.0",
                onnx_sha256="ab" * 32, precision="fp16", profile=(1, 1, 8))
    key = xtrt.engine_cache_key(**base)
    assert key == xtrt.engine_cache_key(**base) and len(key) == 32 and int(key, 16) >= 0
    changes = dict(gpu="Orin", compute_capability="8.7", trt_version="10.4.0", onnx_sha256="cd" * 32,
                   precision="fp32", profile=(1, 4, 8))
    keys = {xtrt.engine_cache_key(**{**base, k: v}) for k, v in changes.items()}
    assert len(keys) == len(changes) and key not in keys


def test_batch_profile():
    assert xtrt.batch_profile("dynamic", 1, 2, 8) == (1, 2, 8)
    assert xtrt.batch_profile("4", 1, 1, 8) == (4, 4, 4)
    with pytest.raises(ValueError):
        xtrt.batch_profile("dynamic", 2, 1, 8)


class _FakeTensor:
    def __init__(self, dtype: str) -> None:
        self.dtype = SimpleNamespace(name=dtype)


class _FakeLayer:
    def __init__(self, name: str, kind: str, *dtypes: str) -> None:
        self.name, self.type = name, SimpleNamespace(name=kind)
        self.outputs = [_FakeTensor(d) for d in dtypes]
        self.num_outputs = len(dtypes)
        self.precision = None
        self.output_types: dict[int, str] = {}

    def get_output(self, i):
        return self.outputs[i]

    def set_output_type(self, i, dtype):
        self.output_types[i] = dtype


def test_weakly_typed_fp32_islands_pin_only_float_layers_outside_the_blocks():
    layers = [
        _FakeLayer("/backbone/blocks.0/norm1/LayerNormalization", "NORMALIZATION", "FLOAT"),
        _FakeLayer("/backbone/blocks.0/attn/qkv/MatMul", "MATRIX_MULTIPLY", "FLOAT"),
        _FakeLayer("/backbone/blocks.0/attn/Softmax", "SOFTMAX", "FLOAT"),
        _FakeLayer("/backbone/blocks.0/attn/Shape", "SHAPE", "INT64"),
        _FakeLayer("/aggregator/ReduceLogSumExp/stable/Exp", "UNARY", "FLOAT"),
        _FakeLayer("/aggregator/Equal", "ELEMENTWISE", "BOOL"),
        _FakeLayer("(Unnamed Layer* 3) [Shuffle]", "SHUFFLE", "FLOAT"),
    ]
    network = SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    trt = SimpleNamespace(float32="fp32")
    assert xtrt.apply_fp32_islands(network, trt) == 4
    pinned = [l.name for l in layers if l.precision == "fp32"]
    assert pinned == [layers[i].name for i in (0, 2, 4, 6)]
    assert all(l.output_types == {0: "fp32"} for l in layers if l.precision == "fp32")


def test_network_graph_choice_per_tensorrt_typing(exported_fp16):
    fp32 = _block_model()
    mixed = xtrt.network_onnx(fp32, "fp32", "fp16", strongly_typed=True)
    assert any(t.data_type == TensorProto.FLOAT16 for t in mixed.graph.initializer)
    assert xtrt.network_onnx(fp32, "fp32", "fp16", strongly_typed=False) is fp32  # constraints instead
    assert xtrt.network_onnx(fp32, "fp32", "fp32", strongly_typed=True) is fp32
    with pytest.raises(ValueError, match="cannot give an fp32 engine"):
        xtrt.network_onnx(fp32, "fp16", "fp32", strongly_typed=True)


def test_reference_weights_resolution(exported, exported_fp16, tmp_path):
    meta_random = {p.key: p.value for p in exported.proto.metadata_props}
    assert xtrt.resolve_reference_weights(meta_random, None) == (True, None)
    meta = xtrt.load_onnx_metadata(exported_fp16.path)
    assert xtrt.resolve_reference_weights(meta, None) == (True, str(exported_fp16.weights.resolve()))
    assert xtrt.resolve_reference_weights(meta, str(exported_fp16.weights)) == (True, str(exported_fp16.weights))
    assert xtrt.resolve_reference_weights({**meta, "weights_file": str(tmp_path / "gone.pth")}, None) == (False, None)
    other = tmp_path / "other.pth"
    other.write_bytes(b"not the same checkpoint")
    with pytest.raises(ValueError, match="fingerprint"):
        xtrt.resolve_reference_weights(meta, str(other))


def test_engine_sidecar_round_trip_and_refusals(exported, tmp_path):
    onnx_meta = xtrt.load_onnx_metadata(exported.path)
    report = check_agreement(np.eye(2), np.eye(2), 0.999)
    meta = xtrt.engine_metadata(onnx_meta, "ab" * 32, "fp16", "10.3.0", "Orin", "8.7", (1, 1, 8), "k" * 32,
                                report, "PyTorch fp32 on cuda:0", "strongly typed")
    engine = tmp_path / "m.engine"
    xtrt.write_engine(engine, b"serialized-engine", meta)
    assert engine.read_bytes() == b"serialized-engine" and sidecar_path(engine).name == "m.engine.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.engine.json"]
    back = read_engine_metadata(engine)
    assert back["model_name"] == onnx_meta["model_name"] and back["precision"] == "fp16"
    assert back["verification"]["min_cosine"] == pytest.approx(1.0) and back["batch_profile"] == [1, 1, 8]
    cfg = dict(backend="tensorrt", engine=str(engine), backbone="dinov2_vits14", image_size=SIZE)
    check_export_metadata(back, ModelConfig(precision="fp16", **cfg), engine)
    with pytest.raises(ConfigError, match="precision"):
        check_export_metadata(back, ModelConfig(precision="fp32", **cfg), engine)
    with pytest.raises(ConfigError, match="image_size"):
        check_export_metadata(back, ModelConfig(precision="fp16", **{**cfg, "image_size": 322}), engine)
    check_engine_runtime(back, "10.3.0", "Orin", "8.7", str(engine))
    with pytest.raises(ConfigError, match="rebuild it here"):
        check_engine_runtime(back, "10.4.0", "Orin", "8.7", str(engine))
    with pytest.raises(ConfigError, match="rebuild it here"):
        check_engine_runtime(back, "10.3.0", "NVIDIA A100", "8.0", str(engine))
    with pytest.raises(ConfigError, match="no metadata file"):
        read_engine_metadata(tmp_path / "other.engine")


def test_onnx_without_salad_metadata_is_refused(tmp_path):
    path = tmp_path / "foreign.onnx"
    onnx.save(_block_model(), str(path))
    with pytest.raises(ValueError, match="lacks salad_ros metadata"):
        xtrt.load_onnx_metadata(path)


@pytest.mark.skipif(TRT_SKIP is None, reason="tensorrt and CUDA are available: the GPU tests run instead")
def test_tensorrt_cli_says_why_it_cannot_run(exported, tmp_path, capsys):
    rc = xtrt.main(["--onnx", str(exported.path), "--precision", "fp16", "--out", str(tmp_path / "m.engine"), "--quiet"])
    assert rc == xtrt.EXIT_UNAVAILABLE and not (tmp_path / "m.engine").exists()
    assert TRT_SKIP in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# TensorRT on a GPU


@pytest.mark.gpu  # scripts/gpu_check.sh runs these on a CUDA machine
@needs_trt
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_tensorrt_engine_matches_pytorch_on_gpu(exported, tmp_path, precision):
    out = tmp_path / f"m_{precision}.engine"
    rc = xtrt.main(["--onnx", str(exported.path), "--precision", precision, "--out", str(out),
                    "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert rc == 0 and out.is_file()
    meta = read_engine_metadata(out)
    assert meta["verification"]["min_cosine"] >= THRESHOLDS[precision][0]
    # Second build of the same ONNX for the same GPU comes from the cache.
    again = tmp_path / "again.engine"
    assert xtrt.main(["--onnx", str(exported.path), "--precision", precision, "--out", str(again),
                      "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    assert again.read_bytes() == out.read_bytes()
    cfg = dict(backbone="dinov2_vits14", image_size=SIZE, device="cuda")
    trt_enc = create_encoder(ModelConfig(backend="tensorrt", engine=str(out), precision=precision, **cfg))
    torch_enc = create_encoder(ModelConfig(allow_random_weights=True, **cfg))
    images = synthetic_images(3, 200, seed=11)
    assert trt_enc.model_name == torch_enc.model_name
    assert check_agreement(torch_enc.encode(images), trt_enc.encode(images), THRESHOLDS[precision][0]).passed


@pytest.mark.gpu  # scripts/gpu_check.sh runs these on a CUDA machine
@needs_trt
def test_tensorrt_refuses_engine_that_fails_the_check(exported, tmp_path):
    out = tmp_path / "strict.engine"
    rc = xtrt.main(["--onnx", str(exported.path), "--precision", "fp16", "--out", str(out), "--min-cosine", "1.0",
                    "--no-cache", "--quiet"])
    assert rc == xtrt.EXIT_REFUSED and not out.exists()
