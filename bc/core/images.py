"""Camera images in and out: JPEG bytes and files <-> RGB uint8 arrays, written once.

Frames are **RGB everywhere** in bc (the simulator encodes RGB; OpenCV decodes BGR, the
classic reason a model that trains well cannot drive). libjpeg "decodes" a truncated or
corrupt file by filling the rest with grey and only prints a warning (OpenCV and Pillow
both return the grey picture silently), so completeness is checked from the markers and
frames are decoded by simplejpeg in strict mode, which turns libjpeg's corrupt-data
warnings into errors (same libjpeg-turbo, same pixels as OpenCV). Every failure raises
`ImageError` naming the image.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import cv2
import numpy as np
import simplejpeg

from bc.errors import BcError

JPEG_SOI = b"\xff\xd8\xff"  # start-of-image marker and the first segment's marker byte
JPEG_SOS = b"\xff\xda"  # start of scan: entropy-coded data follows, in which 0xFF is stuffed
JPEG_EOI = b"\xff\xd9"
DEFAULT_JPEG_QUALITY = 95
# A decoded frame bigger than this is refused before decoding (decompression bombs: a
# 766 KB JPEG can declare 14000 x 14000 pixels).
DEFAULT_MAX_PIXELS = 4096 * 4096
# An image file bigger than this is not a camera frame and is never read (a frame path that
# is a 20 GB sparse file or a link to /dev/zero); a 4096 x 4096 JPEG at quality 100 is ~8 MB.
MAX_FRAME_BYTES = 16 * 1024 * 1024


class ImageError(BcError, ValueError):
    """An image is missing, incomplete, too large or not decodable; the message says which."""


def jpeg_problem(data: bytes) -> str | None:
    """Cheap completeness check of JPEG bytes: None if whole, else why.

    Whole means an end-of-image marker after the first start-of-scan. Inside scan data
    every 0xFF byte is stuffed, so that marker cannot occur by chance; trailing bytes after
    it (padding some encoders and transports add) are fine.
    """
    if not data:
        return "empty"
    if not data.startswith(JPEG_SOI):
        return f"not a JPEG (starts with {bytes(data[:4])!r})"
    scan = data.find(JPEG_SOS)
    if scan < 0 or data.find(JPEG_EOI, scan) < 0:
        return f"truncated JPEG ({len(data)} bytes, no end-of-image marker)"
    return None


def read_image_file(path: str | os.PathLike, limit: int = MAX_FRAME_BYTES) -> bytes:
    """The bytes of an image file, read only if it is a regular file of at most `limit` bytes
    (checked on the open file, so a link to /dev/zero, a pipe or a huge sparse file is refused
    without reading it); `ImageError` says which and why."""
    name = Path(path).name
    try:
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block
    except FileNotFoundError:
        raise ImageError(f"image file not found: {path}") from None
    except OSError as error:
        raise ImageError(f"cannot read image file {path}: {error.strerror or error}") from None
    try:
        info = os.fstat(handle)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"image file {name}: not a regular file")
        if info.st_size > limit:
            raise ImageError(f"image file {name}: {info.st_size} bytes, over the limit of {limit} "
                             "(not a camera frame)")
        with os.fdopen(handle, "rb", closefd=False) as stream:
            data = stream.read(limit + 1)
    except OSError as error:
        raise ImageError(f"cannot read image file {path}: {error.strerror or error}") from None
    finally:
        os.close(handle)
    if len(data) > limit:  # it grew after the check
        raise ImageError(f"image file {name}: over the limit of {limit} bytes (not a camera frame)")
    return data


def file_problem(path: str | os.PathLike) -> str | None:
    """`jpeg_problem` of an image file (or why it cannot be read)."""
    try:
        data = read_image_file(path)
    except ImageError as error:
        return str(error)
    return jpeg_problem(data)


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) declared in a JPEG's header, read without decoding the pixels (and
    without Pillow's own bomb check, which raises for the very sizes we want to name)."""
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as error:
        raise ImageError(f"unreadable JPEG header ({error})") from None
    return width, height


def decode_jpeg(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Complete JPEG bytes to an H x W x 3 RGB uint8 array (`ImageError` says what is wrong)."""
    problem = jpeg_problem(data)
    if problem:
        raise ImageError(problem)
    if max_pixels is not None:
        width, height = jpeg_size(data)
        if width * height > max_pixels:
            raise ImageError(f"{width}x{height} pixels, over the limit of {max_pixels} "
                             "(not a camera frame)")
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError as error:  # strict: libjpeg's "Corrupt JPEG data" warnings too
        raise ImageError(f"corrupt JPEG ({len(data)} bytes: {error})") from None


def encode_jpeg(rgb: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """An RGB uint8 frame as JPEG bytes holding RGB (the simulator's format)."""
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ImageError(f"cannot encode a frame of shape {rgb.shape} as JPEG")
    return encoded.tobytes()


def read_rgb(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file to RGB uint8, or raise `ImageError` naming the path."""
    data = read_image_file(path)
    try:
        return decode_jpeg(data, max_pixels)
    except ImageError as error:
        raise ImageError(f"image file {path}: {error}") from None


def write_rgb(path: str | os.PathLike, rgb: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> None:
    """Write an RGB uint8 frame as a JPEG file."""
    Path(path).write_bytes(encode_jpeg(rgb, quality))
