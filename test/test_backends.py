"""Inference backends: torch and onnxruntime agree, exported files are checked against the
configuration, and the node and ``salad_replay`` run with the onnxruntime backend on the CPU.

One ONNX export per module: ViT-S / 8448-D at 224 px with random weights (the model of the node
tests, so their detector thresholds hold), dynamic batch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from export import onnx as xonnx
from export.compare import check_agreement, synthetic_images
from salad_ros.backends import ModelConfig, create_encoder
from salad_ros.backends.contract import run_in_batches
from salad_ros.backends.onnxruntime_backend import OnnxRuntimeEncoder, select_providers
from salad_ros.backends.tensorrt_backend import unavailable_reason
from salad_ros.params import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SIZE = 224
MODEL = {"backbone": "dinov2_vits14", "image_size": SIZE, "device": "cpu"}


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("backends") / "salad_s224.onnx"
    assert xonnx.main(["--random-weights", "--backbone", "dinov2_vits14", "--image-size", str(SIZE),
                       "--out", str(out), "--verify-count", "2", "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def encoders(onnx_file) -> SimpleNamespace:
    torch_enc = create_encoder(ModelConfig(allow_random_weights=True, **MODEL))
    ort_enc = create_encoder(ModelConfig(backend="onnxruntime", engine=str(onnx_file), batch_size=2, **MODEL))
    return SimpleNamespace(torch=torch_enc, ort=ort_enc)


def _images() -> list[np.ndarray]:
    """Images of different sizes and aspect ratios (the shared preprocessing resizes them)."""
    return [synthetic_images(1, 300, seed=1)[0], synthetic_images(1, 160, seed=2)[0][:, :120].copy(),
            synthetic_images(1, 224, seed=3)[0]]


def test_torch_and_onnxruntime_give_matching_descriptors(encoders):
    t, o = encoders.torch, encoders.ort
    assert isinstance(o, OnnxRuntimeEncoder) and o.backend == "onnxruntime" and o.device == "cpu"
    assert (o.model_name, o.dim, o.input_size) == (t.model_name, t.dim, t.input_size)
    images = _images()
    for color, batch in (("rgb", images), ("bgr", images[:1])):
        a, b = t.encode(batch, color), o.encode(batch, color)
        assert b.dtype == np.float32 and b.shape == (len(batch), 8448)
        np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
        report = check_agreement(a, b, min_cosine=0.99999, max_abs=1e-4)
        assert report.passed, report.summary()


def test_onnxruntime_batching_does_not_change_descriptors(encoders):
    images = synthetic_images(3, 224, seed=4)  # batch_size 2: split into 2 + 1
    together = encoders.ort.encode(images)
    alone = np.concatenate([encoders.ort.encode([img]) for img in images])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert encoders.ort.heatmap(images[0]) is None  # optional, not in the exported graph


def test_run_in_batches_splits_and_pads_for_static_batches():
    calls = []

    def fn(x):
        calls.append(x.shape[0])
        return x * 2

    x = np.arange(7, dtype=np.float32).reshape(7, 1)
    np.testing.assert_array_equal(run_in_batches(x, fn, fixed_batch=3), x * 2)
    assert calls == [3, 3, 3]  # last chunk padded from 1 to 3, extra rows dropped
    calls.clear()
    np.testing.assert_array_equal(run_in_batches(x, fn, fixed_batch=None, max_batch=4), x * 2)
    assert calls == [4, 3]
    calls.clear()
    t = torch.arange(5.0).reshape(5, 1)
    assert torch.equal(run_in_batches(t, fn, fixed_batch=2), t * 2) and calls == [2, 2, 2]


def _cfg(onnx_file, **changes) -> ModelConfig:
    return ModelConfig(**{"backend": "onnxruntime", "engine": str(onnx_file), **MODEL, **changes})


@pytest.mark.parametrize("changes, message", [
    ({"image_size": 322}, "parameter 'image_size': configured 322 but .* was exported with image_size 224; "
                          "set image_size: 224 or re-export with --image-size 322"),
    ({"backbone": "dinov2_vitb14"}, "parameter 'backbone': configured dinov2_vitb14 .* backbone dinov2_vits14"),
    ({"descriptor": "salad-2112"}, "parameter 'descriptor': configured salad-2112 .* descriptor salad-8448"),
    ({"precision": "fp16"}, "parameter 'precision': configured fp16 but .* computes in fp32"),
    ({"engine": "/nonexistent/model.onnx"}, "parameter 'engine': ONNX file /nonexistent/model.onnx does not exist"),
])
def test_onnxruntime_refuses_a_file_that_does_not_match_the_configuration(onnx_file, changes, message):
    with pytest.raises(ConfigError, match=message):
        create_encoder(_cfg(onnx_file, **changes))


def test_onnxruntime_refuses_other_weights_and_foreign_files(onnx_file, tmp_path):
    other = tmp_path / "other.ckpt"
    other.write_bytes(b"another checkpoint")
    with pytest.raises(ConfigError, match="parameter 'weights': .* is not the checkpoint .* was exported from"):
        create_encoder(_cfg(onnx_file, weights=str(other)))
    wrong_suffix = tmp_path / "model.engine"
    wrong_suffix.write_bytes(onnx_file.read_bytes()[:100])
    with pytest.raises(ConfigError, match="takes an .onnx file"):
        create_encoder(_cfg(wrong_suffix))
    foreign = tmp_path / "foreign.onnx"
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["descriptors"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("descriptors", TensorProto.FLOAT, [1, 3, SIZE, SIZE])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(foreign))
    with pytest.raises(ConfigError, match="carries no salad_ros metadata .*'python -m export.onnx'"):
        create_encoder(_cfg(foreign))


def test_provider_selection():
    cpu_only = ["AzureExecutionProvider", "CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers("cpu", gpu, True) == ["CPUExecutionProvider"]
    assert select_providers("auto", cpu_only, False) == ["CPUExecutionProvider"]
    # TensorRT's provider is listed by every GPU build; without TensorRT installed it is skipped.
    assert select_providers("auto", gpu, False) == [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    chosen = select_providers("cuda:1", gpu, True, cache_dir="/tmp/c")
    assert chosen[0] == ("TensorrtExecutionProvider", {"device_id": 1, "trt_engine_cache_enable": True,
                                                       "trt_engine_cache_path": "/tmp/c"})
    assert chosen[1:] == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    with pytest.raises(ConfigError, match="parameter 'device': cuda requested but this onnxruntime has no CUDA"):
        select_providers("cuda", cpu_only, False)




@pytest.mark.skipif(unavailable_reason() is None, reason="tensorrt and CUDA are available here")
def test_tensorrt_backend_says_why_it_cannot_run(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    with pytest.raises(ConfigError, match="parameter 'backend': tensorrt cannot run here: (tensorrt not importable|no CUDA device)"):
        create_encoder(ModelConfig(backend="tensorrt", engine=str(engine), **MODEL))


@pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")
def test_tensorrt_backend_refuses_onnx_and_engines_without_metadata(onnx_file, tmp_path):
    cfg = dict(MODEL, device="cuda")
    with pytest.raises(ConfigError, match="takes a built engine"):
        create_encoder(ModelConfig(backend="tensorrt", engine=str(onnx_file), **cfg))
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    with pytest.raises(ConfigError, match="has no metadata file"):
        create_encoder(ModelConfig(backend="tensorrt", engine=str(engine), **cfg))


# ---------------------------------------------------------------------------------------------
# The node and salad_replay with backend onnxruntime


def test_node_runs_with_the_onnxruntime_backend(onnx_file):
    pytest.importorskip("rclpy")
    sys.path.insert(0, str(Path(__file__).parent))
    import rclpy
    from _ros_helpers import SEC, TEST_DETECTOR, Collector, Spinner, publish_sequence, wait_until
    from rclpy.context import Context
    from rclpy.parameter import Parameter

    from salad_ros.node import LoopClosureNode

    params = {**MODEL, **TEST_DETECTOR, "backend": "onnxruntime", "engine": str(onnx_file), "reliable_qos": True,
              "diagnostics_period": 0.25}
    ctx = Context()
    rclpy.init(context=ctx)
    node = col = None
    try:
        # The node builds its own onnxruntime encoder from the parameters (the real start-up path).
        node = LoopClosureNode(context=ctx, namespace="/ort",
                               parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        col = Collector("/ort/salad_loop_closure", context=ctx, image_topic="/ort/image")
        with Spinner(ctx, node, col):
            assert col.wait_for_node()
            stamps = publish_sequence(col, [0, 1, 2, 0], t0_ns=100 * SEC, period=0.1,
                                      processed=lambda: node.stats.processed)
            assert wait_until(lambda: len(col.keyframes) == 4, 10)
            found = {q: rows for q, rows in col.candidate_rows()}
            assert sorted(found) == [stamps[3]] and found[stamps[3]]["match_id"].tolist()[0] == 0
            assert wait_until(lambda: (col.last_diagnostics() or {}).get("frames_processed") == "4", 5)
            diag = col.last_diagnostics()
            assert diag["backend"] == "onnxruntime" and diag["device"] == "cpu"
            assert diag["model"] == f"dinov2_vits14/64x128+256@{SIZE}/random"
            assert diag["random_weights"] == "true"  # exported from random weights: still flagged
    finally:
        for n in (node, col):
            if n is not None:
                n.destroy_node()
        rclpy.shutdown(context=ctx)


def test_replay_runs_with_the_onnxruntime_backend(onnx_file, tmp_path):
    from salad_ros.evaluation import demo_bag, replay

    bag = tmp_path / "bag"
    info = demo_bag.generate(bag, frames=8, size=(160, 120), supersample=1)
    out = tmp_path / "ort"
    assert replay.main([str(bag), "--image-topic", info["image_topic"], "--gt-topic", info["odom_topic"],
                        "--backbone", "dinov2_vits14", "--image-size", str(SIZE), "--device", "cpu", "--batch-size", "4",
                        "--set", "backend=onnxruntime", "--set", f"engine={onnx_file}", "--out", str(out),
                        "--no-plots", "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["frames_processed"] == 8 and report["keyframes"] >= 1
    assert report["model"].startswith(f"onnxruntime on cpu, dinov2_vits14/64x128+256@{SIZE}/random")
    assert report["config"]["backend"] == "onnxruntime" and (out / "keyframes.csv").is_file()
