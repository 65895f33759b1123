"""Training-mode recording in exactly the Unity simulator's format (PROTOCOL.md section 1).

`driving_log.csv` has no header and the columns center,left,right,steering,throttle,
brake,speed; image paths are absolute and named `IMG/<camera>_yyyy_MM_dd_HH_mm_ss_fff.jpg`
by a simulated clock. A row is written and flushed only after its three JPEGs are on
disk, so an interrupted recording leaves a valid log; re-recording appends.
"""

from __future__ import annotations

import csv
import math
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
from tqdm import tqdm

from bc.sim.camera import CAMERAS, Renderer
from bc.sim.car import DEFAULT_DT, Car, CarState
from bc.sim.expert import ActionNoise, Expert, NoiseConfig, RecoveryConfig
from bc.sim.track import Track

LOG_NAME = "driving_log.csv"
IMG_DIR = "IMG"
TIME_FORMAT = "%Y_%m_%d_%H_%M_%S"  # + _fff milliseconds, the Unity recorder's local time
_STAMP = re.compile(r"(?:center|left|right)_(\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2})_(\d{3})\.jpg$")
OFF_ROAD_MARGIN_M = 0.5  # beyond the road edge by this much the car is put back on the centreline
MAX_STEPS_PER_LAP_FACTOR = 10  # safety stop if the car makes no progress


def image_name(camera: str, when: datetime) -> str:
    """Unity's image file name for `camera` at local time `when`."""
    return f"{camera}_{when.strftime(TIME_FORMAT)}_{when.microsecond // 1000:03d}.jpg"


def parse_stamp(name: str) -> datetime | None:
    """Timestamp of a Unity-style image file name (any folder / separator), or None."""
    m = _STAMP.search(name.replace("\\", "/").rsplit("/", 1)[-1])
    if not m:
        return None
    return datetime.strptime(m.group(1), TIME_FORMAT) + timedelta(milliseconds=int(m.group(2)))


def last_timestamp(folder: Path) -> datetime | None:
    """Latest timestamp already used in a recording folder (log rows and IMG files)."""
    stamps: list[datetime] = []
    log = folder / LOG_NAME
    if log.is_file():
        with open(log, newline="", encoding="utf-8", errors="replace") as fh:
            for row in csv.reader(fh):
                for cell in row[:3]:
                    stamp = parse_stamp(cell.strip())
                    if stamp is not None:
                        stamps.append(stamp)
    img = folder / IMG_DIR
    if img.is_dir():
        for p in img.glob("*.jpg"):
            stamp = parse_stamp(p.name)
            if stamp is not None:
                stamps.append(stamp)
    return max(stamps) if stamps else None


def _write_jpeg(path: Path, rgb: np.ndarray, quality: int) -> None:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)  # cv2 encodes BGR; the JPEG then holds RGB
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"{path}: JPEG encoding failed")
    with open(path, "wb") as fh:
        fh.write(buf.tobytes())


def _fmt(value: float) -> str:
    return f"{value:.6f}"


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        if fh.tell() == 0:
            return True
        fh.seek(-1, 2)
        return fh.read(1) in (b"\n", b"\r")


def record(
    track: Track,
    out: Path,
    laps: float = 3,
    seed: int = 0,
    speed_mph: float = 20,
    noise: NoiseConfig | Mapping[str, Any] | bool | None = None,
    recovery: RecoveryConfig | Mapping[str, Any] | bool | None = None,
    dt: float = DEFAULT_DT,
    progress: bool = True,
    jpeg_quality: int = 90,
    max_rows: int | None = None,
    start_s: float = 0.0,
    renderer: Renderer | None = None,
) -> Path:
    """Drive the expert for `laps` laps (or `max_rows` samples) and write a Unity recording.

    `noise`/`recovery` perturb the executed action (None: defaults, False: off, or a
    mapping of NoiseConfig / RecoveryConfig fields); the logged steering/throttle are
    always the expert's clean action. `renderer` reuses a prebuilt
    Renderer of this track (its seed sets the lighting). Returns the log path.
    """
    if laps <= 0 and not max_rows:
        raise ValueError(f"record: laps must be > 0, got {laps}")
    if not 0 <= jpeg_quality <= 100:
        raise ValueError(f"record: jpeg_quality must be in 0..100, got {jpeg_quality}")
    out = Path(out).expanduser().resolve()
    img_dir = out / IMG_DIR
    img_dir.mkdir(parents=True, exist_ok=True)
    log_path = out / LOG_NAME

    clock = datetime.now()
    previous = last_timestamp(out)
    step = timedelta(seconds=dt)
    if previous is not None:  # appending: continue after the last name already used
        clock = max(clock, previous + step)

    car = Car()
    expert = Expert(track, speed_mph=speed_mph, car=car, dt=dt)
    perturb = ActionNoise(noise, recovery, dt=dt, seed=seed)
    if renderer is None:
        renderer = Renderer(track, seed=seed)
    elif renderer.track is not track:
        raise ValueError("record: the renderer was built for a different track")
    x, y, heading = track.pose_at(start_s)
    state = CarState(x, y, heading, 0.0)

    goal = laps * track.length
    expected_steps = goal / max(expert.speed * 0.5, 1.0) / dt
    max_steps = max_rows if max_rows else int(MAX_STEPS_PER_LAP_FACTOR * expected_steps) + 100
    travelled = 0.0
    prev_s = track.locate(state.x, state.y).s
    resets = 0
    rows = 0
    bar = tqdm(total=None if max_rows else round(goal), unit="m" if not max_rows else "row",
               disable=not progress, desc=f"record {track.name}")
    needs_newline = log_path.is_file() and not _ends_with_newline(log_path)
    with open(log_path, "a", newline="", encoding="utf-8") as fh:
        if needs_newline:  # a log cut off mid-line by someone else: never glue our row onto it
            fh.write("\n")
        writer = csv.writer(fh, lineterminator="\n")
        while rows < max_steps and (max_rows or travelled < goal):
            here = track.locate(state.x, state.y)
            steering, throttle = expert.act(state)
            when = clock + rows * step
            paths = []
            for camera in CAMERAS:
                path = img_dir / image_name(camera, when)
                _write_jpeg(path, renderer.render(state, camera), jpeg_quality)
                paths.append(str(path))
            values = (steering, max(0.0, throttle), max(0.0, -throttle), state.speed_mph)
            writer.writerow(paths + [_fmt(v) for v in values])
            fh.flush()
            rows += 1

            exec_steer, exec_throttle = perturb(steering, throttle, here.cte, track.width / 2,
                                                expert.feedforward(here.s))
            state = car.step(state, exec_steer, exec_throttle, dt)
            now = track.locate(state.x, state.y)
            ds = (now.s - prev_s + track.length / 2) % track.length - track.length / 2
            travelled += ds
            prev_s = now.s
            if abs(now.cte) > track.width / 2 + OFF_ROAD_MARGIN_M:
                resets += 1  # noise pushed the car off: put it back like an intervention
                state = CarState(now.x, now.y, now.heading, state.speed)
                expert.reset()
            bar.update(1 if max_rows else max(0, round(travelled) - bar.n))
    bar.close()
    if progress:
        print(f"recorded {rows} rows ({travelled:.0f} m, {resets} off-road resets) to {log_path}")
    return log_path
