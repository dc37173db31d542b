"""Pinhole camera with lens distortion, built from sensor_msgs/CameraInfo fields, and its checks.

Pixels are undistorted into *normalised* image coordinates (x/z, y/z in the camera optical
frame, REP-103: x right, y down, z forward), which is what every pose solver here works in.
Distortion models are ROS's names: ``plumb_bob`` and ``rational_polynomial`` (OpenCV's radial-
tangential model with 4/5/8/12/14 coefficients) and ``equidistant`` (OpenCV's fisheye model,
4 coefficients). ``binning_x/y`` and ``roi`` of CameraInfo are honoured: K and D describe the
full sensor, and image pixels are mapped onto it before undistortion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

#: distortion_model -> accepted coefficient counts (an empty D always means "no distortion")
DISTORTION_MODELS: dict[str, tuple[int, ...]] = {
    "plumb_bob": (4, 5, 8, 12, 14),
    "rational_polynomial": (8, 12, 14),
    "equidistant": (4,),
    "none": (0,),
    "": (0,),
}

#: Kinds of bad input, as counter names for the node's diagnostics.
INPUT_ERROR_KINDS = ("invalid_camera_info", "image_size_mismatch", "depth_size_mismatch", "depth_encoding")

# Iterative undistortion: OpenCV's default of 5 iterations leaves pixel-size errors at the
# border of strongly distorted lenses; 30 iterations to 1e-10 cost little for ~1000 points.
_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 1e-10)


class PoseInputError(ValueError):
    """Input the pose estimator cannot use; ``kind`` is one of :data:`INPUT_ERROR_KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class CameraModel:
    """Intrinsics of one camera: ``k`` (3x3), ``d`` (coefficients of ``distortion_model``),
    the image size it was calibrated for (0 = unknown), and CameraInfo's binning and ROI."""

    k: np.ndarray
    d: np.ndarray = field(default_factory=lambda: np.zeros(0))
    distortion_model: str = "plumb_bob"
    width: int = 0
    height: int = 0
    binning: tuple[int, int] = (1, 1)
    roi: tuple[int, int, int, int] = (0, 0, 0, 0)  #: x_offset, y_offset, width, height (0 = full)

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", np.array(self.k, np.float64).reshape(-1))
        object.__setattr__(self, "d", np.array(self.d if self.d is not None else [], np.float64).reshape(-1))

    @classmethod
    def from_camera_info(cls, msg: Any) -> CameraModel:
        """Build from a sensor_msgs/CameraInfo (any object with its fields); not yet validated."""
        roi = getattr(msg, "roi", None)
        roi_t = (0, 0, 0, 0) if roi is None else (int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height))
        return cls(k=np.asarray(msg.k, np.float64), d=np.asarray(msg.d, np.float64),
                   distortion_model=str(msg.distortion_model), width=int(msg.width), height=int(msg.height),
                   binning=(int(getattr(msg, "binning_x", 1)), int(getattr(msg, "binning_y", 1))), roi=roi_t)

    @property
    def matrix(self) -> np.ndarray:
        """K as a 3x3 float64 matrix."""
        return self.k.reshape(3, 3)

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) of the images this camera produces, after ROI and binning; (0, 0) = unknown."""
        w, h = (self.roi[2], self.roi[3]) if self.roi[2] > 0 and self.roi[3] > 0 else (self.width, self.height)
        bx, by = (max(1, b) for b in self.binning)
        return w // bx, h // by

    def validate(self) -> CameraModel:
        """Return self, or raise :class:`PoseInputError` (kind ``invalid_camera_info``) naming the problem."""
        def bad(msg: str) -> PoseInputError:
            return PoseInputError("invalid_camera_info", f"camera_info: {msg}")

        if self.k.size != 9:
            raise bad(f"K must have 9 elements, got {self.k.size}")
        k = self.matrix
        if not np.isfinite(k).all():
            raise bad(f"K has non-finite values: {k.ravel().tolist()}")
        if k[0, 0] <= 0 or k[1, 1] <= 0:
            raise bad(f"K has a zero or negative focal length (fx={k[0, 0]}, fy={k[1, 1]})")
        if not np.allclose(k[2], [0.0, 0.0, 1.0]) or k[1, 0] != 0.0:
            raise bad(f"K is not an upper-triangular camera matrix with last row 0 0 1: {k.ravel().tolist()}")
        model = self.distortion_model
        if model not in DISTORTION_MODELS:
            raise bad(f"unknown distortion_model '{model}' (supported: plumb_bob, rational_polynomial, equidistant)")
        if self.d.size and self.d.size not in DISTORTION_MODELS[model]:
            raise bad(f"{model or 'no'} distortion needs {DISTORTION_MODELS[model]} coefficients, got {self.d.size}")
        if not np.isfinite(self.d).all():
            raise bad(f"D has non-finite values: {self.d.tolist()}")
        if self.width < 0 or self.height < 0 or min(self.binning) < 0:
            raise bad(f"negative size or binning ({self.width}x{self.height}, binning {self.binning})")
        return self

    def check_image(self, shape: Sequence[int], what: str = "image") -> None:
        """Raise :class:`PoseInputError` (``image_size_mismatch``) when an image of ``shape`` (H, W, ...)
        is not the size this camera produces; with an unknown size, when the principal point
        falls outside the image (K of another resolution)."""
        h, w = int(shape[0]), int(shape[1])
        cw, ch = self.image_size
        if cw > 0 and ch > 0:
            if (w, h) != (cw, ch):
                raise PoseInputError("image_size_mismatch", f"{what} is {w}x{h} but camera_info says {cw}x{ch}")
            return
        cx, cy = self.matrix[0, 2], self.matrix[1, 2]
        if self.binning == (1, 1) and self.roi == (0, 0, 0, 0) and not (0 < cx < w and 0 < cy < h):
            raise PoseInputError("image_size_mismatch", f"principal point ({cx:.1f}, {cy:.1f}) is outside "
                                 f"the {w}x{h} {what}: K of another resolution?")

    def undistort(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised, undistorted coordinates (N x 2, float64) of image pixels (N x 2)."""
        pts = np.asarray(pixels, np.float64).reshape(-1, 2)
        if len(pts) == 0:
            return np.empty((0, 2))
        bx, by = (max(1, b) for b in self.binning)
        # pixel centres of a binned image cover bx sensor pixels: centre (u + 0.5) * bx - 0.5
        sensor = np.column_stack([(pts[:, 0] + 0.5) * bx - 0.5 + self.roi[0],
                                  (pts[:, 1] + 0.5) * by - 0.5 + self.roi[1]])
        src = sensor.reshape(-1, 1, 2)
        k = self.matrix
        if not self.d.size or not self.d.any():
            out = cv2.undistortPoints(src, k, None)
        elif self.distortion_model == "equidistant":
            out = cv2.fisheye.undistortPoints(src, k, self.d, criteria=_UNDISTORT_CRITERIA)
        else:
            out = cv2.undistortPointsIter(src, k, self.d, None, None, _UNDISTORT_CRITERIA)
        return out.reshape(-1, 2).astype(np.float64)

    def focal_px(self) -> float:
        """Mean focal length in pixels of the images this camera produces (after binning)."""
        bx, by = (max(1, b) for b in self.binning)
        return 0.5 * (self.matrix[0, 0] / bx + self.matrix[1, 1] / by)


def camera_from_matrix(camera_matrix: np.ndarray | CameraModel, dist_coeffs: Sequence[float] | np.ndarray | None,
                       distortion_model: str, image_shape: Sequence[int]) -> CameraModel:
    """A validated :class:`CameraModel` from the library API's ``camera_matrix``/``dist_coeffs``
    (or a CameraModel passed through), checked against an image of ``image_shape``."""
    if isinstance(camera_matrix, CameraModel):
        cam = camera_matrix
    else:
        d = np.zeros(0) if dist_coeffs is None else np.asarray(dist_coeffs, np.float64).ravel()
        try:
            k = np.asarray(camera_matrix, np.float64)
        except (TypeError, ValueError) as exc:
            raise PoseInputError("invalid_camera_info", f"camera_matrix is not numeric: {exc}") from exc
        cam = CameraModel(k=k, d=d, distortion_model=distortion_model)
    cam.validate()
    cam.check_image(image_shape)
    return cam
