"""Autonomous mode: the simulator side of a drive server, behaving exactly like the Unity client.

The Unity simulator (docs/PROTOCOL.md section 2) opens a raw websocket to
``/socket.io/?EIO=4&transport=websocket``, never sends the namespace connect ``40``, pings
every ``pingInterval``, emits ``42["telemetry",{...}]`` with every value a string and waits for
one ``steer`` or ``manual`` per telemetry (lockstep). `UnityClient` is that wire behaviour;
`AutonomousDrive.drive` is the small loop that feeds it the DrivingEnv (bc/sim/env.py): send
the center camera, apply the reply to the env (`run` also reports). Whatever drives this
client drives the real simulator too. Progress, laps, the off-road rule and interventions
are the env's.

Time: in lockstep every reply advances the car one `dt` step, whatever the server's latency.
With `realtime` (the default) the round trip also passes in the simulation, as in Unity where
physics runs on while the server thinks: a reply after latency L advances max(dt, L) (whole
`dt` steps, the remainder carried over), all but the last step with the previous controls.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import select
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import websocket

from bc import images
from bc.settings import flag, integer, number, optional, setting
from bc.errors import BcError
from bc.sim.car import MPS_PER_MPH, CarState
from bc.sim.env import DrivingEnv, car_model, resolve_track
from bc.evaluation.expert import expert_drive
from bc.evaluation.metrics import (DriveResult, compute_metrics, format_table, lap_time_s,
                                   log_to_mlflow, whole_laps, write_json, write_trajectory_csv)
from bc.udacity import (MANUAL_EVENT, MAX_STEERING_DEG, PORT, SAMPLE_PERIOD_S, SOCKET_PATH,
                        STEER_EVENT, STEER_FIELDS, TELEMETRY_EVENT, TELEMETRY_FIELDS,
                        UNITY_JPEG_QUALITY, format_n4)

log = logging.getLogger(__name__)

DEFAULT_PING_INTERVAL_S = 25.0  # Engine.IO default, used until the open packet says otherwise
CONNECT_ACK_WAIT_S = 2.0  # how long to wait for the server's `40` (and its connect greeting)
GREETING_SETTLE_S = 0.25  # after `40`: the greeting of an always_connect server follows at once
DEFAULT_REPLY_TIMEOUT_S = 10.0
DEFAULT_MAX_MANUAL_IN_A_ROW = 100  # `manual` is for empty telemetry; ours is never empty
STALL_TIMEOUT_S = 30.0  # simulated seconds without moving before a drive gives up
MIN_MEAN_SPEED_MPS = 1.0  # default step cap: the laps at this mean speed
PROGRESS_BAR_STEP_M = 5.0
STEER_SHAPE = "{" + ", ".join(f'"{name}": "<str>"' for name in STEER_FIELDS) + "}"

# Engine.IO 3 packet types (text frames) and the Socket.IO 2 types inside a MESSAGE packet.
EIO_OPEN, EIO_CLOSE, EIO_PING, EIO_PONG, EIO_MESSAGE = "0", "1", "2", "3", "4"
SIO_CONNECT, SIO_DISCONNECT, SIO_EVENT, SIO_ERROR = "0", "1", "2", "4"


class AutonomousError(BcError, RuntimeError):
    """The drive server could not be reached or broke the protocol; the message says how."""


def encode_jpeg_b64(rgb: np.ndarray, quality: int = UNITY_JPEG_QUALITY) -> str:
    """Base64 JPEG of an RGB frame, as the Unity client sends its camera image."""
    return base64.b64encode(images.encode_jpeg(rgb, quality)).decode("ascii")


def telemetry_message(steering_deg: float, throttle: float, speed_mph: float,
                      image_b64: str) -> str:
    """The Socket.IO text frame of one telemetry event; every value is a string (N4 numbers)."""
    values = (format_n4(steering_deg), format_n4(throttle), format_n4(speed_mph), image_b64)
    body = ",".join(f'"{name}":"{value}"' for name, value in zip(TELEMETRY_FIELDS, values))
    return f'{EIO_MESSAGE}{SIO_EVENT}["{TELEMETRY_EVENT}",{{{body}}}]'


@dataclass(frozen=True)
class SteerCommand:
    """The server's answer to one telemetry: `steer` with its controls, or `manual`."""

    event: str
    steering: float = 0.0
    throttle: float = 0.0


