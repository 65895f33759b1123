"""The simulator's side of the drive-server protocol, behaving exactly like the Unity client.

The Unity simulator (docs/PROTOCOL.md section 2) opens a raw websocket to
``/socket.io/?EIO=4&transport=websocket``, never sends the namespace connect ``40``, pings
every ``pingInterval``, emits ``42["telemetry",{...}]`` with every value a string and waits for
one ``steer`` or ``manual`` per telemetry (lockstep). `UnityClient` is that wire behaviour;
autonomous mode (bc/evaluation/autonomous.py) feeds it the DrivingEnv's frames. Whatever
drives this client drives the real simulator too.
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
from typing import Any

import numpy as np
import websocket

from bc.core import images
from bc.errors import BcError
from bc.core.udacity import (MANUAL_EVENT, PORT, SOCKET_PATH, STEER_EVENT, STEER_FIELDS,
                        TELEMETRY_EVENT, TELEMETRY_FIELDS, UNITY_JPEG_QUALITY, format_n4)

log = logging.getLogger(__name__)

DEFAULT_PING_INTERVAL_S = 25.0  # Engine.IO default, used until the open packet says otherwise
CONNECT_ACK_WAIT_S = 2.0  # how long to wait for the server's `40` (and its connect greeting)
GREETING_SETTLE_S = 0.25  # after `40`: the greeting of an always_connect server follows at once
DEFAULT_REPLY_TIMEOUT_S = 10.0
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
