"""Geometric verification of loop candidates and the bounded thumbnail store it needs.

A descriptor match only says two images *look* alike. Verification checks that they show the
same 3-D scene: local features (ORB by default, SIFT where OpenCV has it) are matched with
Lowe's ratio test, and a fundamental matrix is fitted with RANSAC. The candidate passes when
enough matches are RANSAC inliers, both in number and as a fraction of the tentative matches.

Thumbnails are kept grey, downscaled to ``max_side`` and JPEG-encoded (quality 90), so a
320-pixel thumbnail costs ~15-30 kB instead of ~75 kB raw. The store is bounded by count and
by bytes and evicts the oldest keyframes first. This module imports no rclpy.
"""

from __future__ import annotations

import collections
import io
import os
from dataclasses import dataclass

import cv2
import numpy as np

from . import fileio, npzfile

#: Local feature types :class:`GeometricVerifier` understands.
FEATURES = ("orb", "sift")

#: JPEG quality of stored thumbnails: high enough that ORB/SIFT keypoints barely move.
THUMBNAIL_JPEG_QUALITY = 90

# The 7/8-point fundamental-matrix estimators need at least 8 correspondences.
_MIN_MATCHES_FOR_F = 8


def sift_available() -> bool:
    """True when this OpenCV build provides SIFT (``cv2.SIFT_create``)."""
    return hasattr(cv2, "SIFT_create")


