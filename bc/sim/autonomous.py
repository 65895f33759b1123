"""Autonomous mode: the simulator side of a drive server, behaving exactly like the Unity client.

The Unity simulator (docs/PROTOCOL.md section 2) opens a raw websocket to
``/socket.io/?EIO=4&transport=websocket``, never sends the namespace connect ``40``, pings
every ``pingInterval``, emits ``42["telemetry",{...}]`` with every value a string and waits for
one ``steer`` or ``manual`` per telemetry (lockstep). `UnityClient` is that wire behaviour;
`AutonomousDrive.drive` is the closed loop around it: render the center camera, send it,
apply the reply, step the car, count interventions and laps (`run` also reports). Whatever
drives this client drives the real simulator too.

Interventions (as in NVIDIA's simulator test): when the car's centre leaves the road
(|cte| > width / 2) it is counted and the car is put back on the nearest centreline point,
heading along the track, *keeping its speed*: a safety driver steers back onto the road
without stopping, so the drive server's speed controller sees no jump, and time keeps
running (the autonomy formula charges 6 s per intervention).

Time: in lockstep (default) every reply advances the car one `dt` step, whatever the server's
latency. With `realtime` the round trip also passes in the simulation, as in Unity where
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
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import websocket

from bc import images
from bc.settings import flag, integer, number, optional, setting
from bc.errors import BcError
from bc.sim.car import MPS_PER_MPH, Car, CarState
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


@dataclass
class DriveResult:
    """Everything recorded in one autonomous drive; the arrays hold one entry per physics step."""

    track: Any
    dt: float
    laps: float  # laps asked for
    t: np.ndarray  # simulated time at the end of each step (s)
    x: np.ndarray
    y: np.ndarray
    yaw: np.ndarray
    speed_mph: np.ndarray
    steering: np.ndarray  # applied, normalised [-1, 1]
    throttle: np.ndarray  # applied [-1, 1]
    cte: np.ndarray  # signed cross-track error before any reset (m, + left)
    s: np.ndarray  # accumulated arc-length progress (m); backwards driving subtracts
    odometer: np.ndarray  # distance driven so far (m); reset jumps do not count
    intervention_steps: np.ndarray  # indices into the per-step arrays
    intervention_xy: np.ndarray  # (K, 2) where the car left the road
    frames: int = 0  # telemetry messages sent (re-sends after `manual` included)
    manual_replies: int = 0
    greetings: int = 0  # `steer` events before the first telemetry (the connect greeting)
    stray_steers: int = 0  # later `steer` events that answered no telemetry (ignored)
    round_trip_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    wall_s: float = 0.0
    realtime: bool = False
    stop_reason: str = "laps"  # laps | max_steps | stalled

    @property
    def steps(self) -> int:
        return int(len(self.t))


ProgressCallback = Callable[[int, np.ndarray, CarState], None]
RENDERER_CACHE_SIZE = 2  # painting a track's world takes seconds; drives often repeat a track
_renderers: "OrderedDict[tuple, Any]" = OrderedDict()


def _track_key(track: Any) -> tuple:
    """What a rendered world depends on: the geometry and the theme, not the object."""
    points = np.asarray(getattr(track, "control_points", track.xy), dtype=np.float64)
    theme = getattr(track, "theme", None)
    return (str(track.name), float(track.width), points.tobytes(), repr(theme))


def renderer_for(track: Any, seed: int) -> Any:
    """A camera Renderer for (track, seed), reused across drives of the same track."""
    from bc.sim.camera import Renderer

    key = (_track_key(track), int(seed))
    renderer = _renderers.get(key)
    if renderer is not None:
        _renderers.move_to_end(key)
        return renderer
    renderer = _renderers[key] = Renderer(track, seed=seed)
    while len(_renderers) > RENDERER_CACHE_SIZE:
        _renderers.popitem(last=False)
    return renderer


def _wrap(ds: float, length: float) -> float:
    """Arc-length difference folded into [-length/2, length/2) (crossing the start line)."""
    return (ds + 0.5 * length) % length - 0.5 * length


def default_max_steps(track_length: float, laps: float, dt: float) -> int:
    """A cap for a car that never gets going: the laps at MIN_MEAN_SPEED_MPS."""
    return int(math.ceil(laps * track_length / MIN_MEAN_SPEED_MPS / dt)) + 1


@dataclass
class AutonomousDrive:
    """The simulator in autonomous mode against the drive server at host:port (settings as in
    conf/simulate.yaml `autonomous`, checked here): `drive(track)` is the closed loop,
    `run(track)` also writes the metrics and pictures and logs them to MLflow.

    Lockstep: each step renders the center camera, sends telemetry and applies the reply.
    With `realtime`, the server's round-trip time also passes in the simulation: the car
    keeps its last controls for whole `dt` steps while the server thinks, as Unity's fixed
    update would.
    """

    laps: float = 1.0
    host: str = "127.0.0.1"
    port: int = PORT
    seed: int = 0  # lighting and shadows (and the shape of a `random` track)
    dt: float = SAMPLE_PERIOD_S
    realtime: bool = False
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
        for name in ("realtime", "progress", "video"):
            setattr(self, name, flag(name, getattr(self, name)))

    def drive(self, track: Any, frames_callback: ProgressCallback | None = None,
              video_path: str | Path | None = None) -> DriveResult:
        """Drive `laps` laps of `track` (a Track or a track spec); `frames_callback(index, rgb,
        state)` sees every frame sent, `video_path` gets them as an mp4."""
        from bc.sim.track import load_track

        if isinstance(track, (str, Path)):
            track = load_track(str(track), seed=self.seed)
        dt = float(self.dt)
        length = float(track.length)
        half_width = 0.5 * float(track.width)
        target = float(self.laps) * length
        max_steps = (default_max_steps(length, self.laps, dt) if self.max_steps is None
                     else self.max_steps)
        stall_steps = max(1, int(math.ceil(self.stall_timeout_s / dt)))

        car = Car()
        renderer = renderer_for(track, self.seed)
        x0, y0, h0 = track.pose_at(0.0)
        speed = max(0.0, self.start_speed_mph) * MPS_PER_MPH
        state = CarState(float(x0), float(y0), float(h0), speed)
        s_prev = float(track.locate(state.x, state.y).s)

        rows: list[tuple[float, ...]] = []
        interventions: list[int] = []
        intervention_xy: list[tuple[float, float]] = []
        round_trips: list[float] = []
        steering = throttle = 0.0  # the controls the car is executing
        progress_m = odometer_m = 0.0
        manual_total = manual_in_a_row = frames = 0
        still_steps = 0
        lag_s = 0.0  # realtime: simulated time owed to the server's latency
        stop_reason = "max_steps"

        writer = None
        if video_path is not None:
            from bc.sim.plots import open_video

            writer = open_video(video_path, fps=1.0 / dt)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=int(round(target)), unit="m", desc=f"autonomous {track.name}")

        def step_once(steer: float, accel: float) -> bool:
            """One physics step with interventions and laps; True when the drive is done."""
            nonlocal state, s_prev, progress_m, odometer_m, still_steps, stop_reason
            speed_before = state.speed
            state = car.step(state, steer, accel, dt)
            odometer_m += 0.5 * (speed_before + state.speed) * dt
            here = track.locate(state.x, state.y)
            cte = float(here.cte)
            if abs(cte) > half_width:
                interventions.append(len(rows))
                intervention_xy.append((state.x, state.y))
                state = CarState(float(here.x), float(here.y), float(here.heading), state.speed)
            s_now = float(here.s)
            ds = _wrap(s_now - s_prev, length)
            s_prev = s_now
            progress_m += ds
            if bar is not None and progress_m - bar.n >= PROGRESS_BAR_STEP_M:
                bar.update(int(progress_m) - bar.n)
            rows.append((state.x, state.y, state.yaw, state.speed / MPS_PER_MPH, steer, accel, cte,
                         progress_m, odometer_m))
            still_steps = still_steps + 1 if state.speed < 1e-3 else 0
            if progress_m >= target:
                stop_reason = "laps"
                return True
            if len(rows) >= max_steps:
                stop_reason = "max_steps"
                return True
            if still_steps >= stall_steps:
                stop_reason = "stalled"
                return True
            return False

        started = time.perf_counter()
        client = UnityClient(self.host, self.port, self.reply_timeout_s)
        try:
            client.connect()
            message = None
            done = False
            while not done:
                if message is None:  # a new state to show the server
                    rgb = renderer.render(state)  # the center camera, as Unity sends
                    if frames_callback is not None:
                        frames_callback(frames, rgb, state)
                    if writer is not None:
                        writer.append_data(rgb)
                    # Unity reports the executed steer angle in degrees and AccelInput in [0, 1]
                    message = telemetry_message(steering * MAX_STEERING_DEG, max(0.0, throttle),
                                                state.speed_mph, encode_jpeg_b64(rgb))
                elif frames_callback is not None:
                    frames_callback(frames, rgb, state)
                sent = time.perf_counter()
                reply = client.exchange(message, frames)
                latency = time.perf_counter() - sent
                frames += 1
                round_trips.append(latency)
                if reply.event == MANUAL_EVENT:
                    manual_total += 1
                    manual_in_a_row += 1
                    if manual_in_a_row > self.max_manual_in_a_row:
                        raise AutonomousError(
                            f"drive server answered 'manual' to {manual_in_a_row} telemetry "
                            f"messages in a row (last: telemetry {frames - 1}); 'manual' is the "
                            f"reply to an empty telemetry and ours is never empty -- is the server "
                            f"rejecting the frames?"
                        )
                    if self.realtime:  # the car kept driving while the server answered
                        lag_s += latency
                        while lag_s >= dt and not done:
                            lag_s -= dt
                            done = step_once(steering, throttle)
                            message = None
                    continue  # re-send (the same frame when no time passed)
                manual_in_a_row = 0
                n_steps = 1
                if self.realtime:
                    lag_s += max(dt, latency)
                    n_steps = max(1, int(lag_s / dt))
                    lag_s -= n_steps * dt
                new_steering = min(1.0, max(-1.0, reply.steering))
                new_throttle = min(1.0, max(-1.0, reply.throttle))
                for k in range(n_steps):  # old controls while the server was thinking
                    last = k == n_steps - 1
                    done = step_once(new_steering if last else steering,
                                     new_throttle if last else throttle)
                    if done:
                        break
                steering, throttle = new_steering, new_throttle
                message = None
        finally:
            client.close()
            if writer is not None:
                writer.close()
            if bar is not None:
                bar.close()
        wall = time.perf_counter() - started

        data = np.asarray(rows, dtype=np.float64).reshape(-1, 9)
        return DriveResult(
            track=track,
            dt=float(dt),
            laps=float(self.laps),
            t=np.arange(1, len(data) + 1, dtype=np.float64) * dt,
            x=data[:, 0], y=data[:, 1], yaw=data[:, 2], speed_mph=data[:, 3],
            steering=data[:, 4], throttle=data[:, 5], cte=data[:, 6], s=data[:, 7],
            odometer=data[:, 8],
            intervention_steps=np.asarray(interventions, dtype=np.int64),
            intervention_xy=np.asarray(intervention_xy, dtype=np.float64).reshape(-1, 2),
            frames=frames,
            manual_replies=manual_total,
            greetings=client.greetings,
            stray_steers=client.stray_steers,
            round_trip_s=np.asarray(round_trips, dtype=np.float64),
            wall_s=wall,
            realtime=bool(self.realtime),
            stop_reason=stop_reason,
        )

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

    def run(self, track: Any) -> dict[str, Any]:
        """Drive `track`, print the metrics table, write metrics.json, trajectory.png/.csv
        (+ center.mp4) and log them to MLflow when `run_id` is set. Returns the metrics."""
        from bc.sim.metrics import compute_metrics, format_table, log_to_mlflow, write_json
        from bc.sim.plots import plot_trajectory
        from bc.sim.track import load_track

        if isinstance(track, (str, Path)):
            track = load_track(str(track), seed=self.seed)
        out = self.output_folder(track.name)
        out.mkdir(parents=True, exist_ok=True)
        video_path = out / "center.mp4" if self.video else None
        result = self.drive(track, video_path=video_path)
        metrics = compute_metrics(result)
        print(format_table(metrics, title=f"autonomous drive: track {track.name}, server "
                                          f"{self.host}:{self.port}"))
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
            keys = log_to_mlflow(self.run_id, self.label or track.name, metrics, artifacts,
                                 self.tracking_uri)
            print(f"logged {len(keys)} metrics ({keys[0].rsplit('/', 1)[0]}/...) and "
                  f"{len(artifacts)} artifacts to MLflow run {self.run_id}")
        return metrics


def write_trajectory_csv(result: DriveResult, path: str | Path) -> Path:
    """The per-step arrays as CSV, for analysis beyond the summary metrics."""
    path = Path(path)
    columns = ("t", "x", "y", "yaw", "speed_mph", "steering", "throttle", "cte", "s", "odometer")
    table = np.column_stack([getattr(result, name) for name in columns])
    flags = np.zeros((len(table), 1))
    flags[result.intervention_steps] = 1
    np.savetxt(path, np.hstack([table, flags]), delimiter=",", fmt="%.6g",
               header=",".join((*columns, "intervention")), comments="")
    return path
