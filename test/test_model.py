"""DINOv2 SALAD model: Sinkhorn, descriptor layout, checkpoint loading, preprocessing."""

import logging
import math
import pickle

import numpy as np
import pytest
import torch

from salad_ros.model import (
    SALAD,
    CheckpointError,
    DinoSalad,
    assignment_log_probs,
    build_model,
    input_size,
    load_model,
    preprocess,
)
from salad_ros.model.backbone import _use_xformers


def reference_sinkhorn(scores: np.ndarray, dust: float, iters: int) -> np.ndarray:
    """Independent float64 Sinkhorn in the scaling (not log) domain: plan = diag(u) K diag(v)."""
    m, n = scores.shape
    K = np.exp(np.vstack([scores, np.full((1, n), dust)]))
    a = np.full(m + 1, 1.0 / (n + m))
    a[-1] = (n - m) / (n + m)
    b = np.full(n, 1.0 / (n + m))
    v = np.ones(n)
    for _ in range(iters):
        u = a / (K @ v)
        v = b / (K.T @ u)
    return (u[:, None] * K * v[None, :]) * (n + m)


def test_sinkhorn_meets_marginals_when_converged():
    torch.manual_seed(0)
    m, n = 8, 50
    scores = torch.randn(2, m, n) * 3
    plan = assignment_log_probs(scores, torch.tensor(1.0), num_iters=300).exp() / (n + m)
    rows, cols = plan.sum(2), plan.sum(1)
    assert torch.allclose(rows[:, :m], torch.full((2, m), 1 / (n + m)), atol=1e-3)
    assert torch.allclose(rows[:, m], torch.full((2,), (n - m) / (n + m)), atol=1e-3)
    assert torch.allclose(cols, torch.full((2, n), 1 / (n + m)), atol=1e-3)


def test_sinkhorn_three_iterations_matches_float64_reference():
    rng = np.random.default_rng(1)
    m, n = 6, 30
    scores = rng.normal(size=(m, n)) * 2
    ours = assignment_log_probs(torch.from_numpy(scores)[None], torch.tensor(0.7, dtype=torch.float64), 3).exp()[0]
    ref = reference_sinkhorn(scores, 0.7, 3)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10, atol=1e-12)
    # After the column update each feature's weights (clusters + dustbin) sum to one.
    np.testing.assert_allclose(ref.sum(0), np.ones(n), atol=1e-12)


def test_sinkhorn_refuses_fewer_patches_than_clusters():
    with pytest.raises(ValueError, match="more patches than clusters"):
        assignment_log_probs(torch.randn(1, 16, 16), torch.tensor(1.0))


def small_aggregator() -> SALAD:
    torch.manual_seed(0)
    return SALAD(num_channels=32, num_clusters=4, cluster_dim=8, token_dim=6).eval()


def test_descriptor_layout_and_norms():
    agg = small_aggregator()
    assert agg.dust_bin.item() == 1.0
    m, l, g = 4, 8, 6
    desc = agg(torch.randn(3, 32), torch.randn(3, 32, 5, 7))
    assert desc.shape == (3, g + m * l)
    assert torch.allclose(desc.norm(dim=1), torch.ones(3), atol=1e-6)
    # Before the final normalisation the token and each cluster vector are unit length, so
    # afterwards each block has norm 1/sqrt(1+m). Clusters: feature dim outer, cluster inner.
    scale = 1 / math.sqrt(1 + m)
    assert torch.allclose(desc[:, :g].norm(dim=1), torch.full((3,), scale), atol=1e-6)
    clusters = desc[:, g:].reshape(3, l, m)
    assert torch.allclose(clusters.norm(dim=1), torch.full((3, m), scale), atol=1e-6)


def test_descriptor_matches_explicit_per_cluster_sum():
    agg = small_aggregator()
    cls, fmap = torch.randn(1, 32), torch.randn(1, 32, 5, 7)
    local = agg.cluster_features(fmap).flatten(2)[0]  # [l, n]
    w = agg.assignments(fmap)[0]  # [m, n]
    blocks = [local @ w[j] for j in range(4)]  # weighted sum per cluster, no residuals
    blocks = [b / b.norm() for b in blocks]
    token = agg.token_features(cls)[0]
    expected = torch.cat([token / token.norm(), torch.stack(blocks, dim=1).flatten()])
    assert torch.allclose(agg(cls, fmap)[0], expected / expected.norm(), atol=1e-6)


