"""Inference backends: torch, onnxruntime and OpenVINO agree, exported files are checked against
the configuration, bf16 runs only on a CPU that has it, and the node and ``salad_replay`` run with
the onnxruntime and openvino backends on the CPU.

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
from salad_ros.backends import ModelConfig, cpu_features, create_encoder
from salad_ros.backends import openvino_backend as ovb
from salad_ros.backends.contract import run_in_batches
from salad_ros.backends.onnxruntime_backend import OnnxRuntimeEncoder, select_providers
from salad_ros.backends.tensorrt_backend import unavailable_reason
from salad_ros.params import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SIZE = 224
MODEL = {"backbone": "dinov2_vits14", "image_size": SIZE, "device": "cpu"}
BF16_PROBLEM = cpu_features.cpu_bf16_problem()
needs_cpu_bf16 = pytest.mark.skipif(BF16_PROBLEM is not None, reason=f"no native bf16 here: {BF16_PROBLEM}")


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """Compiled-model caches (OpenVINO, TensorRT) go to a folder of this module, not ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SALAD_ROS_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


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


def _assert_matches_torch(t, o) -> None:
    """``o`` gives torch fp32's unit-norm descriptors, in RGB and BGR input order alike."""
    images = _images()
    for color, batch in (("rgb", images), ("bgr", images[:1])):
        a, b = t.encode(batch, color), o.encode(batch, color)
        assert b.dtype == np.float32 and b.shape == (len(batch), 8448)
        np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
        report = check_agreement(a, b, min_cosine=0.99999, max_abs=1e-4)
        assert report.passed, report.summary()


def test_torch_and_onnxruntime_give_matching_descriptors(encoders):
    t, o = encoders.torch, encoders.ort
    assert isinstance(o, OnnxRuntimeEncoder) and o.backend == "onnxruntime" and o.device == "cpu"
    assert (o.model_name, o.dim, o.input_size) == (t.model_name, t.dim, t.input_size)
    _assert_matches_torch(t, o)


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



# ---------------------------------------------------------------------------------------------
# OpenVINO and CPU bf16


@pytest.fixture(scope="module")
def ov_fp32(onnx_file):
    return create_encoder(ModelConfig(backend="openvino", engine=str(onnx_file), batch_size=2, **MODEL))


def test_openvino_fp32_matches_torch_fp32(encoders, ov_fp32):
    t, o = encoders.torch, ov_fp32
    assert isinstance(o, ovb.OpenVINOEncoder) and (o.backend, o.device, o.precision) == ("openvino", "cpu", "fp32")
    assert (o.model_name, o.dim, o.input_size) == (t.model_name, t.dim, t.input_size) and o.random_weights
    # Precision and threads are what was asked for, not OpenVINO's defaults (bf16 where the CPU has it).
    assert o.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
    assert o.compiled.get_property("INFERENCE_NUM_THREADS") == torch.get_num_threads()
    _assert_matches_torch(t, o)
    # batch_size 2: three images run as 2 + 1, same descriptors as one at a time
    images = _images()
    alone = np.concatenate([o.encode([img]) for img in images])
    np.testing.assert_allclose(o.encode(images), alone, atol=1e-5)


@needs_cpu_bf16
def test_bf16_on_this_cpu_stays_close_to_fp32(encoders, onnx_file):
    images = _images()
    reference = encoders.torch.encode(images)
    ov_bf16 = create_encoder(ModelConfig(backend="openvino", engine=str(onnx_file), precision="bf16", **MODEL))
    assert ov_bf16.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "bf16"
    torch_bf16 = create_encoder(ModelConfig(allow_random_weights=True, precision="bf16", **MODEL))
    assert torch_bf16.device == "cpu" and torch_bf16.precision == "bf16"
    for enc in (ov_bf16, torch_bf16):
        out = enc.encode(images)
        report = check_agreement(reference, out, min_cosine=0.999)
        assert report.passed, f"{enc.backend}: {report.summary()}"
        assert report.max_abs > 1e-7, f"{enc.backend} bf16 gave fp32-exact descriptors: bf16 was not used"
    assert torch_bf16.heatmap(images[0]).shape == (SIZE // 14, SIZE // 14)


def _play_cpu(monkeypatch, machine: str, flags: set[str]) -> None:
    monkeypatch.setattr(cpu_features, "cpu_machine", lambda: machine)
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: frozenset(flags))


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_bf16_is_refused_in_one_line_on_a_cpu_without_it(monkeypatch, onnx_file, backend):
    _play_cpu(monkeypatch, "x86_64", {"sse4_2", "avx2", "avx512f", "fma"})
    cfg = {"allow_random_weights": True} if backend == "torch" else {"engine": str(onnx_file)}
    with pytest.raises(ConfigError) as err:
        create_encoder(ModelConfig(backend=backend, precision="bf16", **cfg, **MODEL))
    message = str(err.value)
    assert "\n" not in message and message.startswith("parameter 'precision': bf16 on the CPU")
    assert "avx512_bf16 or amx_bf16" in message and "use precision: fp32" in message


