"""An mp4 of a saved inference run (``image_folder`` of the drive server), optionally with the
predicted steering drawn on each frame and / or a model's VisualBackProp saliency under it
(`bc.insight.saliency.SaliencyOverlay`: where the network looks).

Frames come in the order of ``drive_log.csv`` when the folder has one (`bc.drive.frames`
writes it), else in file-name order (the names are UTC timestamps). Written with imageio's
ffmpeg plugin (imageio-ffmpeg ships its own ffmpeg binary; H.264, yuv420p: plays everywhere).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from bc.drive.frames import CSV_COLUMNS, CSV_NAME, FRAME_SUFFIX
from bc.errors import BcError
from bc.core.images import read_rgb

LOG = logging.getLogger(__name__)

BAR_HEIGHT = 8
BAR_MARGIN = 6
TEXT_SCALE = 0.45
TEXT_COLOR = (255, 255, 255)  # RGB
BAR_COLOR = (255, 200, 0)
BAR_BACKGROUND = (40, 40, 40)


class VideoError(BcError, RuntimeError):
    """The folder cannot be turned into a video; the message names the file or row."""


def read_log(folder: Path) -> list[dict[str, str]]:
    """Rows of ``drive_log.csv`` in ``folder`` (empty list when there is none)."""
    path = folder / CSV_NAME
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        try:
            missing = set(CSV_COLUMNS) - set(reader.fieldnames or ())
            if missing:
                raise VideoError(
                    f"{path}: missing column(s) {sorted(missing)}; expected {list(CSV_COLUMNS)}")
            return list(reader)
        except UnicodeDecodeError as error:
            raise VideoError(f"{path}: not UTF-8 text ({error}); expected the drive log "
                             f"drive.py writes") from None
        except csv.Error as error:  # e.g. a field over csv.field_size_limit() (131,072 bytes)
            raise VideoError(f"{path} line {reader.line_num}: {error}") from None


def frame_list(folder: Path) -> list[tuple[Path, dict[str, str] | None]]:
    """(image path, its CSV row or None) in playing order."""
    if not folder.is_dir():
        raise VideoError(f"{folder} is not a folder")
    rows = read_log(folder)
    if rows:
        frames = []
        root = folder.resolve()
        for number, row in enumerate(rows, start=2):  # line 1 is the header
            image = row.get("image") or ""
            path = (root / image).resolve()  # links followed: a link out of the folder is out
            if not image or path == root or not path.is_relative_to(root):
                raise VideoError(f"{folder / CSV_NAME} line {number}: image {image!r} is not a "
                                 f"file inside {folder} (frames are read from their folder only)")
            if not path.is_file():
                raise VideoError(
                    f"{folder / CSV_NAME} line {number}: image {row['image']} not found")
            frames.append((path, row))
        return frames
    images = sorted(folder.glob(f"*{FRAME_SUFFIX}"))
    if not images:
        raise VideoError(f"{folder} has no {FRAME_SUFFIX} frames")
    return [(path, None) for path in images]


def draw_overlay(rgb: np.ndarray, row: dict[str, str]) -> np.ndarray:
    """Steering / throttle / speed text and a steering bar (centre = straight, full width =
    full lock) on a copy of ``rgb``."""
    out = rgb.copy()
    height, width = out.shape[:2]
    try:
        steering = float(row["steering"])
        throttle, speed = float(row["throttle"]), float(row["speed"])
    except (KeyError, ValueError) as error:
        raise VideoError(f"{CSV_NAME} row for {row.get('image')}: bad number ({error})") from None
    text = f"steer {steering:+.3f}  throttle {throttle:+.2f}  {speed:.1f} mph"
    cv2.putText(out, text, (BAR_MARGIN, 14), cv2.FONT_HERSHEY_SIMPLEX, TEXT_SCALE, (0, 0, 0), 3,
                cv2.LINE_AA)
    cv2.putText(out, text, (BAR_MARGIN, 14), cv2.FONT_HERSHEY_SIMPLEX, TEXT_SCALE, TEXT_COLOR, 1,
                cv2.LINE_AA)
    top, bottom = height - BAR_MARGIN - BAR_HEIGHT, height - BAR_MARGIN
    left, right = BAR_MARGIN, width - BAR_MARGIN
    centre = (left + right) // 2
    cv2.rectangle(out, (left, top), (right, bottom), BAR_BACKGROUND, -1)
    tip = int(round(centre + max(-1.0, min(1.0, steering)) * (right - left) / 2))
    cv2.rectangle(out, (min(centre, tip), top), (max(centre, tip), bottom), BAR_COLOR, -1)
    cv2.line(out, (centre, top - 2), (centre, bottom + 2), TEXT_COLOR, 1)
    return out


def make_video(folder: Path | str, fps: float, output: Path | str | None = None,
               overlay: bool = False,
               saliency: Callable[[np.ndarray], np.ndarray] | None = None) -> Path:
    """Write the frames of ``folder`` to ``output`` (default ``<folder>.mp4``); returns it.
    ``saliency`` (e.g. a `SaliencyOverlay`) redraws each frame first, ``overlay`` then adds
    the drive log's numbers."""
    import imageio.v2 as imageio

    folder = Path(folder)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < float("inf"):
        raise VideoError(f"fps: expected a number > 0, got {fps!r}")
    frames = frame_list(folder)
    if overlay and frames[0][1] is None:
        raise VideoError(
            f"overlay=true needs {folder / CSV_NAME} (written by drive.py image_folder=...)")
    output = Path(output) if output else folder.parent / f"{folder.resolve().name}.mp4"
    first_shape = None
    try:
        with imageio.get_writer(str(output), format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                pixelformat="yuv420p", macro_block_size=16) as writer:
            for path, row in frames:
                rgb = read_rgb(path)
                if first_shape is None:
                    first_shape = rgb.shape
                elif rgb.shape != first_shape:
                    raise VideoError(f"{path}: size {rgb.shape[1]}x{rgb.shape[0]} differs from "
                                     f"the first frame's {first_shape[1]}x{first_shape[0]}")
                if saliency is not None:
                    rgb = saliency(rgb)
                writer.append_data(draw_overlay(rgb, row) if overlay else rgb)
    except OSError as error:
        raise VideoError(f"cannot write {output}: {error.strerror or error}") from None
    LOG.debug("wrote %d frames at %g fps to %s", len(frames), fps, output)
    return output
