"""Decode camera JPEGs as RGB, loudly.

`cv2.imread` returns None for a missing or corrupt file and decodes BGR, while the drive
server receives RGB frames: the two classic reasons a model that trains well cannot drive.
Everything in `bc` reads images through `load_rgb`.
"""

from __future__ import annotations

import os

import cv2
import numpy as np


class ImageReadError(OSError):
    """An image file is missing or cannot be decoded; the message names the path."""


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to an H x W x 3 RGB uint8 array, or raise naming the path."""
    try:
        data = np.fromfile(os.fspath(path), dtype=np.uint8)  # also works for non-ASCII paths
    except FileNotFoundError as error:
        raise ImageReadError(f"image file not found: {path}") from error
    except OSError as error:
        raise ImageReadError(f"cannot read image file {path}: {error.strerror or error}") from error
    if data.size == 0:
        raise ImageReadError(f"image file is empty: {path}")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageReadError(f"cannot decode image file (corrupt or not an image): {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def save_rgb(path: str | os.PathLike, rgb: np.ndarray, quality: int = 95) -> None:
    """Encode an RGB uint8 frame as JPEG (the simulator's format), converting to OpenCV's BGR."""
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ImageReadError(f"cannot encode image for {path}")
    encoded.tofile(os.fspath(path))
