"""The drive server: answers the simulator's ``telemetry`` with ``steer`` (docs/PROTOCOL.md
section 2).

Stack: Flask + python-socketio 4.6.1 / python-engineio 3.13.2 on eventlet's WSGI server,
the only combination the Unity client talks to (docs/PROTOCOL.md section 3). That client
opens a websocket straight to ``udacity.SOCKET_PATH`` and never sends the namespace connect
packet ``40``; python-socketio 4.x connects every Engine.IO session to the default namespace
by itself, so its events reach us.

Protocol rules kept here: exactly one reply per message the client sends (it waits for it in
lockstep), values as JSON *strings* (`udacity.steer_payload`), steering clamped to [-1, 1].
The throttle comes from the speed controller, towards the target speed of its
``speed_source`` (the model's predicted speed with ``speed_source=model``); the reply's
shape never changes.
``null`` / ``{}`` telemetry means the user drives: reply ``manual``.

Bad input never stops the server: one warning line, then the **safe reply** ``steer`` with
steering 0 and a brake (throttle ``SAFE_BRAKE_THROTTLE``) when the car is known to move
faster than the controller's ``brake_min_speed``, else throttle 0 (a negative throttle at a
standstill reverses the car). ``manual`` was not chosen: it makes the car keep its last
command, which for a stream of bad frames means driving blind. Bad input is anything but a
usable telemetry event: bad fields, frames of another size than the model's, websocket
frames that are not Engine.IO packets, Socket.IO packets that are not a default-namespace
event (acks, errors, other namespaces, binary placeholders, unknown events).

Adjustments to the stack (`create_app`, `serve`):
- eventlet unmasks websocket frames one byte at a time in Python (~5 ms per camera frame),
  replaced by one big-integer XOR;
- every request is bounded in size and time on both transports (`bc.drive.transport`): an
  HTTP body over ``max_request_bytes`` (default ``TRANSPORT_LIMIT_FACTOR`` x
  ``max_message_bytes``) is answered 413, a websocket message over it gets close code 1009,
  a request or message slower than ``request_timeout_s`` is closed; Engine.IO sessions end
  with their connection;
- handlers run inline (``async_handlers=False``: lockstep needs no task per message);
- binary Socket.IO packets are refused instead of waiting for attachments (python-socketio
  would otherwise take the next frame as the attachment and swallow it);
- a connection reset while eventlet answers a bad request no longer leaks its descriptor
  (`transport.BoundedHttpProtocol`); running out of descriptors makes ``accept`` wait and retry
  instead of ending the server (`bc.drive.listener.PatientListener`); connections idle for
  ``idle_timeout_s`` before their websocket upgrade are closed;
- eventlet's default ``SO_REUSEPORT`` is off (a second server on 4567 fails instead of
  sharing the port).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import sys
import threading
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

from omegaconf import DictConfig

from bc.core import udacity
from bc.drive.controller import SpeedController
from bc.drive.frames import FrameRecorder
from bc.inference.predictor import Prediction, Predictor, decode_base64
from bc.drive.listener import ListenError, Listener, PatientListener
from bc.drive.transport import (GreenTask, RequestLimits, SessionEngineIO, bound_websocket,
                                 http_protocol, install_patches)
from bc.errors import EXIT_INTERRUPTED, BcError, ConfigError

# eventlet's green DNS resolver (dnspython, ~0.13 s of startup) is not needed: we resolve
# at most the listening host, once.
os.environ.setdefault("EVENTLET_NO_GREENDNS", "yes")
with warnings.catch_warnings():
    # socketio 4.6.1 imports eventlet, which announces its own deprecation on import.
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated", category=Warning)
    import eventlet
    import eventlet.websocket
    import eventlet.wsgi
    import socketio
    from flask import Flask
    from socketio import packet as sio_packet

LOG = logging.getLogger("bc.drive")

PROG = "drive.py"
SAFE_BRAKE_THROTTLE = -0.5
# Engine.IO packet types a client may send that need no reply: ping (answered by
# engine.io), close, pong, upgrade, noop. "4" (message) carries Socket.IO packets.
ENGINEIO_CONTROL = frozenset("12356")
ENGINEIO_MESSAGE = "4"


class BadTelemetry(BcError, ValueError):
    """A message that cannot be used; the message names the field or packet."""


@dataclass(frozen=True)
class Reply:
    """One answer to the simulator: an event name and its (all-string) payload."""

    event: str
    data: dict[str, str]


def steer_reply(steering: float, throttle: float) -> Reply:
    return Reply(udacity.STEER_EVENT, udacity.steer_payload(steering, throttle))


MANUAL_REPLY = Reply(udacity.MANUAL_EVENT, {})
CONNECT_REPLY = steer_reply(0.0, 0.0)


def parse_number(data: dict[str, Any], field: str) -> float:
    """A finite float from a telemetry field (a string as the simulator sends it, or a number).

    A lone decimal comma ("8,5000", what Unity's ``ToString("N4")`` writes on comma-decimal
    locales) is read as a point.
    """
    if field not in data:
        raise BadTelemetry(f"{field}: missing (fields present: {sorted(data)})")
    value = data[field]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadTelemetry(f"{field}: expected a number as a string, got {type(value).__name__}")
    text = value
    if isinstance(value, str) and "," in value and "." not in value:
        text = value.replace(",", ".", 1)
    try:
        number = float(text)
    except ValueError:
        raise BadTelemetry(f"{field}: expected a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(number):
        raise BadTelemetry(f"{field}: expected a finite number, got {value!r}")
    return number


def _describe(payload: object) -> str:
    text = repr(payload)
    return text if len(text) <= 60 else text[:57] + "..."


class DriveServer:
    """Protocol logic, independent of the socket: telemetry in, ``Reply`` out."""

    def __init__(self, predictor: Predictor, controller: SpeedController, max_message_bytes: int,
                 recorder: FrameRecorder | None = None) -> None:
        if isinstance(max_message_bytes, bool) or not isinstance(max_message_bytes, int) \
                or max_message_bytes < 1:
            raise ConfigError(
                f"max_message_bytes: expected an integer >= 1, got {max_message_bytes!r}")
        if controller.needs_model_speed and not predictor.predicts_speed:
            raise ConfigError(
                f"speed_source: model needs a model with a speed output, but {predictor.source} "
                f"predicts only {list(predictor.model.outputs)}; use speed_source=set_speed or "
                f"bends, or train with model.outputs=[steering,speed]")
        self.predictor = predictor
        self.controller = controller
        self.recorder = recorder
        self.max_message_bytes = max_message_bytes

    def on_connect(self) -> Reply:
        """A new simulator connection: forget the old speed error, send steer 0/0."""
        self.controller.reset()
        return CONNECT_REPLY

    def safe_reply(self, speed: float | None) -> Reply:
        """Steering 0, braking only when the car is known to be moving (see module doc)."""
        moving = speed is not None and speed > self.controller.brake_min_speed
        return steer_reply(0.0, SAFE_BRAKE_THROTTLE if moving else 0.0)

    def bad_input(self, reason: str, speed: float | None = None) -> Reply:
        """Log one warning line for unusable input and return the safe reply."""
        reply = self.safe_reply(speed)
        LOG.warning("bad telemetry: %s -> replied steer 0, throttle %s",
                    reason, reply.data["throttle"])
        return reply

    def handle_telemetry(self, data: object = None) -> Reply:
        """The one reply to one telemetry payload; never raises."""
        if data is None or data == {}:
            return MANUAL_REPLY
        speed: float | None = None
        try:
            if not isinstance(data, dict):
                raise BadTelemetry(f"payload: expected a JSON object, got {_describe(data)}")
            try:
                speed = parse_number(data, "speed")
            except BadTelemetry as error:
                speed_error: BadTelemetry | None = error
            else:
                speed_error = None
            image = data.get("image")
            if image is None:
                raise BadTelemetry(f"image: missing (fields present: {sorted(data)})")
            if isinstance(image, str) and len(image) > self.max_message_bytes:
                raise BadTelemetry(f"image: {len(image)} characters, over the "
                                   f"max_message_bytes limit of {self.max_message_bytes}")
            if speed_error is not None:
                raise speed_error
            jpeg = decode_base64(image)
            prediction = self.predictor.predict_jpeg(jpeg)
        except BcError as error:
            return self.bad_input(str(error), speed)
        except Exception as error:  # a bug, not bad input: still answer, keep the car safe
            LOG.exception("unexpected error handling telemetry: %s", error)
            return self.safe_reply(speed)
        return self.steer(prediction, speed, jpeg)

    def steer(self, prediction: Prediction, speed: float, jpeg: bytes | None = None) -> Reply:
        """The reply to the model's `prediction` for a car at `speed` mph: the steering
        clamped, the speed controller's throttle (also what bc.evaluation's batched policy
        answers, one server per car)."""
        steering = min(1.0, max(-1.0, prediction.steering))
        throttle = self.controller.throttle(speed, steering, prediction.target_speed)
        if self.recorder is not None and jpeg is not None:
            self.recorder.record(jpeg, steering, throttle, speed)
        return steer_reply(steering, throttle)


def engineio_frame_problem(frame: str | bytes | None) -> str | None:
    """Why a websocket frame is not an Engine.IO packet this server handles (None if it is,
    or if it is the end of the connection)."""
    if frame is None:
        return None
    if isinstance(frame, bytes):
        return f"binary websocket frame of {len(frame)} bytes (the simulator sends text only)"
    if not frame:
        return "empty websocket frame"
    if frame[0] not in ENGINEIO_CONTROL and frame[0] != ENGINEIO_MESSAGE:
        return f"not an Engine.IO packet: {_describe(frame)}"
    return None


class _JunkFrameFilter:
    """The websocket as python-engineio reads it, minus frames that are not Engine.IO
    packets: each of those is answered through ``on_junk`` instead (engine.io would drop
    some silently and end the connection on others)."""

    def __init__(self, ws: Any, on_junk: Callable[[str], None]) -> None:
        self._ws = ws
        self._on_junk = on_junk

    def wait(self) -> str | bytes | None:
        while True:
            frame = self._ws.wait()
            problem = engineio_frame_problem(frame)
            if problem is None:
                return frame
            self._on_junk(problem)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)


class _GuardedSocketIO(socketio.Server):
    """A Socket.IO server whose every message gets exactly one reply: telemetry events go to
    ``DriveServer``, everything else (see module doc) gets the safe reply."""

    def __init__(self, drive: DriveServer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.drive = drive

    def _engineio_server_class(self) -> type:
        return SessionEngineIO

    def answer(self, sid: str, reply: Reply) -> None:
        self.emit(reply.event, reply.data, room=sid)

    def _handle_eio_message(self, sid: str, data: Any) -> None:
        size = len(data) if isinstance(data, (str, bytes)) else 0
        if size > self.drive.max_message_bytes:
            self.answer(sid, self.drive.bad_input(
                f"message of {size} bytes is over the max_message_bytes limit of "
                f"{self.drive.max_message_bytes}"))
            return
        try:
            pkt = _parse_packet(data)
        except BadTelemetry as error:
            self.answer(sid, self.drive.bad_input(str(error)))
            return
        default_namespace = pkt.namespace in (None, "/")
        if pkt.packet_type in (sio_packet.CONNECT, sio_packet.DISCONNECT) and default_namespace:
            super()._handle_eio_message(sid, data)  # a connect gets the connect reply
            return
        event = pkt.data if pkt.packet_type == sio_packet.EVENT and default_namespace else None
        if isinstance(event, list) and event and event[0] == udacity.TELEMETRY_EVENT:
            self.answer(sid, self.drive.handle_telemetry(event[1] if len(event) > 1 else None))
        else:
            self.answer(sid, self.drive.bad_input(f"not a telemetry event: {_describe(data)}"))


def _parse_packet(data: Any) -> sio_packet.Packet:
    """A Socket.IO packet from an Engine.IO message; binary packets (placeholders waiting for
    attachments) are refused, so no later frame is taken for an attachment."""
    if not isinstance(data, str):
        raise BadTelemetry(f"not a text Socket.IO packet: {_describe(data)}")
    try:
        pkt = sio_packet.Packet(encoded_packet=data)
    except Exception as error:  # noqa: BLE001 - whatever the client sent
        raise BadTelemetry(f"not a valid Socket.IO packet ({type(error).__name__}: {error}): "
                           f"{_describe(data)}") from None
    if pkt.packet_type in (sio_packet.BINARY_EVENT, sio_packet.BINARY_ACK):
        raise BadTelemetry(f"binary Socket.IO packet (the simulator sends text only): "
                           f"{_describe(data)}")
    return pkt


def create_app(drive: DriveServer, limits: RequestLimits | None = None,
               ) -> tuple[socketio.Server, Callable]:
    """The Socket.IO server and the WSGI app (Flask behind Socket.IO) serving ``drive``;
    ``limits`` (default: `Listener`'s) bound the websocket messages and polling bodies."""
    if limits is None:
        limits = Listener("127.0.0.1", 0, 60).limits(drive.max_message_bytes)
    for name in ("engineio.server", "socketio.server"):  # per-connection chatter at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    sio = _GuardedSocketIO(
        drive, async_mode="eventlet", logger=False, engineio_logger=False,
        always_connect=True,  # send "40" before our connect-time steer (python clients like it)
        async_handlers=False,  # lockstep: handle in the reader, no task per message
        max_http_buffer_size=limits.max_request_bytes)
    websocket_app = sio.eio._async["websocket"]

    def filtered_websocket(handler: Callable) -> Any:
        """python-engineio's websocket app for one session (``handler`` is the bound
        ``_websocket_handler`` of its engine.io socket), reading through the junk filter;
        python-engineio 3.x bounds only HTTP polling by max_http_buffer_size, so the
        websocket message size and time are bounded here."""
        sid = handler.__self__.sid

        def on_junk(reason: str) -> None:
            sio.answer(sid, drive.bad_input(reason))

        return websocket_app(
            lambda ws: handler(_JunkFrameFilter(bound_websocket(ws, limits), on_junk)),
            max_frame_length=limits.max_request_bytes)

    # The driver table is shared by all servers, so replace it with a copy.
    sio.eio._async = dict(sio.eio._async, websocket=filtered_websocket, thread=GreenTask)

    @sio.on("connect")
    def connect(sid: str, environ: dict) -> None:
        LOG.info("simulator connected (%s)", environ.get("REMOTE_ADDR", "?"))
        sio.answer(sid, drive.on_connect())

    @sio.on("disconnect")
    def disconnect(sid: str) -> None:
        LOG.info("simulator disconnected")

    flask_app = Flask("bc.drive")

    @flask_app.get("/")
    def index() -> str:
        return (f"bc drive server: {drive.predictor.source}\n"
                f"sessions: {len(sio.eio.sockets)}\n")

    return sio, socketio.WSGIApp(sio, flask_app)