def test_cpu_bf16_detection_per_architecture(monkeypatch):
    x86 = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n\nprocessor\t: 1\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n"
    assert "avx512_bf16" in cpu_features.parse_cpuinfo_flags(x86)
    assert cpu_features.native_bf16_flags(cpu_features.parse_cpuinfo_flags(x86), "x86_64") == ["avx512_bf16"]
    assert cpu_features.native_bf16_flags({"amx_bf16"}, "AMD64") == ["amx_bf16"]
    assert cpu_features.native_bf16_flags(cpu_features.parse_cpuinfo_flags(arm), "aarch64") == ["bf16"]
    assert cpu_features.native_bf16_flags({"fp", "asimd"}, "aarch64") == []
    assert cpu_features.native_bf16_flags({"bf16"}, "x86_64") == []  # an Arm name means nothing on x86
    _play_cpu(monkeypatch, "aarch64", {"fp", "asimd", "bf16"})
    assert cpu_features.cpu_bf16_problem() is None and cpu_features.main(["--quiet"]) == 0
    cpu_features.require_cpu_bf16("torch")  # no error
    _play_cpu(monkeypatch, "riscv64", {"bf16"})
    assert "no native bf16 check for architecture 'riscv64'" in cpu_features.cpu_bf16_problem()
    assert cpu_features.main(["--quiet"]) == 1


