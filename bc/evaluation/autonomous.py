"""Autonomous mode: the built-in simulator driven by a drive server, as the Unity simulator is.

`AutonomousDrive.drive` runs the episode loop (bc/evaluation/episodes.py, one episode) with the
drive server as its policy (`ServerPolicy`): each new state's center camera goes out as Unity's
telemetry through `bc.sim.unity_client.UnityClient`, and the reply drives the car. Progress,
laps, the off-road rule, interventions and the stall rule are the env's; `run` also writes
the metrics and pictures and logs them to MLflow.

Time: in lockstep every reply advances the car one `dt` step, whatever the server's latency.
With `realtime` (the default) the round trip also passes in the simulation, as in Unity where
physics runs on while the server thinks: a reply after latency L advances max(dt, L) (whole
`dt` steps, the remainder carried over), all but the last step with the previous controls.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from bc.evaluation.episodes import EpisodeSpec, drive
from bc.evaluation.expert import expert_drive
from bc.evaluation.metrics import (DriveResult, compute_metrics, format_table, lap_time_s,
                                   log_to_mlflow, whole_laps, write_json, write_trajectory_csv)
from bc.core.settings import flag, integer, number, optional, setting
from bc.sim.car import MPS_PER_MPH, CarState
from bc.sim.env import car_model, resolve_track
from bc.sim.unity_client import (DEFAULT_REPLY_TIMEOUT_S, AutonomousError, UnityClient,
                                 encode_jpeg_b64, telemetry_message)
from bc.core.udacity import MANUAL_EVENT, MAX_STEERING_DEG, PORT, SAMPLE_PERIOD_S
from bc.sim.plots import open_video
from bc.sim.plots import plot_trajectory

log = logging.getLogger(__name__)

DEFAULT_MAX_MANUAL_IN_A_ROW = 100  # `manual` is for empty telemetry; ours is never empty
STALL_TIMEOUT_S = 30.0  # simulated seconds without moving before a drive gives up
MIN_MEAN_SPEED_MPS = 1.0  # default step cap: the laps at this mean speed
PROGRESS_BAR_STEP_M = 5.0

FramesCallback = Callable[[int, np.ndarray, CarState], None]


class ServerClock:
    """How many physics steps one reply pays for. Lockstep: one per `steer`, none per `manual`.
    Realtime (Unity, whose physics runs on while the server thinks): the round trip passes
    too, in whole `dt` steps (at least one per `steer`), the remainder carried over."""

    def __init__(self, dt: float, realtime: bool) -> None:
        self.dt, self.realtime, self.owed_s = float(dt), bool(realtime), 0.0

    def steps(self, latency_s: float, manual: bool) -> int:
        if not self.realtime:
            return 0 if manual else 1
        self.owed_s += latency_s if manual else max(self.dt, latency_s)
        count = max(0 if manual else 1, int(self.owed_s / self.dt))
        self.owed_s -= count * self.dt
        return count


def _unit(value: float) -> float:
    return min(1.0, max(-1.0, value))


def default_max_steps(track_length: float, laps: float, dt: float) -> int:
    """A cap for a car that never gets going: the laps at MIN_MEAN_SPEED_MPS."""
    return int(math.ceil(laps * track_length / MIN_MEAN_SPEED_MPS / dt)) + 1


class ServerPolicy:
    """The drive server behind `client` as the episode loop's policy: a new state's center
    camera goes out as telemetry (again after `manual`), and each reply pays for the steps
    `clock` says, the previous controls held for all but the last (module doc)."""

    def __init__(self, client: UnityClient, clock: "ServerClock", pictures: "_Pictures",
                 frames_callback: "FramesCallback | None", max_manual_in_a_row: int) -> None:
        self.client, self.clock, self.pictures = client, clock, pictures
        self.frames_callback, self.max_manual_in_a_row = frames_callback, max_manual_in_a_row
        self.round_trips: list[float] = []
        self.manual = self.manual_in_a_row = 0
        self.controls = (0.0, 0.0)  # what the car is executing
        self.queue: list[tuple[float, float]] = []  # the steps the last reply paid for

    def reset(self, slot: int, spec: EpisodeSpec) -> None:
        """One episode per connection: nothing to forget."""

    def intervened(self, slot: int) -> None:
        """Nothing: Unity does not tell the server either."""

    def act(self, slots: Sequence[int], observations: np.ndarray,
            infos: Sequence[Mapping[str, Any]]) -> np.ndarray:
        if not self.queue:
            self.exchange(observations[0], infos[0])
        return np.array([self.queue.pop(0)], dtype=np.float64)

    def exchange(self, frame: np.ndarray, info: Mapping[str, Any]) -> None:
        """Show the server this state (Unity's center camera and gauges) until a reply pays
        for at least one step."""
        self.pictures.show(frame, info)
        message = telemetry_message(self.controls[0] * MAX_STEERING_DEG,
                                    max(0.0, self.controls[1]), info["speed"] / MPS_PER_MPH,
                                    encode_jpeg_b64(frame))
        while not self.queue:
            index = len(self.round_trips)
            if self.frames_callback is not None:
                self.frames_callback(index, frame, info["state"])
            sent = time.perf_counter()
            reply = self.client.exchange(message, index)
            self.round_trips.append(time.perf_counter() - sent)
            manual = reply.event == MANUAL_EVENT
            if manual:
                self.manual, self.manual_in_a_row = self.manual + 1, self.manual_in_a_row + 1
                self.check_manual(index)
                new = self.controls
            else:
                self.manual_in_a_row = 0
                new = (_unit(reply.steering), _unit(reply.throttle))
            count = self.clock.steps(self.round_trips[-1], manual)
            self.queue = [self.controls] * max(0, count - 1) + [new] * min(count, 1)
            self.controls = new

    def check_manual(self, index: int) -> None:
        if self.manual_in_a_row > self.max_manual_in_a_row:
            raise AutonomousError(
                f"drive server answered 'manual' to {self.manual_in_a_row} telemetry messages in "
                f"a row (last: telemetry {index}); 'manual' is the reply to an empty telemetry "
                f"and ours is never empty -- is the server rejecting the frames?")


@dataclass
class AutonomousDrive:
    """The simulator in autonomous mode against the drive server at host:port (settings as in
    conf/simulate.yaml `autonomous`, checked here): `drive(track)` is the closed loop,
    `run(track)` also writes the metrics and pictures and logs them to MLflow.

    Each exchange shows the server the center camera of the current state and applies its
    reply for the steps `ServerClock` says the reply paid for: one in lockstep; with
    `realtime` (the default, as Unity runs) the server's round trip as well, the car keeping
    its previous controls meanwhile.
    """

    laps: float = 1.0
    host: str = "127.0.0.1"
    port: int = PORT
    seed: int = 0  # lighting and shadows (and the shape of a `random` track)
    dt: float = SAMPLE_PERIOD_S
    realtime: bool = True
    reverse: bool = False  # drive the track the other way round
    car: str | None = None  # car model (bc.sim.car.CARS); None: the default (dynamic)
    reply_timeout_s: float = DEFAULT_REPLY_TIMEOUT_S
    max_steps: int | None = None  # None: the laps at MIN_MEAN_SPEED_MPS
    start_speed_mph: float = 0.0
    max_manual_in_a_row: int = DEFAULT_MAX_MANUAL_IN_A_ROW
    stall_timeout_s: float = STALL_TIMEOUT_S
    progress: bool = False
    # what `run` writes: <out>/metrics.json, trajectory.png/.csv (+ center.mp4)
    video: bool = False
    out: str | None = None  # None: the Hydra run folder
    label: str | None = None  # eval/<label>/ in MLflow; None: the track's name
    run_id: str | None = None  # MLflow run to log the metrics and files to
    tracking_uri: str | None = None

    def __post_init__(self) -> None:
        for name in ("laps", "dt", "reply_timeout_s", "stall_timeout_s"):
            setattr(self, name, setting(name, getattr(self, name), number, lambda v: v > 0, "> 0"))
        self.start_speed_mph = setting("start_speed_mph", self.start_speed_mph, number,
                                       lambda speed: speed >= 0, ">= 0")
        self.max_steps = setting("max_steps", self.max_steps, optional(integer),
                                 lambda steps: steps is None or steps >= 1,
                                 ">= 1 (or null: as many as the laps need)")
        self.max_manual_in_a_row = setting("max_manual_in_a_row", self.max_manual_in_a_row,
                                           integer, lambda count: count >= 0, ">= 0")
        self.port = setting("port", self.port, integer, lambda port: 0 <= port < 65536,
                            "a TCP port")
        self.seed = setting("seed", self.seed, integer, lambda seed: True, "an integer")
        for name in ("realtime", "reverse", "progress", "video"):
            setattr(self, name, flag(name, getattr(self, name)))
        car_model(self.car)  # an unknown car fails now

    def spec(self, track: Any) -> EpisodeSpec:
        """The episode this drive runs (a Track or a track spec)."""
        length = resolve_track(track, self.seed).length
        return EpisodeSpec(track, laps=self.laps, reverse=self.reverse, lighting=self.seed,
                           car=self.car, dt=self.dt, start_speed_mph=self.start_speed_mph,
                           stall_timeout_s=self.stall_timeout_s,
                           max_steps=self.max_steps or default_max_steps(length, self.laps,
                                                                         self.dt))

    def drive(self, track: Any, frames_callback: FramesCallback | None = None,
              video_path: str | Path | None = None) -> DriveResult:
        """Drive `laps` laps of `track` (a Track or a track spec); `frames_callback(index, rgb,
        state)` sees every frame sent, `video_path` gets the distinct ones as an mp4."""
        spec = self.spec(track)
        started = time.perf_counter()
        with UnityClient(self.host, self.port, self.reply_timeout_s) as client, \
                _Pictures(video_path, spec, self.progress) as pictures:
            policy = ServerPolicy(client, ServerClock(spec.dt, self.realtime), pictures,
                                  frames_callback, self.max_manual_in_a_row)
            result, = drive([spec], policy, jpeg=False)
        return dataclasses.replace(
            result, frames=len(policy.round_trips), manual_replies=policy.manual,
            greetings=client.greetings, stray_steers=client.stray_steers,
            round_trip_s=np.asarray(policy.round_trips, dtype=np.float64),
            wall_s=time.perf_counter() - started, realtime=self.realtime)

    def output_folder(self, track_name: str) -> Path:
        """`out`, else the Hydra run folder, else outputs/autonomous/<track>-<time>."""
        if self.out:
            return Path(self.out)
        try:
            from hydra.core.hydra_config import HydraConfig

            return Path(HydraConfig.get().runtime.output_dir)
        except (ImportError, ValueError):
            stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
            return Path("outputs") / "autonomous" / f"{track_name}-{stamp}"

    def expert_lap_time(self, result: DriveResult) -> float | None:
        """The expert's lap time over the whole laps the drive completed, on the same track,
        direction, car and step, at its own pace; None before the first whole lap."""
        laps = whole_laps(result)
        if laps < 1:
            return None
        # result.track is the road as driven (already reversed with `reverse`)
        return lap_time_s(expert_drive(result.track, laps, seed=self.seed, car=self.car,
                                       dt=self.dt))

    def run(self, track: Any) -> dict[str, Any]:
        """Drive `track`, print the metrics table, write metrics.json, trajectory.png/.csv
        (+ center.mp4) and log them to MLflow when `run_id` is set. Returns the metrics."""
        track = resolve_track(track, self.seed)
        out = self.output_folder(track.name)
        out.mkdir(parents=True, exist_ok=True)
        video_path = out / "center.mp4" if self.video else None
        result = self.drive(track, video_path=video_path)
        return self.report(result, out, f"server {self.host}:{self.port}",
                           [video_path] if video_path is not None else [])

    def report(self, result: DriveResult, out: Path, driver: str,
               extra: Sequence[Path] = ()) -> dict[str, Any]:
        """A drive's metrics (pace against the expert's lap time) as a table, metrics.json,
        trajectory.png/.csv in `out` (+ `extra` files), logged to MLflow with `run_id`."""

        metrics = compute_metrics(result, self.expert_lap_time(result))
        print(format_table(metrics, title=f"autonomous drive: track {result.track.name}, "
                                          f"{driver}"))
        if result.stop_reason != "laps":
            log.warning("the drive stopped before %s laps: %s", result.laps, result.stop_reason)
        artifacts = [
            write_json(metrics, out / "metrics.json"),
            plot_trajectory(result, out / "trajectory.png"),
            write_trajectory_csv(result, out / "trajectory.csv"),
            *extra,
        ]
        print(f"wrote {', '.join(str(p) for p in artifacts)}")
        if self.run_id:
            keys = log_to_mlflow(self.run_id, self.label or result.track.name, metrics, artifacts,
                                 self.tracking_uri, track=result.track)
            print(f"logged {len(keys)} metrics ({keys[0].rsplit('/', 1)[0]}/...) and "
                  f"{len(artifacts)} artifacts to MLflow run {self.run_id}")
        return metrics


class _Pictures:
    """What a person watching sees: the distinct frames as an mp4, a progress bar in metres."""

    def __init__(self, video_path: str | Path | None, spec: EpisodeSpec, progress: bool) -> None:
        self.writer = self.bar = None
        self.length = spec.road.length
        if video_path is not None:

            self.writer = open_video(video_path, fps=1.0 / spec.dt)
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=int(round(spec.laps * self.length)), unit="m",
                            desc=f"autonomous {spec.road.name}")

    def show(self, frame: np.ndarray, info: Mapping[str, Any]) -> None:
        if self.writer is not None:
            self.writer.append_data(frame)
        if self.bar is not None:
            metres = int(info["progress"] * self.length)
            if metres - self.bar.n >= PROGRESS_BAR_STEP_M:
                self.bar.update(metres - self.bar.n)

    def __enter__(self) -> "_Pictures":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()
