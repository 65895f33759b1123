"""A raw-websocket client that behaves exactly like the Udacity simulator's Unity client
(docs/PROTOCOL.md section 2), for tests of any drive server. Unlike bc.sim's UnityClient
(which only ever sends what the simulator sends) it also gives tests the raw websocket, to
send the junk a drive server must survive.

- connects straight to ``ws://HOST:PORT/socket.io/?EIO=4&transport=websocket`` (no polling),
- never sends the namespace connect packet ``40`` (it ignores the server's ``40`` too),
- answers an engine ping ``2`` with ``3`` and sends its own ping ``2`` every
  ``pingInterval`` (from the handshake; the real client: 25 s),
- sends only text frames ``42["telemetry",{...}]`` whose values are all strings,
- works in lockstep: one telemetry, then wait for the ``steer`` / ``manual`` reply.

Also: ``make_jpeg`` / ``telemetry`` build real RGB JPEG telemetry payloads (320x160 unless
told otherwise). The wire format is spelled out here rather than taken from ``bc``, so the
tests check the server against the protocol, not against itself; JPEGs come from
``bc.core.images`` (the one JPEG encoder).
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import cv2
import numpy as np
import websocket

from bc.core.images import encode_jpeg

OPEN, CLOSE, PING, PONG, MESSAGE = "0", "1", "2", "3", "4"
SIO_CONNECT, SIO_EVENT = "0", "2"
REPLY_EVENTS = ("steer", "manual")
# The websocket upgrade request as the simulator sends it, for raw-socket tests of the server.
HANDSHAKE = ("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             "Upgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
             ).encode()


def unity_url(port: int, host: str = "127.0.0.1") -> str:
    return f"ws://{host}:{port}/socket.io/?EIO=4&transport=websocket"


def make_frame(seed: int = 0, width: int = 320, height: int = 160) -> np.ndarray:
    """A deterministic RGB road-like scene: sky, grass, a road whose curve depends on seed."""
    rng = np.random.default_rng(seed)
    rgb = np.zeros((height, width, 3), np.uint8)
    horizon = height * 2 // 5
    rgb[:horizon] = (120, 170, 235)  # sky (RGB: blue-ish)
    rgb[horizon:] = (70, 140, 50)  # grass
    shift = int(rng.integers(-80, 80))
    top = width // 2 + shift // 3
    road = np.array([[top - 20, horizon], [top + 20, horizon], [width - 10 + shift, height],
                     [10 + shift, height]], np.int32)
    cv2.fillPoly(rgb, [road], (110, 105, 100))
    noise = rng.integers(-12, 12, rgb.shape)
    return np.clip(rgb.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def make_jpeg(seed: int = 0, width: int = 320, height: int = 160, quality: int = 90) -> bytes:
    """JPEG bytes (holding RGB, like the simulator's) of ``make_frame``."""
    return encode_jpeg(make_frame(seed, width, height), quality)


def telemetry(jpeg: bytes, speed: float = 8.0, steering_deg: float = 0.0,
              throttle: float = 0.2) -> dict[str, str]:
    """A telemetry payload as the simulator sends it: every value a string, degrees, N4."""
    return {"steering_angle": f"{steering_deg:.4f}", "throttle": f"{throttle:.4f}",
            "speed": f"{speed:.4f}", "image": base64.b64encode(jpeg).decode("ascii")}


class UnityClient:
    """Lockstep Unity-like client. ``connect()`` waits for the server's connect-time reply."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.url = unity_url(port, host)
        self.timeout = timeout
        self.ws: websocket.WebSocket | None = None
        self.handshake: dict[str, Any] = {}
        self.sent: list[str] = []
        self.connect_reply: tuple[str, dict] | None = None
        self.pongs = 0
        self.ping_interval = 25.0
        self.last_ping = time.monotonic()

    def __enter__(self) -> "UnityClient":
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> "UnityClient":
        self.ws = websocket.create_connection(self.url, timeout=self.timeout)
        first = self._recv()
        assert first.startswith(OPEN), f"expected an Engine.IO open packet, got {first!r}"
        self.handshake = json.loads(first[1:])
        self.ping_interval = self.handshake["pingInterval"] / 1000.0
        self.last_ping = time.monotonic()
        self.connect_reply = self.wait_reply()  # the server's steer 0/0 on connect
        return self

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None

    def send_text(self, text: str) -> None:
        """Send one raw text frame (the client never sends anything but text)."""
        assert not text.startswith(MESSAGE + SIO_CONNECT), "the Unity client never sends 40"
        self.sent.append(text)
        self.ws.send(text)

    def emit(self, event: str, data: Any) -> None:
        """Send an event; like Unity, first an engine ping if ``pingInterval`` has passed
        (python-engineio 3.x drops a client silent for pingInterval + 5 s)."""
        if time.monotonic() - self.last_ping >= self.ping_interval:
            self.send_text(PING)  # its "3" is skipped by wait_reply
            self.last_ping = time.monotonic()
        self.send_text(MESSAGE + SIO_EVENT + json.dumps([event, data], separators=(",", ":")))

    def _recv(self) -> str:
        frame = self.ws.recv()
        if isinstance(frame, bytes):
            raise AssertionError(f"server sent a binary frame ({len(frame)} bytes)")
        return frame

    def wait_reply(self) -> tuple[str, dict]:
        """The next ``steer`` / ``manual`` event, answering pings and skipping ``40`` on the way."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            frame = self._recv()
            if frame == PING:
                self.send_text(PONG)
            elif frame == PONG:
                self.pongs += 1
            elif frame.startswith(MESSAGE + SIO_EVENT):
                event = json.loads(frame[2:])
                assert isinstance(event, list) and 1 <= len(event) <= 2, f"bad event {frame!r}"
                if event[0] in REPLY_EVENTS:
                    data = event[1] if len(event) == 2 else {}
                    assert isinstance(data, dict), f"reply payload must be an object: {frame!r}"
                    return event[0], data
            elif frame.startswith(CLOSE):
                raise ConnectionError("server closed the Engine.IO session")
        raise TimeoutError(f"no steer/manual reply within {self.timeout} s")

    def send_telemetry(self, data: Any) -> tuple[str, dict]:
        """One lockstep exchange: telemetry out, its reply back."""
        self.emit("telemetry", data)
        return self.wait_reply()

    def ping(self) -> None:
        """The Unity client's own engine ping (every 25 s in the real client); waits for ``3``."""
        before = self.pongs
        self.send_text(PING)
        self.last_ping = time.monotonic()
        deadline = time.monotonic() + self.timeout
        while self.pongs == before and time.monotonic() < deadline:
            frame = self._recv()
            if frame == PONG:
                self.pongs += 1
            elif frame == PING:
                self.send_text(PONG)
        assert self.pongs > before, "no pong for the client's ping"