def test_aggregator_invariant_to_patch_permutation():
    agg = small_aggregator()
    cls, fmap = torch.randn(2, 32), torch.randn(2, 32, 1, 35)
    perm = torch.randperm(35)
    assert torch.allclose(agg(cls, fmap), agg(cls, fmap[..., perm]), atol=1e-6)


@pytest.fixture(scope="module")
def vits() -> DinoSalad:
    return build_model("dinov2_vits14").eval()


def test_vits_batch_equals_single_images(vits):
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        both = vits(x)
        one, two = vits(x[:1]), vits(x[1:])
    assert both.shape == (2, 8448)
    assert torch.allclose(both, torch.cat([one, two]), atol=1e-5)
    assert torch.allclose(both.norm(dim=1), torch.ones(2), atol=1e-5)


def test_patch_assignments_for_heat_maps(vits):
    tokens, weights, grid = vits.patch_assignments(torch.randn(3, 224, 252))
    assert grid == (16, 18) and tokens.shape == (16 * 18, 384) and weights.shape == (64, 16 * 18)
    assert bool((weights.sum(0) <= 1 + 1e-5).all())  # the dustbin takes the rest


def test_positional_embedding_interpolation(vits):
    vit = vits.backbone.model
    assert vit.interpolated_pos_embed(37, 37) is vit.pos_embed  # native 518 px grid
    pe = vit.interpolated_pos_embed(23, 16)
    assert pe.shape == (1, 1 + 23 * 16, 384)
    assert torch.equal(pe[:, 0], vit.pos_embed[:, 0])  # class position kept


def test_vitb_builds_with_released_names():
    model = build_model("dinov2_vitb14")
    state = model.state_dict()
    assert len(state) == 188
    assert state["aggregator.score.3.weight"].shape == (64, 512, 1, 1)
    assert state["aggregator.cluster_features.3.weight"].shape == (128, 512, 1, 1)
    assert state["aggregator.token_features.2.weight"].shape == (256, 512)
    assert state["backbone.model.pos_embed"].shape == (1, 1370, 768)
    assert model.output_dim == 8448
    trainable = {n.split(".")[2] for n, p in model.backbone.named_parameters() if p.requires_grad and "blocks" in n}
    assert trainable == {"8", "9", "10", "11"}  # last 4 of 12 blocks


def test_variants_and_random_init_is_reproducible():
    a = build_model("dinov2_vits14", variant="salad-544")
    b = build_model("dinov2_vits14", variant="salad-544")
    assert a.output_dim == 16 * 32 + 32
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_xformers_never_used_on_cpu():
    assert not _use_xformers(torch.zeros(1))


# --- checkpoints -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def released_state(vits):
    torch.manual_seed(3)
    return {k: torch.randn_like(v) * 0.02 for k, v in vits.state_dict().items()}


def test_flat_checkpoint_loads_and_gives_same_descriptors(tmp_path, released_state):
    path = tmp_path / "dino_salad.ckpt"
    torch.save(released_state, path)
    model = load_model(str(path), backbone="dinov2_vits14")
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, released_state[k]), k
    ref = build_model("dinov2_vits14").eval()
    ref.load_state_dict(released_state)
    x = torch.randn(1, 3, 126, 126)  # 81 patches > 64 clusters
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x))


def test_training_checkpoint_loads(tmp_path, released_state):
    path = tmp_path / "last.ckpt"
    torch.save({"epoch": 3, "state_dict": released_state}, path)
    model = load_model(path, backbone="dinov2_vits14")
    assert torch.equal(model.aggregator.dust_bin, released_state["aggregator.dust_bin"])


def test_backbone_only_checkpoint_loads_with_warning(tmp_path, released_state, caplog):
    prefix = "backbone.model."
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save({k[len(prefix):]: v for k, v in released_state.items() if k.startswith(prefix)}, path)
    with caplog.at_level(logging.WARNING):
        model = load_model(path, backbone="dinov2_vits14")
    assert "aggregator is randomly initialised" in caplog.text
    assert torch.equal(model.backbone.model.cls_token, released_state["backbone.model.cls_token"])


