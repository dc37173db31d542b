"""Per-keyframe pose features: what the pose solver needs from an old keyframe, without its image.

A :class:`PoseFeatures` record holds the keyframe's keypoints as undistorted normalised
coordinates, their descriptors and (when a depth image came with the frame) the depth at each
keypoint. It is computed once per keyframe, kept in a bounded store and saved beside the map,
so a loop candidate against an old keyframe needs neither its image nor its depth image.
Feature detection and matching are :class:`~salad_ros.verification.GeometricVerifier`'s, run
on the thumbnail (``max_side``) the verifier already uses; keypoints are mapped back to
full-resolution pixels before undistortion, so intrinsics and depth stay at full resolution.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from ..verification import Features, GeometricVerifier, make_thumbnail
from .camera import CameraModel, PoseInputError

#: Default thumbnail side, the same as verification thumbnails.
DEFAULT_MAX_SIDE = 320


@dataclass(frozen=True)
class PoseFeatures:
    """Keypoints of one keyframe for relative pose estimation.

    ``points``: N x 2 float32 undistorted normalised coordinates (x/z, y/z, optical frame);
    ``descriptors``: N x B (uint8 for ORB, float32 for SIFT); ``depth``: N float32 metres with
    NaN where unknown, or None when the frame had no depth image; ``kind``: feature type;
    ``focal_px``: focal length in pixels at the detection scale, so thresholds can be given in
    the pixels the keypoints were measured in.
    """

    points: np.ndarray
    descriptors: np.ndarray | None
    depth: np.ndarray | None
    kind: str
    focal_px: float

    def __len__(self) -> int:
        return len(self.points)

    @property
    def nbytes(self) -> int:
        """Bytes of array data held."""
        arrays = (self.points, self.descriptors, self.depth)
        return sum(a.nbytes for a in arrays if a is not None)

    def as_features(self) -> Features:
        """A verification :class:`Features` view (points are normalised, for matching only)."""
        return Features(points=self.points, descriptors=self.descriptors, kind=self.kind)

    def to_bytes(self) -> bytes:
        """The record as an uncompressed npz file."""
        buf = io.BytesIO()
        arrays = {"points": self.points, "kind": np.array(self.kind), "focal_px": np.array(self.focal_px)}
        if self.descriptors is not None:
            arrays["descriptors"] = self.descriptors
        if self.depth is not None:
            arrays["depth"] = self.depth
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> PoseFeatures:
        """Inverse of :meth:`to_bytes`; a damaged record raises ValueError."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                points = z["points"].astype(np.float32).reshape(-1, 2)
                desc = z["descriptors"] if "descriptors" in z.files else None
                depth = z["depth"].astype(np.float32) if "depth" in z.files else None
                kind, focal = str(z["kind"]), float(z["focal_px"])
        except (OSError, KeyError, ValueError, EOFError) as exc:
            raise ValueError(f"not a pose feature record ({exc})") from exc
        if (desc is not None and len(desc) != len(points)) or (depth is not None and len(depth) != len(points)):
            raise ValueError("pose feature record with inconsistent array lengths")
        return cls(points, desc, depth, kind, focal)


