"""The one preprocessing function shared by training and the drive server.

A model's preprocessing (crop of sky and hood, resize, colour space) is part of its
config and is saved with the trained weights, so the frames the drive server feeds a
model are made exactly like the frames it was trained on. Input frames are always
**RGB** uint8 (the simulator sends RGB; `bc.data` decodes JPEGs to RGB).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import cv2
import numpy as np

# cv2 conversion from RGB to each supported model colour space.
_COLOR_CONVERSIONS = {
    "rgb": None,
    "yuv": cv2.COLOR_RGB2YUV,
    "hsv": cv2.COLOR_RGB2HSV,
    "lab": cv2.COLOR_RGB2LAB,
}
COLOR_SPACES = tuple(_COLOR_CONVERSIONS)


@dataclass(frozen=True)
class PreprocessSpec:
    """How a raw 320x160 RGB camera frame becomes a model input (HxWx3 uint8)."""

    crop_top: int = 60
    crop_bottom: int = 20
    height: int = 66
    width: int = 200
    color_space: str = "yuv"

    def __post_init__(self) -> None:
        if self.color_space not in _COLOR_CONVERSIONS:
            raise ValueError(
                f"preprocess.color_space: expected one of {list(COLOR_SPACES)}, "
                f"got {self.color_space!r}"
            )
        for name in ("crop_top", "crop_bottom"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"preprocess.{name}: expected >= 0, got {getattr(self, name)}")
        for name in ("height", "width"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"preprocess.{name}: expected >= 1, got {getattr(self, name)}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the tensor the model receives."""
        return (3, self.height, self.width)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PreprocessSpec":
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"preprocess: unknown field(s) {sorted(unknown)}; expected {sorted(known)}")
        return cls(**dict(values))


def crop_resize(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Geometric part: crop sky and hood rows, resize to the model's input size (still RGB).

    Training caches this output and augments it before `convert_color`.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB frame, got shape {rgb.shape}")
    rows = rgb.shape[0]
    if spec.crop_top + spec.crop_bottom >= rows:
        raise ValueError(
            f"crop_top + crop_bottom ({spec.crop_top} + {spec.crop_bottom}) leaves nothing "
            f"of a {rows}-row frame"
        )
    cropped = rgb[spec.crop_top : rows - spec.crop_bottom]
    return cv2.resize(cropped, (spec.width, spec.height), interpolation=cv2.INTER_AREA)


def convert_color(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Colour part: RGB uint8 to the model's colour space."""
    conversion = _COLOR_CONVERSIONS[spec.color_space]
    return rgb if conversion is None else cv2.cvtColor(rgb, conversion)


def preprocess(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Crop, resize and convert one RGB uint8 frame (H x W x 3) for a model."""
    return convert_color(crop_resize(rgb, spec), spec)


def to_tensor(frames: np.ndarray) -> "torch.Tensor":  # noqa: F821 - torch imported lazily
    """Batch of preprocessed uint8 frames (N x H x W x 3, or one H x W x 3) to float NCHW.

    Values stay in 0..255: every model normalises its own input.
    """
    import torch

    array = np.ascontiguousarray(frames)
    if array.ndim == 3:
        array = array[None]
    return torch.from_numpy(array).permute(0, 3, 1, 2).float()