def to_gray(image: np.ndarray) -> np.ndarray:
    """An 8-bit grey view of ``image`` (HxW, HxWx1, RGB HxWx3 or RGBA HxWx4, uint8)."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return np.ascontiguousarray(img)
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_RGBA2GRAY)
    raise ValueError(f"expected an HxW or HxWx{{1,3,4}} image, got shape {img.shape}")


def make_thumbnail(image: np.ndarray, max_side: int, color: bool = False) -> np.ndarray:
    """Copy of ``image`` whose longer side is at most ``max_side`` pixels: grey, or with
    ``color`` the RGB image as given."""
    img = np.asarray(image) if color else to_gray(image)
    h, w = img.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return img.copy()
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)  # INTER_AREA: no aliasing


@dataclass(frozen=True)
class Features:
    """Keypoint positions (N x 2, float32 pixels) and their descriptors (N x B, or None)."""

    points: np.ndarray
    descriptors: np.ndarray | None
    kind: str

    def __len__(self) -> int:
        return len(self.points)


@dataclass(frozen=True)
class VerificationResult:
    """Outcome of verifying one image pair."""

    accepted: bool
    inliers: int  #: RANSAC inliers of the fundamental matrix
    inlier_ratio: float  #: inliers / tentative matches (0 when there are none)
    tentative: int  #: matches that passed the ratio test
    reason: str  #: short human-readable explanation


class GeometricVerifier:
    """Ratio-test feature matching plus fundamental-matrix RANSAC; deterministic."""

    def __init__(
        self,
        feature: str = "orb",
        max_features: int = 1000,
        ratio: float = 0.8,
        ransac_px: float = 2.0,
        min_inliers: int = 20,
        min_inlier_ratio: float = 0.25,
        confidence: float = 0.999,
    ) -> None:
        if feature not in FEATURES:
            raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")
        if feature == "sift" and not sift_available():
            raise ValueError("feature 'sift' requested but this OpenCV build has no SIFT")
        self.feature = feature
        self.ratio = float(ratio)
        self.ransac_px = float(ransac_px)
        self.min_inliers = int(min_inliers)
        self.min_inlier_ratio = float(min_inlier_ratio)
        self.confidence = float(confidence)
        if feature == "orb":
            self._detector = cv2.ORB_create(nfeatures=int(max_features))
            self._norm = cv2.NORM_HAMMING
        else:
            self._detector = cv2.SIFT_create(nfeatures=int(max_features))
            self._norm = cv2.NORM_L2
        self._matcher = cv2.BFMatcher(self._norm, crossCheck=False)

    def features(self, image: np.ndarray) -> Features:
        """Detect and describe keypoints of an image (grey or RGB uint8)."""
        keypoints, desc = self._detector.detectAndCompute(to_gray(image), None)
        pts = np.array([kp.pt for kp in keypoints], dtype=np.float32).reshape(-1, 2)
        return Features(points=pts, descriptors=desc, kind=self.feature)

    def match_indices(self, a: Features, b: Features) -> tuple[np.ndarray, np.ndarray]:
        """Ratio-test matches as two aligned index arrays into ``a`` and ``b`` (int64)."""
        if a.descriptors is None or b.descriptors is None or len(a) < 2 or len(b) < 2:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        pairs = self._matcher.knnMatch(a.descriptors, b.descriptors, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < self.ratio * p[1].distance]
        ia = np.array([m.queryIdx for m in good], dtype=np.int64)
        ib = np.array([m.trainIdx for m in good], dtype=np.int64)
        return ia, ib

    def match(self, a: Features, b: Features) -> tuple[np.ndarray, np.ndarray]:
        """Ratio-test matches as two aligned (M x 2) point arrays."""
        ia, ib = self.match_indices(a, b)
        return a.points[ia].reshape(-1, 2), b.points[ib].reshape(-1, 2)

    def verify(self, a: np.ndarray | Features, b: np.ndarray | Features) -> VerificationResult:
        """Verify an image pair (images or precomputed :class:`Features`)."""
        fa = a if isinstance(a, Features) else self.features(a)
        fb = b if isinstance(b, Features) else self.features(b)
        if fa.kind != self.feature or fb.kind != self.feature:
            raise ValueError("features were computed with another feature type")
        pa, pb = self.match(fa, fb)
        n = len(pa)
        if n < max(_MIN_MATCHES_FOR_F, self.min_inliers):
            return VerificationResult(False, 0, 0.0, n, f"only {n} tentative matches")
        _, mask = cv2.findFundamentalMat(pa, pb, cv2.FM_RANSAC, self.ransac_px, self.confidence)
        inliers = 0 if mask is None else int(mask.ravel().astype(bool).sum())
        ratio = inliers / n
        if inliers < self.min_inliers:
            return VerificationResult(False, inliers, ratio, n, f"{inliers} inliers < {self.min_inliers}")
        if ratio < self.min_inlier_ratio:
            return VerificationResult(False, inliers, ratio, n, f"inlier ratio {ratio:.2f} < {self.min_inlier_ratio:.2f}")
        return VerificationResult(True, inliers, ratio, n, f"{inliers}/{n} inliers")


class ThumbnailStore:
    """Bounded id -> thumbnail store (JPEG in memory), evicting the oldest first.

    Grey by default (what feature matching needs); ``color=True`` keeps RGB (the node's debug
    view). Oldest-first eviction loses the earliest places first; size ``max_bytes`` for the map
    length you need (see :meth:`nbytes` for the actual use).
    """

    def __init__(self, max_count: int, max_bytes: int, max_side: int = 320,
                 quality: int = THUMBNAIL_JPEG_QUALITY, color: bool = False) -> None:
        if max_count < 1 or max_bytes < 1 or max_side < 8:
            raise ValueError("ThumbnailStore needs max_count >= 1, max_bytes >= 1 and max_side >= 8")
        self.max_count = int(max_count)
        self.max_bytes = int(max_bytes)
        self.max_side = int(max_side)
        self.quality = int(quality)
        self.color = bool(color)
        self._items: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._bytes = 0
        self.evicted = 0  #: thumbnails dropped so far to stay within the bounds

    def put(self, key: int, image: np.ndarray) -> None:
        """Store a thumbnail of ``image`` under ``key`` (replacing any previous one)."""
        thumb = make_thumbnail(image, self.max_side, self.color)
        if self.color:
            thumb = cv2.cvtColor(thumb, cv2.COLOR_RGB2BGR)  # what imencode expects
        ok, buf = cv2.imencode(".jpg", thumb, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise ValueError("could not JPEG-encode the thumbnail")
        self._insert(key, buf.tobytes())

    def _insert(self, key: int, data: bytes) -> None:
        self.discard(key)
        self._items[key] = data
        self._bytes += len(data)
        while len(self._items) > self.max_count or (self._bytes > self.max_bytes and len(self._items) > 1):
            _, old = self._items.popitem(last=False)
            self._bytes -= len(old)
            self.evicted += 1
        if self._bytes > self.max_bytes:  # a single thumbnail larger than the whole budget
            self.discard(key)
            self.evicted += 1

    def get(self, key: int) -> np.ndarray | None:
        """The thumbnail stored under ``key`` (grey, or RGB with ``color``), or None when absent
        or evicted."""
        data = self._items.get(key)
        if data is None:
            return None
        if not self.color:
            return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def discard(self, key: int) -> None:
        """Remove ``key`` if present."""
        data = self._items.pop(key, None)
        if data is not None:
            self._bytes -= len(data)

    def clear(self) -> None:
        """Drop every thumbnail."""
        self._items.clear()
        self._bytes = 0

    def nbytes(self) -> int:
        """Bytes of encoded thumbnail data held."""
        return self._bytes

    def to_bytes(self, stamps_ns: dict[int, int]) -> bytes:
        """The store as an npz file: ids, their keyframe stamps (to catch a file that belongs to
        another map), JPEG sizes and the concatenated JPEG data."""
        ids = list(self._items)
        blobs = [self._items[k] for k in ids]
        buf = io.BytesIO()
        np.savez(buf, ids=np.array(ids, np.int64), stamps_ns=np.array([stamps_ns[k] for k in ids], np.int64),
                 sizes=np.array([len(b) for b in blobs], np.int64), data=np.frombuffer(b"".join(blobs), np.uint8))
        return buf.getvalue()

    def max_file_bytes(self, entries: int) -> int:
        """Largest saved file :meth:`load` reads for a map of ``entries`` keyframes: twice this
        store's byte budget, 24 bytes per keyframe and slack (a file saved with a larger budget
        is refused, not truncated)."""
        return 2 * self.max_bytes + (1 << 20) + 32 * entries + (1 << 16)

    def load(self, source: str | os.PathLike[str] | bytes, stamps_ns: dict[int, int], name: str | None = None) -> int:
        """Add the thumbnails saved in ``source`` (a file written from :meth:`to_bytes`, or its
        bytes) whose id and stamp match ``stamps_ns`` (the map they are loaded for); returns how
        many. The file is a cache and may be damaged or hostile: it must be a regular file of at
        most twice this store's byte budget (plus slack), hold exactly the four 1-D int64/uint8
        arrays, at most one entry per keyframe of the map, with consistent sizes; anything else
        raises ValueError naming it (or ``name``), and nothing is added."""
        name = name or ("thumbnail bytes" if isinstance(source, (bytes, bytearray)) else str(source))
        entries = len(stamps_ns)
        data_limit = 2 * self.max_bytes + (1 << 20)
        try:
            raw = bytes(source) if isinstance(source, (bytes, bytearray)) else \
                fileio.read_regular(source, self.max_file_bytes(entries))
            z = npzfile.read_npz(raw, {
                "ids": npzfile.Member("i", (None,), 8, entries), "stamps_ns": npzfile.Member("i", (None,), 8, entries),
                "sizes": npzfile.Member("i", (None,), 8, entries), "data": npzfile.Member("u", (None,), 1, data_limit)})
        except (OSError, ValueError) as exc:
            raise ValueError(f"{name}: not a thumbnail file ({exc})") from exc
        ids, stamps, sizes, data = z["ids"], z["stamps_ns"], z["sizes"], z["data"]
        if not (len(ids) == len(stamps) == len(sizes)) or (sizes < 0).any() or (sizes > len(data)).any() \
                or int(sizes.sum()) != len(data):
            raise ValueError(f"{name}: inconsistent thumbnail file (ids, stamps and sizes disagree with the data)")
        loaded = 0
        ends = np.cumsum(sizes)
        for key, stamp, end, size in zip(ids.tolist(), stamps.tolist(), ends.tolist(), sizes.tolist()):
            if stamps_ns.get(key) == stamp:
                self._insert(key, data[end - size:end].tobytes())
                loaded += 1
        return loaded

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