def sample_depth(depth: np.ndarray, pixels: np.ndarray, window: int = 3, max_rel_spread: float = 0.05) -> np.ndarray:
    """Depth (metres) at pixel positions: the median of a ``window`` x ``window`` patch.

    NaN when the centre pixel is invalid, when fewer than half the patch is valid, or when the
    valid depths spread by more than ``max_rel_spread`` of their median: a keypoint on an
    occlusion edge has no single depth, and a blended one is a wrong 3-D point.
    """
    d = np.asarray(depth, np.float32)
    pts = np.asarray(pixels, np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return np.empty(0, np.float32)
    h, w = d.shape
    half = max(0, int(window) // 2)
    u = np.clip(np.rint(pts[:, 0]).astype(np.int64), 0, w - 1)
    v = np.clip(np.rint(pts[:, 1]).astype(np.int64), 0, h - 1)
    offs = np.arange(-half, half + 1)
    uu = np.clip(u[:, None, None] + offs[None, None, :], 0, w - 1)
    vv = np.clip(v[:, None, None] + offs[None, :, None], 0, h - 1)
    patch = d[vv, uu].reshape(len(pts), -1)
    valid = np.isfinite(patch) & (patch > 0)
    enough = valid.sum(axis=1) * 2 >= patch.shape[1]
    patch = np.where(valid, patch, np.nan)
    out = np.full(len(pts), np.nan, np.float32)
    rows = enough & valid[:, patch.shape[1] // 2]
    if rows.any():
        sub = patch[rows]
        med = np.nanmedian(sub, axis=1)
        spread = (np.nanmax(sub, axis=1) - np.nanmin(sub, axis=1)) / med
        out[rows] = np.where(spread <= max_rel_spread, med, np.nan)
    return out


class PoseFeatureExtractor:
    """Turns an image (+ optional depth) into :class:`PoseFeatures`, and matches two records.

    Detection runs on a ``max_side`` thumbnail; a :class:`GeometricVerifier` does detection and
    ratio-test matching, so pose features are the verification features.
    """

    def __init__(self, feature: str = "orb", max_features: int = 1000, max_side: int = DEFAULT_MAX_SIDE,
                 ratio: float = 0.8, depth_window: int = 3, depth_max_rel_spread: float = 0.05) -> None:
        if max_side < 16:
            raise ValueError(f"max_side must be >= 16, got {max_side}")
        self.verifier = GeometricVerifier(feature, max_features=max_features, ratio=ratio)
        self.max_side = int(max_side)
        self.depth_window = int(depth_window)
        self.depth_max_rel_spread = float(depth_max_rel_spread)

    @property
    def kind(self) -> str:
        """Feature type (``orb`` or ``sift``)."""
        return self.verifier.feature

    def extract(self, image: np.ndarray, camera: CameraModel, depth: np.ndarray | None = None) -> PoseFeatures:
        """Pose features of a full-resolution image with its (validated) camera and optional
        depth in metres (float, same size as the image, NaN/0 = invalid)."""
        h, w = np.asarray(image).shape[:2]
        if depth is not None:
            depth = _checked_depth(depth, (h, w))
        thumb = make_thumbnail(image, self.max_side)
        th, tw = thumb.shape[:2]
        feats = self.verifier.features(thumb)
        sx, sy = w / tw, h / th
        # pixel centres: thumbnail pixel i covers full-resolution pixels [i*s, (i+1)*s)
        full = np.column_stack([(feats.points[:, 0] + 0.5) * sx - 0.5, (feats.points[:, 1] + 0.5) * sy - 0.5])
        points = camera.undistort(full).astype(np.float32)
        depth_at = None
        if depth is not None:
            depth_at = sample_depth(depth, full, self.depth_window, self.depth_max_rel_spread)
        focal = camera.focal_px() * 0.5 * (tw / w + th / h)
        return PoseFeatures(points, feats.descriptors, depth_at, self.kind, float(focal))

    def match(self, query: PoseFeatures, match: PoseFeatures) -> tuple[np.ndarray, np.ndarray]:
        """Ratio-test matches as index arrays into ``query`` and ``match``."""
        if query.kind != self.kind or match.kind != self.kind:
            raise ValueError(f"pose features of kind {query.kind}/{match.kind}, extractor uses {self.kind}")
        return self.verifier.match_indices(query.as_features(), match.as_features())


def _checked_depth(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Depth as float32 metres of the image's size, or :class:`PoseInputError`."""
    d = np.asarray(depth)
    if d.ndim == 3 and d.shape[2] == 1:
        d = d[:, :, 0]
    if d.dtype.kind != "f":
        raise PoseInputError("depth_encoding", f"depth must be float metres, got {d.dtype} "
                             "(convert 16UC1 millimetres with salad_ros.io.depth.depth_to_metres)")
    if d.shape != size:
        raise PoseInputError("depth_size_mismatch", f"depth is {d.shape[1]}x{d.shape[0]} "
                             f"but the image is {size[1]}x{size[0]}: depth must be aligned to the colour image")
    return d.astype(np.float32, copy=False)