def test_fp16_and_cuda_are_refused_for_openvino_and_fp16_for_torch_on_the_cpu(onnx_file):
    with pytest.raises(ConfigError, match="parameter 'precision': fp16 needs CUDA or TensorRT; backend openvino"):
        ModelConfig(backend="openvino", engine=str(onnx_file), precision="fp16", **MODEL)
    with pytest.raises(ConfigError, match="parameter 'device': backend openvino runs on the CPU, got cuda"):
        ModelConfig(backend="openvino", engine=str(onnx_file), **{**MODEL, "device": "cuda"})
    with pytest.raises(ConfigError, match="parameter 'precision': fp16 needs a CUDA device"):
        create_encoder(ModelConfig(allow_random_weights=True, precision="fp16", **MODEL))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("changes, message", [
    ({"image_size": 322}, "parameter 'image_size': configured 322 but .* was exported with image_size 224"),
    ({"backbone": "dinov2_vitb14"}, "parameter 'backbone': configured dinov2_vitb14 .* backbone dinov2_vits14"),
    ({"descriptor": "salad-544"}, "parameter 'descriptor': configured salad-544 .* descriptor salad-8448"),
    ({"engine": "/nonexistent/model.onnx"}, "parameter 'engine': ONNX file /nonexistent/model.onnx does not exist"),
])
def test_onnx_backends_refuse_another_model_size_or_backbone(onnx_file, backend, changes, message):
    with pytest.raises(ConfigError, match=message):
        create_encoder(_cfg(onnx_file, backend=backend, **changes))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_onnx_backends_refuse_corrupt_files_in_one_line(onnx_file, tmp_path, backend):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(bytes(range(256)) * 64)
    truncated = tmp_path / "truncated.onnx"
    with open(onnx_file, "rb") as src:
        truncated.write_bytes(src.read(onnx_file.stat().st_size // 2))
    for bad in (garbage, truncated):
        with pytest.raises(ConfigError) as err:
            create_encoder(_cfg(onnx_file, backend=backend, engine=str(bad)))
        assert str(err.value).startswith("parameter 'engine': ") and "\n" not in str(err.value), str(err.value)
    other = tmp_path / "other.ckpt"
    other.write_bytes(b"another checkpoint")
    with pytest.raises(ConfigError, match="parameter 'weights': .* is not the checkpoint .* was exported from"):
        create_encoder(_cfg(onnx_file, backend=backend, weights=str(other)))


def test_openvino_refuses_fp16_exports_and_files_without_the_interface(onnx_file, tmp_path):
    meta = {p.key: p.value for p in onnx.load(str(onnx_file), load_external_data=False).metadata_props}

    def tiny(path: Path, precision: str, out_name: str) -> Path:
        graph = helper.make_graph([helper.make_node("Identity", ["images"], [out_name])], "g",
                                  [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
                                  [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [1, 3, SIZE, SIZE])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        for key, value in {**meta, "precision": precision}.items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, str(path))
        return path

    with pytest.raises(ConfigError, match="parameter 'engine': .* is a fp16 export .* needs an fp32 export"):
        create_encoder(_cfg(onnx_file, backend="openvino", engine=str(tiny(tmp_path / "h.onnx", "fp16", "descriptors"))))
    with pytest.raises(ConfigError, match="parameter 'engine': .* lacks the 'images' input or 'descriptors' output"):
        create_encoder(_cfg(onnx_file, backend="openvino", engine=str(tiny(tmp_path / "o.onnx", "fp32", "other"))))


def test_openvino_cache_is_per_version_and_file_and_survives_garbage(onnx_file, ov_fp32, tmp_path, monkeypatch):
    version = "2026.4.1-22982-e213a147257-releases/2026/4"
    mine = ovb.cache_dir_for(onnx_file, version, tmp_path)
    assert mine.parent == tmp_path and mine.name.startswith("ov2026.4.1_22982_e213a147257-")
    assert ovb.cache_dir_for(onnx_file, "2025.4.0-1234", tmp_path) != mine
    # The module's encoder wrote its compiled blob into the per-version folder of this file.
    assert ov_fp32.cache_dir is not None and any(ov_fp32.cache_dir.iterdir())
    # A cache "written by another version" (garbage in every file): the encoder still starts and is right.
    for blob in ov_fp32.cache_dir.iterdir():
        blob.write_bytes(b"not an OpenVINO blob" * 100)
    again = create_encoder(_cfg(onnx_file, backend="openvino"))
    images = _images()[:2]
    np.testing.assert_allclose(again.encode(images), ov_fp32.encode(images), atol=1e-6)
    # Another version's folder of the same file is removed when this one is used.
    stale = ovb.cache_dir_for(onnx_file, "2024.0.0-1", ov_fp32.cache_dir.parent)
    stale.mkdir()
    (stale / "old.blob").write_bytes(b"x")
    create_encoder(_cfg(onnx_file, backend="openvino"))
    assert not stale.exists() and ov_fp32.cache_dir.is_dir()


def test_openvino_compiles_without_the_cache_when_the_cache_fails(onnx_file, tmp_path, caplog):
    import openvino as ov

    class CacheRefusingCore:
        """OpenVINO whose compile fails whenever a cache folder is given (as a foreign blob might)."""

        def __init__(self):
            self.core, self.calls = ov.Core(), []

        def compile_model(self, path, device, config):
            self.calls.append(dict(config))
            if "CACHE_DIR" in config:
                raise RuntimeError("Exception from src/inference/src/cache_manager.hpp: bad blob\nsecond line")
            return self.core.compile_model(path, device, config)

    fake_core = CacheRefusingCore()
    fake_ov = SimpleNamespace(Core=lambda: fake_core)
    cache = tmp_path / "ov-cache"
    cache.mkdir()
    (cache / "123.blob").write_bytes(b"junk")
    props = ovb.compile_properties("fp32", 2)
    with caplog.at_level("WARNING", logger=ovb.__name__):
        compiled = ovb.compile_onnx(fake_ov, onnx_file, props, cache)
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 2
    assert [("CACHE_DIR" in c) for c in fake_core.calls] == [True, False] and not cache.exists()
    assert "compiling without the cache" in caplog.text and "bad blob second line" in caplog.text
    # Failing without the cache too is the file's fault: one ConfigError naming 'engine'.
    with pytest.raises(ConfigError, match="parameter 'engine': OpenVINO cannot compile"):
        ovb.compile_onnx(SimpleNamespace(Core=lambda: SimpleNamespace(compile_model=_raise)), onnx_file, props, None)


def _raise(*_args):
    raise RuntimeError("cannot")


def test_openvino_properties_are_explicit():
    assert ovb.compile_properties("bf16", 3) == {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": 3,
                                                 "PERFORMANCE_HINT": "LATENCY"}
    assert ovb.compile_properties("fp32", 1)["INFERENCE_PRECISION_HINT"] == "f32"
    with pytest.raises(ConfigError, match="parameter 'precision'"):
        ovb.compile_properties("fp16", 1)




@pytest.mark.skipif(unavailable_reason() is None, reason="tensorrt and CUDA are available here")
def test_tensorrt_backend_says_why_it_cannot_run(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    with pytest.raises(ConfigError, match="parameter 'backend': tensorrt cannot run here: (tensorrt not importable|no CUDA device)"):
        create_encoder(ModelConfig(backend="tensorrt", engine=str(engine), **MODEL))


@pytest.mark.gpu  # scripts/gpu_check.sh runs it on a CUDA machine
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


def test_replay_runs_with_the_openvino_backend(onnx_file, tmp_path):
    from salad_ros.evaluation import demo_bag, replay

    bag = tmp_path / "bag"
    info = demo_bag.generate(bag, frames=8, size=(160, 120), supersample=1)
    precision = "bf16" if BF16_PROBLEM is None else "fp32"
    out = tmp_path / "ov"
    assert replay.main([str(bag), "--image-topic", info["image_topic"], "--gt-topic", info["odom_topic"],
                        "--backbone", "dinov2_vits14", "--image-size", str(SIZE), "--device", "cpu", "--batch-size", "4",
                        "--set", "backend=openvino", "--set", f"engine={onnx_file}", "--set", f"precision={precision}",
                        "--out", str(out), "--no-plots", "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["frames_processed"] == 8 and report["keyframes"] >= 1
    assert report["model"].startswith(f"openvino on cpu, dinov2_vits14/64x128+256@{SIZE}/random")
    assert report["config"]["backend"] == "openvino" and report["config"]["precision"] == precision
