"""Training-mode recording in exactly the Unity simulator's format (docs/PROTOCOL.md section 1).

`driving_log.csv` has no header and the columns center,left,right,steering,throttle,
brake,speed; image paths are absolute and named `IMG/<camera>_yyyy_MM_dd_HH_mm_ss_fff.jpg`
by a simulated clock. A row is written and flushed only after its three JPEGs are on
disk, so an interrupted recording leaves a valid log; re-recording appends.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Mapping

from tqdm import tqdm

from bc.core import images
from bc.data.log import file_name_from_log_path
from bc.core.settings import flag, integer, number, optional, setting
from bc.errors import ConfigError
from bc.sim.car import MPS_PER_MPH
from bc.sim.env import car_model
from bc.sim.expert import ActionNoise, Expert, NoiseConfig, RecoveryConfig
from bc.sim.track import Track
from bc.core.udacity import (CAMERAS, IMAGE_DIR, IMAGE_SUFFIX, IMAGE_TIME_FORMAT, LOG_NAME,
                        SAMPLE_PERIOD_S, camera_image_name)
from bc.evaluation.episodes import EpisodeSpec, drive

_STAMP = re.compile(rf"(?:{'|'.join(CAMERAS)})_(\d{{4}}(?:_\d{{2}}){{5}})_(\d{{3}})"
                    rf"{re.escape(IMAGE_SUFFIX)}$")  # the IMAGE_TIME_FORMAT part, then milliseconds
MAX_STEPS_PER_LAP_FACTOR = 10  # safety stop if the car makes no progress


def parse_stamp(name: str) -> datetime | None:
    """Timestamp of a Unity-style image file name (any folder / separator), or None."""
    m = _STAMP.search(file_name_from_log_path(name))
    if not m:
        return None
    milliseconds = timedelta(milliseconds=int(m.group(2)))
    return datetime.strptime(m.group(1), IMAGE_TIME_FORMAT) + milliseconds


def last_timestamp(folder: Path) -> datetime | None:
    """Latest timestamp already used in a recording folder (log rows and IMG files)."""
    stamps: list[datetime] = []
    log = folder / LOG_NAME
    if log.is_file():
        with open(log, newline="", encoding="utf-8", errors="replace") as fh:
            for row in csv.reader(fh):
                for cell in row[:len(CAMERAS)]:
                    stamp = parse_stamp(cell.strip())
                    if stamp is not None:
                        stamps.append(stamp)
    img = folder / IMAGE_DIR
    if img.is_dir():
        for p in img.glob(f"*{IMAGE_SUFFIX}"):
            stamp = parse_stamp(p.name)
            if stamp is not None:
                stamps.append(stamp)
    return max(stamps) if stamps else None


def _fmt(value: float) -> str:
    return f"{value:.6f}"


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        if fh.tell() == 0:
            return True
        fh.seek(-1, 2)
        return fh.read(1) in (b"\n", b"\r")


@dataclass
class Recorder:
    """How the expert records: `laps` laps (or `max_rows` samples) at `speed_mph` (None: its
    own pace), every `dt`, with the `car` model, the track driven the other way if `reverse`.

    `noise`/`recovery` perturb the executed action (None: defaults, False: off, or a mapping
    of NoiseConfig / RecoveryConfig fields); the logged steering/throttle are always the
    expert's clean action. Settings are checked here, before anything is written.
    """

    laps: float = 3.0
    seed: int = 0
    speed_mph: float | None = 20.0
    car: str | None = None  # bc.sim.car.CARS; None: the default (dynamic)
    reverse: bool = False
    noise: NoiseConfig | Mapping[str, Any] | bool | None = None
    recovery: RecoveryConfig | Mapping[str, Any] | bool | None = None
    dt: float = SAMPLE_PERIOD_S
    jpeg_quality: int = 90
    max_rows: int | None = None
    start_s: float = 0.0
    progress: bool = True

    def __post_init__(self) -> None:
        def positive(value: float) -> bool:
            return value > 0

        self.dt = setting("dt", self.dt, number, positive, "a simulation step > 0 s")
        self.max_rows = setting("max_rows", self.max_rows, optional(integer),
                                lambda rows: rows is None or rows >= 1,
                                "a number of samples >= 1 (or null to record `laps` laps)")
        self.laps = setting("laps", self.laps, number,
                            lambda laps: laps > 0 or self.max_rows is not None, "a number > 0")
        self.speed_mph = setting("speed_mph", self.speed_mph, optional(number),
                                 lambda speed: speed is None or speed > 0,
                                 "a number > 0 (or null: the expert's own pace)")
        self.seed = setting("seed", self.seed, integer, lambda seed: True, "an integer")
        self.start_s = setting("start_s", self.start_s, number, lambda s: True, "a number (m)")
        self.jpeg_quality = setting("jpeg_quality", self.jpeg_quality, integer,
                                    lambda quality: 0 <= quality <= 100, "an integer in 0..100")
        self.progress = flag("progress", self.progress)
        self.reverse = flag("reverse", self.reverse)
        car_model(self.car)  # an unknown car fails now, before anything is written
        ActionNoise(self.noise, self.recovery)  # checks the noise and recovery settings now

    def record(self, track: Track | str, out: str | Path) -> Path:
        """Drive the expert on `track` (a Track or a track spec) through the episode loop
        (bc/evaluation/episodes.py) and write (or append to) the Unity recording in `out`;
        returns the log path."""
        # the loop sits above bc.sim (it drives the world): imported here, where it is used

        spec = EpisodeSpec(track, laps=None if self.max_rows else self.laps,
                           reverse=self.reverse, lighting=self.seed, car=self.car, dt=self.dt,
                           start_s=self.start_s, stall_timeout_s=None, cameras=CAMERAS)
        policy = NoisyExpert(self)
        road = spec.road
        goal_m = self.laps * road.length
        expert = policy.reset(0, spec)
        expected_steps = goal_m / max(expert.speed * 0.5, 1.0) / spec.dt
        max_steps = self.max_rows or int(MAX_STEPS_PER_LAP_FACTOR * expected_steps) + 100
        bar = tqdm(total=None if self.max_rows else round(goal_m),
                   unit="row" if self.max_rows else "m", disable=not self.progress,
                   desc=f"record {road.name}")

        def write(slot: int, info: Mapping[str, Any], executed: Any) -> None:
            writer.write(info["frames"], *policy.labels[slot])
            bar.update(1 if self.max_rows else
                       max(0, round(info["progress"] * road.length) - bar.n))

        with RecordingWriter(out, spec.dt, self.jpeg_quality) as writer:
            result, = drive([dataclasses.replace(spec, max_steps=max_steps)], policy,
                            jpeg=False, on_step=write)
        bar.close()
        if self.progress:
            print(f"recorded {writer.rows} rows ({result.s[-1]:.0f} m, "
                  f"{len(result.intervention_steps)} off-road resets) to {writer.log_path}")
        return writer.log_path


class NoisyExpert:
    """The recording's driver: the expert's clean action (`labels[slot]`: steering, throttle
    and the car's speed in mph, what the log's row says) perturbed by the Recorder's noise and
    recovery drifts before the car executes it."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.labels: dict[int, tuple[float, float, float]] = {}
        self.experts: dict[int, tuple[Any, Expert, ActionNoise]] = {}

    def reset(self, slot: int, spec: Any) -> Expert:
        known = self.experts.get(slot)
        if known is not None and known[0] is spec:
            return known[1]
        expert = Expert(spec.road, speed_mph=self.recorder.speed_mph, car=car_model(spec.car),
                        dt=spec.dt)
        noise = ActionNoise(self.recorder.noise, self.recorder.recovery, dt=spec.dt,
                            seed=self.recorder.seed)
        self.experts[slot] = (spec, expert, noise)
        return expert

    def intervened(self, slot: int) -> None:
        self.experts[slot][1].reset()  # noise pushed the car off: the env put it back

    def act(self, slots: Any, observations: Any, infos: Any) -> list[tuple[float, float]]:
        actions = []
        for slot, info in zip(slots, infos):
            _, expert, perturb = self.experts[slot]
            steering, throttle = expert.act(info["state"])
            self.labels[slot] = (steering, throttle, info["speed"] / MPS_PER_MPH)
            actions.append(perturb(steering, throttle, info["cte"], expert.track.width / 2,
                                   expert.feedforward(info["s"])))
        return actions


