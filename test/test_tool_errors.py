"""The offline tools on bad input: one line ``error: ...`` on stderr, exit 2, nothing written, no
traceback (training --export-weights, export.onnx, salad_demo_bag)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from salad_ros.model import build_model

pytestmark = pytest.mark.timeout(300)


def one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def small_state() -> dict[str, torch.Tensor]:
    return build_model("dinov2_vits14", "salad-544", num_trainable_blocks=0).state_dict()


def _bad_checkpoints(tmp: Path, state: dict[str, torch.Tensor]) -> dict[str, Path]:
    """Checkpoints no model can load, by kind."""
    files = {}
    wrong = dict(state)
    wrong["aggregator.score.0.weight"] = torch.zeros(7, 7)
    files["wrong shapes"] = tmp / "wrong_shape.pth"
    torch.save(wrong, files["wrong shapes"])
    mixed = dict(state)  # a ViT-S backbone with the aggregator of another variant
    mixed.update({k: v for k, v in build_model("dinov2_vits14", "salad-2112", num_trainable_blocks=0).state_dict().items()
                  if k.startswith("aggregator.")})
    mixed["aggregator.token_features.0.weight"] = torch.zeros(256, 768)  # ... fed by a ViT-B
    files["mixed models"] = tmp / "mixed.pth"
    torch.save(mixed, files["mixed models"])
    files["text"] = tmp / "notes.pth"
    files["text"].write_text("this is not a checkpoint\n")
    good = tmp / "good.pth"
    torch.save(state, good)
    files["truncated"] = tmp / "truncated.pth"
    files["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files["missing"] = tmp / "missing.pth"
    return files


KINDS = ["wrong shapes", "mixed models", "text", "truncated", "missing"]


@pytest.mark.parametrize("kind", KINDS)
def test_export_weights_refuses_a_checkpoint_no_model_can_load(tmp_path: Path, small_state, kind: str,
                                                                capsys: pytest.CaptureFixture) -> None:
    from training import train as train_mod

    bad = _bad_checkpoints(tmp_path, small_state)[kind]
    dest = tmp_path / "out" / "weights.pth"
    assert train_mod.main(["--export-weights", str(bad), "--export-to", str(dest)]) == 2
    assert one_line_error(capsys).startswith("error: ")
    assert not dest.exists()


def test_export_weights_of_a_flat_file_names_the_model_it_fits(tmp_path: Path, small_state,
                                                              capsys: pytest.CaptureFixture) -> None:
    from training import train as train_mod

    src = tmp_path / "flat.pth"
    torch.save({f"module.{k}": v for k, v in small_state.items()}, src)  # a DDP-wrapped save
    assert train_mod.main(["--export-weights", str(src), "--export-to", str(tmp_path / "w.pth")]) == 0
    assert "dinov2_vits14" in capsys.readouterr().out and (tmp_path / "w.pth").is_file()
    # A training checkpoint whose recorded model is not the one its weights fit: refused.
    ckpt = tmp_path / "run.ckpt"
    torch.save({"state_dict": small_state, "config": {"backbone": "dinov2_vitb14", "num_clusters": 16,
                                                      "cluster_dim": 32, "token_dim": 32}}, ckpt)
    assert train_mod.main(["--export-weights", str(ckpt), "--export-to", str(tmp_path / "x.pth")]) == 2
    assert "dinov2_vitb14" in one_line_error(capsys) and not (tmp_path / "x.pth").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_onnx_export_of_a_bad_checkpoint_is_one_line(tmp_path: Path, small_state, kind: str,
                                                     capsys: pytest.CaptureFixture) -> None:
    from export import onnx as xonnx

    bad = _bad_checkpoints(tmp_path, small_state)[kind]
    out = tmp_path / "m.onnx"
    argv = ["--weights", str(bad), "--backbone", "dinov2_vits14", "--descriptor", "salad-544", "--image-size", "70",
            "--out", str(out), "--quiet"]
    try:
        rc = xonnx.main(argv)
    except SystemExit as exc:  # argument errors exit from the parser
        rc = exc.code
    assert rc == 2
    assert "error: " in one_line_error(capsys)
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("photos", ["/nonexistent", "file"])
def test_demo_bag_with_a_photo_folder_that_is_not_one(tmp_path: Path, photos: str,
                                                     capsys: pytest.CaptureFixture) -> None:
    from salad_ros.evaluation import demo_bag

    if photos == "file":
        photos = str(tmp_path / "a.jpg")
        Path(photos).write_bytes(b"x")
    assert demo_bag.main([str(tmp_path / "bag"), "--frames", "4", "--photos", photos]) == 2
    assert photos in one_line_error(capsys) and not (tmp_path / "bag").exists()