def parse_event(text: str) -> tuple[str, Any] | None:
    """(name, data) of a Socket.IO EVENT frame ``42[...]`` on the default namespace, else None.

    Raises AutonomousError for an event the Unity parser would drop (bad JSON, not an
    array of one or two items with an object second) -- Unity stalls silently there."""
    body = text[2:]
    if body.startswith("/"):  # another namespace: the Unity client has none but "/"
        namespace, _, body = body.partition(",")
        if namespace != "/":
            return None
    body = body.lstrip("0123456789")  # an ack id, which the Unity client ignores
    try:
        payload = json.loads(body)
    except ValueError as error:
        raise AutonomousError(
            f"server sent an event that is not JSON ({error}): {text[:200]!r}") from None
    if (not isinstance(payload, list) or not 1 <= len(payload) <= 2
            or not isinstance(payload[0], str)):
        raise AutonomousError(
            f"server sent an event the Unity client drops: expected [\"<name>\", {{...}}] with "
            f"one or two items, got {text[:200]!r}"
        )
    data = payload[1] if len(payload) == 2 else None
    if data is not None and not isinstance(data, dict):
        raise AutonomousError(
            f"server sent event {payload[0]!r} whose data is a JSON {type(data).__name__}; the "
            f"Unity client drops events whose second item is not an object: {text[:200]!r}"
        )
    return payload[0], data


def parse_steer(data: dict | None, index: int) -> SteerCommand:
    """Controls of a `steer` reply; every field must be a JSON string holding a finite number."""
    where = f"'{STEER_EVENT}' reply to telemetry {index}"
    if data is None:
        raise AutonomousError(f"{where} has no data; expected {STEER_SHAPE}")
    values = []
    for name in STEER_FIELDS:
        if name not in data:
            raise AutonomousError(
                f"{where} has no {name!r} field (got keys {sorted(data)}); expected {STEER_SHAPE}"
            )
        raw = data[name]
        if not isinstance(raw, str):
            raise AutonomousError(
                f"{where}: field {name!r} is a JSON {type(raw).__name__} ({raw!r}); the Unity "
                f"simulator expects a JSON string such as \"{raw}\" (with a number it silently "
                f"stalls)"
            )
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise AutonomousError(f"{where}: field {name!r} = {raw!r} is not a finite number")
        values.append(value)
    return SteerCommand(STEER_EVENT, steering=values[0], throttle=values[1])