class RecordingWriter:
    """Appends rows to the Unity recording in `out` (driving_log.csv + IMG/): the three camera
    JPEGs first, then the row, flushed (module doc). Image names follow a simulated clock of
    `dt` per row that continues after the names already used there. A context manager:

        with RecordingWriter("data/lake", dt) as writer:
            writer.write(info["frames"], steering, throttle, speed_mph)
    """

    def __init__(self, out: str | Path, dt: float = SAMPLE_PERIOD_S,
                 jpeg_quality: int = 90) -> None:
        self.out = Path(out).expanduser().resolve()
        self.img_dir = self.out / IMAGE_DIR
        try:
            self.img_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"out: cannot create {self.img_dir}: "
                              f"{error.strerror or error}") from None
        self.log_path = self.out / LOG_NAME
        self.jpeg_quality = jpeg_quality
        self.step = timedelta(seconds=dt)
        self.clock = datetime.now()
        previous = last_timestamp(self.out)
        if previous is not None:  # appending: continue after the last name already used
            self.clock = max(self.clock, previous + self.step)
        self.rows = 0
        self._fh: Any = None
        self._writer: Any = None

    def __enter__(self) -> "RecordingWriter":
        needs_newline = self.log_path.is_file() and not _ends_with_newline(self.log_path)
        self._fh = open(self.log_path, "a", newline="", encoding="utf-8")
        if needs_newline:  # a log cut off mid-line by someone else: never glue our row onto it
            self._fh.write("\n")
        self._writer = csv.writer(self._fh, lineterminator="\n")
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

    def write(self, frames: Mapping[str, Any], steering: float, throttle: float,
              speed_mph: float) -> None:
        """One row: `frames` {camera: RGB} of every camera, the labels (throttle in [-1, 1]:
        a negative one is logged as brake) and the speed column (mph)."""
        when = self.clock + self.rows * self.step
        paths = []
        for camera in CAMERAS:
            path = self.img_dir / camera_image_name(camera, when)
            images.write_rgb(path, frames[camera], self.jpeg_quality)
            paths.append(str(path))
        values = (steering, max(0.0, throttle), max(0.0, -throttle), speed_mph)
        self._writer.writerow(paths + [_fmt(v) for v in values])
        self._fh.flush()
        self.rows += 1