def test_renamed_key_is_refused_naming_file_and_key(tmp_path, released_state):
    state = dict(released_state)
    state["aggregator.scores.0.weight"] = state.pop("aggregator.score.0.weight")
    path = tmp_path / "renamed.ckpt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_model(path, backbone="dinov2_vits14")
    msg = str(err.value)
    assert str(path) in msg and "aggregator.score.0.weight" in msg and "aggregator.scores.0.weight" in msg
    assert "1 missing keys" in msg and "1 unexpected keys" in msg


def test_wrong_shape_is_refused(tmp_path, released_state):
    state = dict(released_state)
    state["aggregator.token_features.2.weight"] = torch.zeros(64, 512)
    path = tmp_path / "shape.ckpt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"wrong shape.*token_features\.2\.weight \(64, 512\) \(model expects \(256, 512\)\)"):
        load_model(path, backbone="dinov2_vits14")


def test_vitb_checkpoint_into_vits_model_is_refused(tmp_path):
    path = tmp_path / "vitb.ckpt"
    torch.save(build_model("dinov2_vitb14").state_dict(), path)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_model(path, backbone="dinov2_vits14")


class NotAStateDict:
    pass


def test_pickles_that_are_not_state_dicts_are_refused(tmp_path):
    obj_path = tmp_path / "object.pkl"
    with open(obj_path, "wb") as f:
        pickle.dump(NotAStateDict(), f)
    with pytest.raises(CheckpointError, match=f"{obj_path} is not a loadable PyTorch weights file"):
        load_model(obj_path, backbone="dinov2_vits14")
    list_path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], list_path)
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        load_model(list_path, backbone="dinov2_vits14")
    text_path = tmp_path / "notes.txt"
    text_path.write_text("hello")
    with pytest.raises(CheckpointError, match="not a loadable PyTorch weights file"):
        load_model(text_path, backbone="dinov2_vits14")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.ckpt", backbone="dinov2_vits14")


def test_hub_path_uses_cached_release_file(tmp_path, monkeypatch, released_state):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(released_state, cache / "dino_salad.ckpt")  # what a first online run would have fetched
    model = load_model("hub", backbone="dinov2_vits14")
    assert torch.equal(model.aggregator.dust_bin, released_state["aggregator.dust_bin"])
    # the encoder names its descriptors by the downloaded file's content, like a local file
    from salad_ros.backends import ModelConfig, create_encoder
    from salad_ros.fileio import file_fingerprint

    enc = create_encoder(ModelConfig(weights="hub", backbone="dinov2_vits14", image_size=126, device="cpu"))
    assert enc.model_name.endswith("/" + file_fingerprint(cache / "dino_salad.ckpt")) and not enc.random_weights


# --- preprocessing ----------------------------------------------------------------------------

def test_preprocess_normalises_and_orders_channels():
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 124, 116, 104  # ImageNet mean * 255, rounded
    x = preprocess(rgb, 28)
    assert x.shape == (1, 3, 28, 28) and x.dtype == torch.float32
    assert float(x.abs().max()) < 0.01
    noise = (np.random.default_rng(0).random((50, 60, 3)) * 255).astype(np.uint8)
    assert torch.allclose(preprocess(noise, 56, "rgb"), preprocess(noise[..., ::-1].copy(), 56, "bgr"))


def test_preprocess_batches_mixed_sizes():
    a = np.full((40, 50, 3), 200, np.uint8)
    b = np.full((60, 30, 3), 10, np.uint8)
    x = preprocess([a, b], (28, 42))
    assert x.shape == (2, 3, 28, 42)
    assert torch.allclose(x[0], preprocess(a, (28, 42))[0])


def test_sizes_must_be_patch_multiples():
    with pytest.raises(ValueError, match="not a multiple of the patch size 14.*nearest valid: 322x322"):
        input_size(320)
    assert input_size(320, round_to_patch=True) == (322, 322)
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        preprocess(np.zeros((10, 10), np.uint8), 28)
