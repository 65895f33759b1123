"""The one preprocessing of camera frames, shared by training and the drive server.

A model's `Preprocess` (camera frame size, crop of sky and hood, resize, colour space) is
part of its config and is saved with its weights (`model.yaml`, and inside the TorchScript
export), so the frames the drive server feeds a model are made exactly like the frames it
was trained on. The camera frame size is taken from the training data, so a model trained
on another simulator's 96x96 frames is served 96x96 frames. Input frames are always
**RGB** uint8 (the simulator sends RGB; `bc.core.images` decodes JPEGs to RGB).

Training runs it in two halves, `geometry` (cached) then augmentation then `color`;
`__call__` is both halves in a row, which is what the drive server runs. The test
`test_train_serve_parity` checks that both paths give the same bytes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

import cv2
import numpy as np

from bc.core import udacity
from bc.errors import ConfigError, BcError

# cv2 conversion from RGB to each supported model colour space.
_COLOR_CONVERSIONS = {
    "rgb": None,
    "yuv": cv2.COLOR_RGB2YUV,
    "hsv": cv2.COLOR_RGB2HSV,
    "lab": cv2.COLOR_RGB2LAB,
}
COLOR_SPACES = tuple(_COLOR_CONVERSIONS)


class FrameSizeError(BcError, ValueError):
    """A camera frame does not have the size the model was trained on."""


@dataclass(frozen=True)
class Preprocess:
    """How a raw RGB camera frame (`frame_width` x `frame_height`) becomes a model input.

    `frame_width` / `frame_height` null in a config means "take it from the training data";
    a saved model always has them (models saved before they existed get Udacity's 320x160).
    """

    crop_top: int = 60
    crop_bottom: int = 20
    height: int = 66
    width: int = 200
    color_space: str = "yuv"
    frame_width: int | None = None
    frame_height: int | None = None

    def __post_init__(self) -> None:
        if self.color_space not in _COLOR_CONVERSIONS:
            raise ConfigError(f"preprocess.color_space: expected one of {list(COLOR_SPACES)}, "
                              f"got {self.color_space!r}")
        for name, minimum in (("crop_top", 0), ("crop_bottom", 0), ("height", 1), ("width", 1),
                              ("frame_width", 1), ("frame_height", 1)):
            value = getattr(self, name)
            if value is None and name.startswith("frame_"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"preprocess.{name}: expected an integer >= {minimum}, got {value!r}")
        if self.frame_height is not None and self.crop_top + self.crop_bottom >= self.frame_height:
            raise ConfigError(f"preprocess: crop_top + crop_bottom ({self.crop_top} + {self.crop_bottom}) "
                              f"leaves nothing of a {self.frame_height}-row frame")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the tensor the model receives."""
        return (3, self.height, self.width)

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the camera frames this model takes (Udacity's when unknown)."""
        return (self.frame_width or udacity.FRAME_WIDTH, self.frame_height or udacity.FRAME_HEIGHT)

    def with_frame_size(self, width: int, height: int) -> "Preprocess":
        """This preprocessing for camera frames of ``width`` x ``height``."""
        return replace(self, frame_width=int(width), frame_height=int(height))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Preprocess":
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"preprocess: unknown field(s) {sorted(unknown)}; expected {sorted(known)}")
        return cls(**dict(values))

    def check_frame(self, rgb: np.ndarray) -> None:
        """Raise `FrameSizeError` unless ``rgb`` is an RGB frame of this model's camera size."""
        width, height = self.frame_size
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise FrameSizeError(f"expected an H x W x 3 RGB frame, got shape {rgb.shape}")
        if rgb.shape[:2] != (height, width):
            raise FrameSizeError(f"frame is {rgb.shape[1]}x{rgb.shape[0]}; this model was trained "
                                 f"on {width}x{height} frames")

    def geometry(self, rgb: np.ndarray) -> np.ndarray:
        """Crop sky and hood rows and resize to the model's input size (still RGB).

        Training caches this output and augments it before `color`."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise FrameSizeError(f"expected an H x W x 3 RGB frame, got shape {rgb.shape}")
        rows = rgb.shape[0]
        if self.crop_top + self.crop_bottom >= rows:
            raise FrameSizeError(f"crop_top + crop_bottom ({self.crop_top} + {self.crop_bottom}) "
                                 f"leaves nothing of a {rows}-row frame")
        cropped = rgb[self.crop_top: rows - self.crop_bottom]
        return cv2.resize(cropped, (self.width, self.height), interpolation=cv2.INTER_AREA)

    def color(self, rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 (one frame, or frames stacked along the rows) to the model's colour space."""
        conversion = _COLOR_CONVERSIONS[self.color_space]
        return rgb if conversion is None else cv2.cvtColor(rgb, conversion)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """Crop, resize and convert one RGB uint8 frame: the model's input, H x W x 3 uint8."""
        return self.color(self.geometry(rgb))


def to_tensor(frames: np.ndarray) -> "torch.Tensor":  # noqa: F821 - torch imported lazily
    """Batch of preprocessed uint8 frames (N x H x W x 3, or one H x W x 3) to float NCHW.

    Values stay in 0..255: every model normalises its own input.
    """
    import torch

    array = np.ascontiguousarray(frames)
    if array.ndim == 3:
        array = array[None]
    return torch.from_numpy(array).permute(0, 3, 1, 2).float()
