"""The Udacity simulator's contract, written once (docs/PROTOCOL.md).

Everything that reads or writes recordings, talks to the simulator, or stands in for it
(`bc.data`, `bc.drive`, `bc.sim`, the benchmarks) takes these facts from here.
"""

from __future__ import annotations

import math
from datetime import datetime

# --- Training-mode recording (docs/PROTOCOL.md section 1) ----------------------------------
LOG_NAME = "driving_log.csv"
IMAGE_DIR = "IMG"
CAMERAS = ("center", "left", "right")
LOG_COLUMNS = (*CAMERAS, "steering", "throttle", "brake", "speed")
NUMERIC_COLUMNS = ("steering", "throttle", "brake", "speed")
# Valid range of each numeric log column; a value outside it is a bad row.
LABEL_RANGES: dict[str, tuple[float, float]] = {
    "steering": (-1.0, 1.0),  # steer angle / MAX_STEERING_DEG
    "throttle": (-1.0, 1.0),  # Unity logs 0..1; negative (braking) throttle is accepted too
    "brake": (0.0, 1.0),
    "speed": (0.0, math.inf),  # mph
}
IMAGE_TIME_FORMAT = "%Y_%m_%d_%H_%M_%S"  # + "_fff" milliseconds, local time
IMAGE_SUFFIX = ".jpg"

# --- Cameras, car and clock ----------------------------------------------------------------
FRAME_WIDTH = 320
FRAME_HEIGHT = 160
SAMPLE_RATE_HZ = 15.0
SAMPLE_PERIOD_S = 1.0 / SAMPLE_RATE_HZ
MAX_STEERING_DEG = 25.0
TOP_SPEED_MPH = 30.0
UNITY_JPEG_QUALITY = 75  # Texture2D.EncodeToJPG() default

# --- Autonomous mode: Socket.IO on port 4567 (docs/PROTOCOL.md section 2) ------------------
PORT = 4567
SOCKET_PATH = "/socket.io/?EIO=4&transport=websocket"  # what the Unity client dials
TELEMETRY_EVENT = "telemetry"
STEER_EVENT = "steer"
MANUAL_EVENT = "manual"
TELEMETRY_FIELDS = ("steering_angle", "throttle", "speed", "image")
STEER_FIELDS = ("steering_angle", "throttle")
STEER_DECIMALS = 6


def camera_image_name(camera: str, when: datetime) -> str:
    """Unity's file name for a `camera` frame taken at local time `when`
    (``center_2016_12_01_13_30_48_287.jpg``)."""
    return f"{camera}_{when.strftime(IMAGE_TIME_FORMAT)}_{when.microsecond // 1000:03d}{IMAGE_SUFFIX}"


def steer_payload(steering: float, throttle: float) -> dict[str, str]:
    """The ``steer`` event's payload: fixed-point **strings** (a JSON number, or an exponent,
    makes Unity's parser throw and the car stall silently)."""
    return {"steering_angle": f"{steering:.{STEER_DECIMALS}f}",
            "throttle": f"{throttle:.{STEER_DECIMALS}f}"}


def format_n4(value: float) -> str:
    """C#'s ``float.ToString("N4")`` for the telemetry values Unity sends (|v| < 1000)."""
    text = f"{value:.4f}"
    return "0.0000" if text == "-0.0000" else text
