"""Geometric verification on generated images and the bounded thumbnail store."""

from __future__ import annotations

import os
import sys

import cv2
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from _db_helpers import textured_scene, warp_pair  # noqa: E402

from salad_ros.verification import (  # noqa: E402
    GeometricVerifier,
    ThumbnailStore,
    make_thumbnail,
    sift_available,
    to_gray,
)

FEATURES = ["orb"] + (["sift"] if sift_available() else [])


@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("seed", [0, 1])
def test_homography_pair_is_accepted(feature: str, seed: int) -> None:
    a, b, h = warp_pair(seed)
    v = GeometricVerifier(feature)
    res = v.verify(make_thumbnail(a, 320), make_thumbnail(b, 320))
    assert res.accepted, res
    assert res.inliers >= 20 and res.inlier_ratio >= 0.5
    # the matches really follow the known homography (a sanity check of the test data)
    pa, pb = v.match(v.features(a), v.features(b))
    proj = cv2.perspectiveTransform(pa.reshape(-1, 1, 2).astype(np.float64), h).reshape(-1, 2)
    assert np.median(np.linalg.norm(proj - pb, axis=1)) < 2.0


@pytest.mark.parametrize("feature", FEATURES)
def test_unrelated_pair_is_rejected(feature: str) -> None:
    v = GeometricVerifier(feature)
    for seed in (0, 1, 2):
        res = v.verify(make_thumbnail(textured_scene(seed), 320), make_thumbnail(textured_scene(50 + seed), 320))
        assert not res.accepted, res
        assert res.reason


def test_featureless_images_are_rejected_not_crashing() -> None:
    v = GeometricVerifier()
    flat = np.full((240, 320), 128, np.uint8)
    res = v.verify(flat, flat)
    assert not res.accepted and res.inliers == 0 and res.tentative == 0


def test_verifier_arguments() -> None:
    with pytest.raises(ValueError, match="feature"):
        GeometricVerifier("surf")
    orb = GeometricVerifier("orb")
    if sift_available():
        with pytest.raises(ValueError, match="another feature type"):
            orb.verify(GeometricVerifier("sift").features(textured_scene(0)), textured_scene(0))


def test_gray_and_thumbnail_conversions() -> None:
    rgb = textured_scene(0, 480, 640)
    assert to_gray(rgb).shape == (480, 640)
    assert to_gray(np.dstack([rgb, np.full((480, 640), 255, np.uint8)])).shape == (480, 640)
    assert to_gray(rgb[:, :, :1]).shape == (480, 640)
    thumb = make_thumbnail(rgb, 320)
    assert thumb.shape == (240, 320) and thumb.dtype == np.uint8
    assert make_thumbnail(rgb[:100, :100], 320).shape == (100, 100)  # never upscaled
    with pytest.raises(ValueError, match="uint8"):
        to_gray(rgb.astype(np.float32))


def test_thumbnail_store_bounded_by_count() -> None:
    store = ThumbnailStore(max_count=3, max_bytes=1 << 30, max_side=64)
    img = textured_scene(1, 120, 160)
    for i in range(5):
        store.put(i, img)
    assert len(store) == 3 and store.evicted == 2
    assert store.get(0) is None and store.get(1) is None
    got = store.get(4)
    assert got.shape == (48, 64) and got.dtype == np.uint8
    # JPEG at quality 90 stays close to the original thumbnail
    assert np.mean(np.abs(got.astype(int) - make_thumbnail(img, 64).astype(int))) < 6


def test_colour_thumbnail_store_keeps_rgb() -> None:
    store = ThumbnailStore(max_count=2, max_bytes=1 << 30, max_side=64, quality=85, color=True)
    img = np.zeros((120, 160, 3), np.uint8)
    img[..., 0] = 200  # pure red: a channel swap would show up as blue
    for i in range(3):
        store.put(i, img)
    assert store.get(0) is None and len(store) == 2
    got = store.get(2)
    assert got.shape == (48, 64, 3)
    assert np.abs(got.astype(int) - make_thumbnail(img, 64, color=True).astype(int)).mean() < 4


def test_thumbnail_store_bounded_by_bytes() -> None:
    img = textured_scene(2, 480, 640)
    one = ThumbnailStore(10, 1 << 30, 320)
    one.put(0, img)
    size = one.nbytes()
    store = ThumbnailStore(max_count=1000, max_bytes=int(size * 3.5), max_side=320)
    for i in range(10):
        store.put(i, img)
        assert store.nbytes() <= store.max_bytes
    assert len(store) == 3 and 9 in store and 6 not in store
    store.discard(9)
    assert 9 not in store and len(store) == 2
    store.clear()
    assert len(store) == 0 and store.nbytes() == 0
    tiny = ThumbnailStore(max_count=10, max_bytes=10, max_side=320)  # smaller than one thumbnail
    tiny.put(0, img)
    assert len(tiny) == 0 and tiny.nbytes() == 0


@pytest.mark.timeout(30)
def test_thumbnail_store_load_checks_the_file(tmp_path) -> None:
    """A saved store reloads from a file or its bytes; a FIFO or a file of another map's keyframes
    is not read (no blocking), and a rejected file adds nothing."""
    store = ThumbnailStore(10, 1 << 20, 64)
    for i in range(3):
        store.put(i, textured_scene(i, 96, 128))
    raw = store.to_bytes({0: 5, 1: 6, 2: 7})
    (tmp_path / "t.npz").write_bytes(raw)
    assert ThumbnailStore(10, 1 << 20, 64).load(tmp_path / "t.npz", {0: 5, 1: 6, 2: 7}) == 3
    assert ThumbnailStore(10, 1 << 20, 64).load(raw, {0: 5, 1: 6, 9: 7}) == 2
    os.mkfifo(tmp_path / "fifo.npz")
    with pytest.raises(ValueError, match="FIFO"):
        ThumbnailStore(10, 1 << 20, 64).load(tmp_path / "fifo.npz", {0: 5})
    fresh = ThumbnailStore(10, 1 << 20, 64)
    with pytest.raises(ValueError, match="ids.npy has shape"):  # 3 thumbnails for a 2-keyframe map
        fresh.load(raw, {0: 5, 1: 6})
    assert len(fresh) == 0