def _stop_on_signals(drive: DriveServer) -> None:
    """SIGINT / SIGTERM: flush the recorder and exit at once (eventlet's server would
    otherwise wait for the simulator to hang up). Ctrl-C ends like every bc script (one
    line, exit 130); SIGTERM is a requested stop (exit 0)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: object) -> None:
        LOG.info("stopping on %s", signal.Signals(signum).name)
        if drive.recorder is not None:
            drive.recorder.close()
        logging.shutdown()
        sys.stdout.flush()
        if signum == signal.SIGINT:
            print(f"{PROG}: interrupted", file=sys.stderr)
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED if signum == signal.SIGINT else 0)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)


def serve(drive: DriveServer, listener: socket.socket, limits: RequestLimits,
          announce: Callable[[str], None] = partial(print, flush=True)) -> None:
    """Announce ``serving <source> on http://host:port for WxH frames`` (the port is open by
    then) and serve until stopped; the recorder is flushed on the way out."""
    install_patches()
    _, app = create_app(drive, limits)
    host, port = listener.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    width, height = drive.predictor.frame_size
    _stop_on_signals(drive)
    announce(f"serving {drive.predictor.source} on http://{shown_host}:{port} "
             f"for {width}x{height} frames, speed_source={drive.controller.speed_source}")
    try:
        eventlet.wsgi.server(PatientListener(listener), app, log_output=False, debug=False,
                             protocol=http_protocol(limits),
                             socket_timeout=limits.idle_timeout_s,
                             keepalive=limits.idle_timeout_s)
    finally:
        if drive.recorder is not None:
            drive.recorder.close()


def run_from_config(cfg: DictConfig) -> None:
    """What scripts/drive.py does with conf/drive.yaml: build the listener, the speed
    controller and the frame recorder (checking settings, port and folder), load the model,
    then empty the folder, listen and serve. Every bad setting is a `BcError` raised before
    anything is deleted."""
    from hydra.utils import instantiate

    listener: Listener = instantiate(cfg.listener)
    listener.check_free()
    controller: SpeedController = instantiate(cfg.controller)
    recorder: FrameRecorder | None = None
    if cfg.frames.folder is not None:
        recorder = instantiate(cfg.frames)
    predictor: Predictor = instantiate(cfg.predictor)
    drive: DriveServer = instantiate(cfg.server)(predictor=predictor, controller=controller,
                                                 recorder=recorder)
    if recorder is not None:
        recorder.start()
        LOG.info("saving frames and their log in %s", recorder.folder)
    try:
        sock = listener.open()
    except ListenError:
        if recorder is not None:
            recorder.close()
        raise
    serve(drive, sock, listener.limits(drive.max_message_bytes))