class UnityClient:
    """One websocket connection that speaks exactly like the Unity simulator's SocketIO plugin."""

    def __init__(self, host: str = "127.0.0.1", port: int = PORT,
                 reply_timeout_s: float = DEFAULT_REPLY_TIMEOUT_S) -> None:
        self.url = f"ws://{host}:{port}{SOCKET_PATH}"
        self.reply_timeout_s = float(reply_timeout_s)
        self.ping_interval_s = DEFAULT_PING_INTERVAL_S
        self.greetings = 0  # `steer` events before the first telemetry (the connect greeting)
        self.stray_steers = 0  # later `steer` events that answered no telemetry
        self._connecting = True
        self._ws: websocket.WebSocket | None = None
        self._next_ping = math.inf

    # -- connection -------------------------------------------------------------------------
    def connect(self) -> "UnityClient":
        """Open the websocket, read the Engine.IO open packet, and absorb the connect greeting."""
        try:
            self._ws = websocket.create_connection(
                self.url, timeout=self.reply_timeout_s, skip_utf8_validation=True,
                enable_multithread=False,
            )
        except websocket.WebSocketBadStatusException as error:
            raise AutonomousError(
                f"drive server at {self.url} refused the websocket ({error}); a server on "
                f"python-engineio != 3.13.2 answers 400 to the Unity client "
                f"(docs/PROTOCOL.md section 3)"
            ) from None
        except (OSError, websocket.WebSocketException) as error:
            raise AutonomousError(
                f"no drive server at {self.url} ({error}); start one first, e.g. "
                f"`python scripts/drive.py run_id=... port=...`"
            ) from None
        first = self._recv(time.monotonic() + self.reply_timeout_s,
                           "send the Engine.IO open packet")
        if not first.startswith(EIO_OPEN):
            raise AutonomousError(
                f"{self.url}: expected the Engine.IO open packet '0{{...}}', got {first[:200]!r}")
        try:
            interval_ms = json.loads(first[1:]).get("pingInterval", DEFAULT_PING_INTERVAL_S * 1000)
            self.ping_interval_s = float(interval_ms) / 1000.0
        except (ValueError, AttributeError, TypeError):
            raise AutonomousError(
                f"{self.url}: malformed Engine.IO open packet {first[:200]!r}") from None
        self._next_ping = time.monotonic() + self.ping_interval_s
        self._absorb_connect_greeting()
        self._connecting = False
        return self

    def _absorb_connect_greeting(self) -> None:
        """python-socketio sends `40` right after its connect handler (the reference server
        emits `steer` 0/0 there), or right before it with always_connect. Reading until `40`
        plus whatever arrives with it keeps exactly one request chain in flight."""
        deadline = time.monotonic() + CONNECT_ACK_WAIT_S
        while True:
            frame = self._recv(deadline, None)
            if frame is None:
                return  # a server that sends no `40`: nothing to absorb
            if frame.startswith(EIO_MESSAGE + SIO_CONNECT):
                break
            self._handle_unsolicited(frame)
        # with always_connect the greeting follows `40` in the same burst; there is only one
        settle = time.monotonic() + GREETING_SETTLE_S
        while not self.greetings and (frame := self._recv(settle, None)) is not None:
            self._handle_unsolicited(frame)

    def _handle_unsolicited(self, frame: str) -> None:
        event = self._control(frame)
        if event is None:
            return
        name, _ = event
        if name == STEER_EVENT:  # other events: Unity has no handler for them
            if self._connecting:
                self.greetings += 1
                return
            if not self.stray_steers:
                log.warning("%s sent a 'steer' that answers no telemetry; ignored (the Unity "
                            "client would start a second request chain)", self.url)
            self.stray_steers += 1

    def close(self) -> None:
        """Close the websocket (the server sees a disconnect)."""
        if self._ws is not None:
            try:
                self._ws.close(timeout=1.0)
            except (OSError, websocket.WebSocketException):
                pass
            self._ws = None

    def __enter__(self) -> "UnityClient":
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- frames -----------------------------------------------------------------------------
    def _recv(self, deadline: float, waiting_for: str | None) -> str | None:
        """Next text frame before `deadline`, sending the client's own engine ping when due.
        On timeout: None when `waiting_for` is None, else AutonomousError."""
        ws = self._ws
        assert ws is not None, "connect() first"
        while True:
            now = time.monotonic()
            if now >= self._next_ping:
                self._send(EIO_PING)
                self._next_ping = now + self.ping_interval_s
            wait = min(deadline, self._next_ping) - now
            if wait <= 0:
                if waiting_for is None:
                    return None
                raise AutonomousError(
                    f"drive server at {self.url} did not {waiting_for} within "
                    f"{self.reply_timeout_s:g} s (lockstep: the simulator sends nothing until it "
                    f"gets one 'steer' or 'manual' per telemetry)"
                )
            ws.settimeout(wait)
            try:
                frame = ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketConnectionClosedException, ConnectionError) as error:
                raise AutonomousError(
                    f"drive server at {self.url} closed the connection ({error})") from None
            except socket.timeout:
                continue
            if isinstance(frame, bytes):
                continue  # the Unity plugin only handles text frames
            if frame == "":
                raise AutonomousError(f"drive server at {self.url} closed the connection")
            return frame

    def _send(self, text: str) -> None:
        try:
            self._ws.send(text)  # type: ignore[union-attr]
        except (OSError, websocket.WebSocketException) as error:
            raise AutonomousError(
                f"drive server at {self.url} closed the connection ({error})") from None

    def _control(self, frame: str) -> tuple[str, Any] | None:
        """Handle engine-level packets; return (name, data) for an event on '/'."""
        kind = frame[:1]
        if kind == EIO_PING:
            self._send(EIO_PONG + frame[1:])  # an Engine.IO 4 server pings; Unity answers
            return None
        if kind == EIO_CLOSE:
            raise AutonomousError(f"drive server at {self.url} closed the Engine.IO session")
        if kind != EIO_MESSAGE:
            return None  # pong, noop, upgrade
        sio = frame[1:2]
        if sio == SIO_EVENT:
            return parse_event(frame)
        if sio == SIO_DISCONNECT:
            raise AutonomousError(f"drive server at {self.url} disconnected the Socket.IO session")
        if sio == SIO_ERROR:
            raise AutonomousError(
                f"drive server at {self.url} sent a Socket.IO error: {frame[:200]!r}")
        return None  # `40` connect ack, acks

    # -- lockstep ---------------------------------------------------------------------------
    def _drain(self) -> None:
        """Handle frames that arrived while no telemetry was outstanding (non-blocking): a
        `steer` there answers nothing and is ignored, so exactly one chain stays in flight."""
        sock = self._ws.sock if self._ws is not None else None
        while sock is not None and select.select([sock], [], [], 0)[0]:
            frame = self._recv(time.monotonic() + self.reply_timeout_s,
                               "finish sending a frame")
            if frame is None:
                return
            self._handle_unsolicited(frame)

    def exchange(self, message: str, index: int) -> SteerCommand:
        """Send telemetry number `index` and wait for its one `steer` or `manual` reply."""
        self._drain()
        self._send(message)
        deadline = time.monotonic() + self.reply_timeout_s
        while True:
            frame = self._recv(deadline, f"answer telemetry {index}")
            event = self._control(frame)
            if event is None:
                continue
            name, data = event
            if name == STEER_EVENT:
                return parse_steer(data, index)
            if name == MANUAL_EVENT:
                return SteerCommand(MANUAL_EVENT)
            # other events: Unity has no handler for them


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


