"""Generate small, real simulator-format recordings for tests and benchmarks.

Each row gets real JPEGs (by default the simulator's three 320x160 cameras; any frame
size and camera subset for tests of other simulators) of a simple road whose
position follows the steering label the way the simulator's pictures do: **positive
steering = turn right**, and the road appears further right when the car must steer right
(road curving right ahead, or the car left of the lane centre). The left camera sees the
road as if the car were `CAMERA_OFFSET` steering units further left (so its label is
steering + correction), the right camera the opposite. A model can therefore learn the
labels, and the signs of camera corrections and shift augmentation can be checked on it.
The log's `speed` is that of a driver who slows for bends (`speed_mph`), so a model can
learn the target speed from the picture too.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from bc.core import udacity
from bc.core.images import write_rgb

# The scene is drawn on a Udacity-size canvas (the constants below are in its pixels).
WIDTH, HEIGHT = udacity.FRAME_WIDTH, udacity.FRAME_HEIGHT
VARIANTS = ("unity", "sample", "windows", "comma-decimal")
# Steering units the left/right cameras are offset by (the usual correction of 0.2).
CAMERA_OFFSET = {"center": 0.0, "left": 0.2, "right": -0.2}
HORIZON_Y = 62  # below the usual 60-row sky crop, so the road's far end stays visible
HOOD_Y = 140  # the usual 20-row hood crop
ROAD_NEAR_HALF_WIDTH = 110
ROAD_FAR_HALF_WIDTH = 10
NEAR_SHIFT_PX = 70.0  # road centre shift at the bottom per steering unit (lateral offset)
FAR_SHIFT_PX = 110.0  # road end shift at the horizon per steering unit (curvature)
SKY_RGB = (120, 170, 230)
GRASS_RGB = (70, 120, 50)
ROAD_RGB = (105, 105, 110)
LINE_RGB = (235, 235, 235)
HOOD_RGB = (35, 35, 40)
NOISE_LEVEL = 6  # +- grey levels of per-pixel noise, so frames differ like real ones
BEND_SLOWDOWN = 0.6  # share of the top speed the driver gives up at full lock
WINDOWS_ROOT = r"C:\Users\driver\Desktop\recordings"
_START = dt.datetime(2016, 12, 1, 13, 30, 48)


def road_centre(steering: float, y: float) -> float:
    """Column of the road centre at image row `y` for a frame showing `steering`."""
    t = (y - HORIZON_Y) / (HEIGHT - HORIZON_Y)  # 0 at the horizon, 1 at the bottom
    return WIDTH / 2 + steering * (FAR_SHIFT_PX * (1 - t) + NEAR_SHIFT_PX * t)


def render_frame(
    steering: float,
    rng: np.random.Generator | None = None,
    frame_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """An RGB uint8 road picture whose geometry encodes `steering` (positive = right);
    `frame_size` (width, height) scales the 320x160 scene to another camera's size."""
    rng = rng or np.random.default_rng(0)
    image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    image[:HORIZON_Y] = SKY_RGB
    image[HORIZON_Y:] = GRASS_RGB
    ys = np.linspace(HORIZON_Y, HEIGHT, 12)
    half = ROAD_FAR_HALF_WIDTH + (ROAD_NEAR_HALF_WIDTH - ROAD_FAR_HALF_WIDTH) * (ys - HORIZON_Y) / (
        HEIGHT - HORIZON_Y
    )
    centres = np.array([road_centre(steering, y) for y in ys])
    left = np.stack([centres - half, ys], axis=1)
    right = np.stack([centres + half, ys], axis=1)[::-1]
    cv2.fillPoly(image, [np.round(np.concatenate([left, right])).astype(np.int32)], ROAD_RGB)
    for edge in (left, right[::-1]):
        cv2.polylines(image, [np.round(edge).astype(np.int32)], False, LINE_RGB, 2)
    cv2.ellipse(
        image,
        (WIDTH // 2, HEIGHT + 30),
        (WIDTH // 2 + 40, HEIGHT - HOOD_Y + 30),
        0,
        180,
        360,
        HOOD_RGB,
        -1,
    )
    if frame_size is not None and tuple(frame_size) != (WIDTH, HEIGHT):
        image = cv2.resize(image, tuple(int(v) for v in frame_size), interpolation=cv2.INTER_AREA)
    gain = rng.uniform(0.8, 1.15)
    noise = rng.integers(-NOISE_LEVEL, NOISE_LEVEL + 1, image.shape, dtype=np.int16)
    return np.clip(image * np.float32(gain) + noise, 0, 255).astype(np.uint8)


def speed_mph(steering: float) -> float:
    """The recorded speed at this steering: top speed on a straight, slower in bends."""
    return udacity.TOP_SPEED_MPH * (1 - BEND_SLOWDOWN * min(1.0, abs(steering)))


def steering_sequence(rows: int, seed: int = 0, start: int = 0) -> np.ndarray:
    """Smooth steering in [-1, 1] with a large near-zero share, like keyboard driving."""
    rng = np.random.default_rng(seed)
    phase, period = rng.uniform(0, 2 * math.pi), rng.uniform(30, 50)
    t = np.arange(start, start + rows)
    smooth = (
        0.7 * np.sin(2 * math.pi * t / period + phase) * np.cos(2 * math.pi * t / (3.1 * period))
    )
    steering = np.where(np.abs(smooth) < 0.15, 0.0, smooth)
    return np.round(np.clip(steering, -1.0, 1.0), 4)


def _moment(index: int, seed: int) -> dt.datetime:
    return _START + dt.timedelta(days=seed, seconds=index * udacity.SAMPLE_PERIOD_S)


def _number(value: float, variant: str) -> str:
    text = f"{value:.6g}"
    return text.replace(".", ",") if variant == "comma-decimal" else text


def write_recording(
    folder: str | os.PathLike,
    rows: int = 60,
    variant: str = "unity",
    seed: int = 0,
    append: bool = False,
    frame_size: tuple[int, int] | None = None,
    cameras: Sequence[str] = udacity.CAMERAS,
) -> Path:
    """Write `rows` samples (a JPEG per camera each + log lines) in a log `variant`; return
    the folder.

    Variants: unity (no header, absolute paths), sample (Udacity header, relative `IMG/`
    paths, `", "` separators), windows (no header, `C:\\...\\IMG\\...` paths from another
    machine, CRLF line ends), comma-decimal (unity written on a `0,25` locale: unreadable on
    purpose).
    `append=True` adds rows after existing ones, as re-recording into a folder does.
    `frame_size` (width, height) writes frames of another simulator's size, and only the
    `cameras` listed get images (the others' log fields stay empty).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {list(VARIANTS)}, got {variant!r}")
    if rows < 0:
        raise ValueError(f"rows: expected >= 0, got {rows}")
    if not set(cameras) <= set(udacity.CAMERAS):
        raise ValueError(f"cameras: expected some of {list(udacity.CAMERAS)}, got {list(cameras)}")
    folder = Path(folder)
    image_dir = folder / udacity.IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    csv_path = folder / udacity.LOG_NAME
    start = 0
    if append and csv_path.exists():
        start = sum(
            1
            for line in csv_path.read_text().splitlines()
            if line.strip() and not line.startswith(udacity.LOG_COLUMNS[0])
        )
    rng = np.random.default_rng([seed, start])
    steering = steering_sequence(rows, seed, start)
    separator = ", " if variant == "sample" else ","
    lines = []
    if variant == "sample" and start == 0:
        lines.append(",".join(udacity.LOG_COLUMNS))
    for offset, value in enumerate(steering):
        moment = _moment(start + offset, seed)
        paths = []
        for camera in udacity.CAMERAS:
            if camera not in cameras:
                paths.append("")
                continue
            name = udacity.camera_image_name(camera, moment)
            frame = render_frame(value + CAMERA_OFFSET[camera], rng, frame_size)
            write_rgb(image_dir / name, frame)
            if variant == "sample":
                paths.append(f"{udacity.IMAGE_DIR}/{name}")
            elif variant == "windows":
                paths.append(f"{WINDOWS_ROOT}\\{folder.name}\\{udacity.IMAGE_DIR}\\{name}")
            else:
                paths.append(str((image_dir / name).resolve()))
        throttle = 0.0 if abs(value) > 0.5 else 0.8
        numbers = [_number(v, variant) for v in (value, throttle, 0.0, speed_mph(value))]
        lines.append(separator.join(paths + numbers))
    newline = "\r\n" if variant == "windows" else "\n"  # C#'s WriteLine on Windows
    with open(csv_path, "a" if append else "w", newline="") as handle:
        handle.write("".join(line + newline for line in lines))
    return folder