class Episode:
    """The env's steps of one drive and when to stop: `laps` done (the env terminates),
    `max_steps` taken, or standing still for `stall_steps` in a row."""

    def __init__(self, env: DrivingEnv, max_steps: int, stall_steps: int) -> None:
        self.env, self.max_steps, self.stall_steps = env, max_steps, stall_steps
        self.frame, self.info = env.reset()
        self.infos: list[dict[str, Any]] = []
        self.still_steps = 0
        self.stop_reason: str | None = None

    def step(self, action: tuple[float, float]) -> None:
        self.frame, _, terminated, _, self.info = self.env.step(action)
        self.infos.append(self.info)
        self.still_steps = self.still_steps + 1 if self.info["speed"] < 1e-3 else 0
        if terminated:
            self.stop_reason = "laps"
        elif len(self.infos) >= self.max_steps:
            self.stop_reason = "max_steps"
        elif self.still_steps >= self.stall_steps:
            self.stop_reason = "stalled"


def _unit(value: float) -> float:
    return min(1.0, max(-1.0, value))


def default_max_steps(track_length: float, laps: float, dt: float) -> int:
    """A cap for a car that never gets going: the laps at MIN_MEAN_SPEED_MPS."""
    return int(math.ceil(laps * track_length / MIN_MEAN_SPEED_MPS / dt)) + 1


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

    def make_env(self, track: Any) -> DrivingEnv:
        """The DrivingEnv this drive runs in (a Track or a track spec)."""
        return DrivingEnv(track, self.seed, reverse=self.reverse, car=self.car, dt=self.dt,
                          laps=self.laps, start_speed_mph=self.start_speed_mph)

    def drive(self, track: Any, frames_callback: FramesCallback | None = None,
              video_path: str | Path | None = None) -> DriveResult:
        """Drive `laps` laps of `track` (a Track or a track spec); `frames_callback(index, rgb,
        state)` sees every frame sent, `video_path` gets the distinct ones as an mp4."""
        env = self.make_env(track)
        max_steps = self.max_steps or default_max_steps(env.track.length, self.laps, env.dt)
        episode = Episode(env, max_steps, max(1, math.ceil(self.stall_timeout_s / env.dt)))
        clock = ServerClock(env.dt, self.realtime)
        round_trips: list[float] = []
        manual = manual_in_a_row = 0
        controls = (0.0, 0.0)  # what the car is executing
        message = None  # the telemetry of the current state, once encoded
        started = time.perf_counter()
        with UnityClient(self.host, self.port, self.reply_timeout_s) as client, \
                _Pictures(video_path, env, self.progress) as pictures:
            while episode.stop_reason is None:
                if message is None:  # a new state to show: Unity's center camera and gauges
                    pictures.show(episode)
                    message = telemetry_message(controls[0] * MAX_STEERING_DEG,
                                                max(0.0, controls[1]),
                                                episode.info["speed"] / MPS_PER_MPH,
                                                encode_jpeg_b64(episode.frame))
                if frames_callback is not None:
                    frames_callback(len(round_trips), episode.frame, env.state)
                sent = time.perf_counter()
                reply = client.exchange(message, len(round_trips))
                round_trips.append(time.perf_counter() - sent)
                if reply.event == MANUAL_EVENT:
                    manual, manual_in_a_row = manual + 1, manual_in_a_row + 1
                    self._check_manual(manual_in_a_row, len(round_trips) - 1)
                    new = controls
                else:
                    manual_in_a_row = 0
                    new = (_unit(reply.steering), _unit(reply.throttle))
                count = clock.steps(round_trips[-1], reply.event == MANUAL_EVENT)
                for index in range(count):  # the old controls while the server was thinking
                    episode.step(new if index == count - 1 else controls)
                    message = None
                    if episode.stop_reason is not None:
                        break
                controls = new
        return DriveResult.from_steps(
            env.track, env.dt, episode.infos, self.laps, frames=len(round_trips), manual_replies=manual,
            greetings=client.greetings, stray_steers=client.stray_steers,
            round_trip_s=np.asarray(round_trips, dtype=np.float64),
            wall_s=time.perf_counter() - started, realtime=self.realtime,
            stop_reason=episode.stop_reason)

    def _check_manual(self, in_a_row: int, index: int) -> None:
        if in_a_row > self.max_manual_in_a_row:
            raise AutonomousError(
                f"drive server answered 'manual' to {in_a_row} telemetry messages in a row "
                f"(last: telemetry {index}); 'manual' is the reply to an empty telemetry and "
                f"ours is never empty -- is the server rejecting the frames?")

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
        from bc.sim.plots import plot_trajectory

        track = resolve_track(track, self.seed)
        out = self.output_folder(track.name)
        out.mkdir(parents=True, exist_ok=True)
        video_path = out / "center.mp4" if self.video else None
        result = self.drive(track, video_path=video_path)
        metrics = compute_metrics(result, self.expert_lap_time(result))
        print(format_table(metrics, title=f"autonomous drive: track {result.track.name}, "
                                          f"server {self.host}:{self.port}"))
        if result.stop_reason != "laps":
            log.warning("the drive stopped before %s laps: %s", result.laps, result.stop_reason)
        artifacts = [
            write_json(metrics, out / "metrics.json"),
            plot_trajectory(result, out / "trajectory.png"),
            write_trajectory_csv(result, out / "trajectory.csv"),
        ]
        if video_path is not None:
            artifacts.append(video_path)
        print(f"wrote {', '.join(str(p) for p in artifacts)}")
        if self.run_id:
            keys = log_to_mlflow(self.run_id, self.label or result.track.name, metrics, artifacts,
                                 self.tracking_uri)
            print(f"logged {len(keys)} metrics ({keys[0].rsplit('/', 1)[0]}/...) and "
                  f"{len(artifacts)} artifacts to MLflow run {self.run_id}")
        return metrics


class _Pictures:
    """What a person watching sees: the distinct frames as an mp4, a progress bar in metres."""

    def __init__(self, video_path: str | Path | None, env: DrivingEnv, progress: bool) -> None:
        self.writer = self.bar = None
        if video_path is not None:
            from bc.sim.plots import open_video

            self.writer = open_video(video_path, fps=1.0 / env.dt)
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=int(round(env.laps * env.track.length)), unit="m",
                            desc=f"autonomous {env.track.name}")

    def show(self, episode: Episode) -> None:
        if self.writer is not None:
            self.writer.append_data(episode.frame)
        if self.bar is not None:
            metres = int(episode.info["progress"] * episode.env.track.length)
            if metres - self.bar.n >= PROGRESS_BAR_STEP_M:
                self.bar.update(metres - self.bar.n)

    def __enter__(self) -> "_Pictures":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()
