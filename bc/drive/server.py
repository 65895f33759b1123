"""The drive server: answers the simulator's ``telemetry`` with ``steer`` (see
``shared/design/PROTOCOL.md``).

Stack: Flask + python-socketio 4.6.1 / python-engineio 3.13.2 on eventlet's WSGI server,
the only combination the Unity client talks to. That client opens a websocket straight to
``/socket.io/?EIO=4&transport=websocket`` and never sends the namespace connect packet
``40``; python-socketio 4.x connects every Engine.IO session to the default namespace by
itself (``Server._handle_eio_connect``), so its events reach the handlers below.

Protocol rules kept here: exactly one reply per telemetry (the simulator waits for it),
values as JSON *strings* (a number makes the Unity parser throw and the car stall), steering
clamped to [-1, 1]. ``null`` / ``{}`` telemetry means the user drives: reply ``manual``.

Bad input (non-object payload, missing / non-numeric ``speed``, missing / non-string /
oversized / non-base64 ``image``, non-JPEG, truncated or wrongly sized JPEG, a packet that is
not valid Socket.IO JSON) never stops the server: one warning line, then the **safe reply**
``steer`` with steering 0 and a brake (throttle ``SAFE_BRAKE_THROTTLE``) when the car is
known to move faster than ``BRAKE_MIN_SPEED``, else throttle 0 (a negative throttle at a
standstill reverses the car). ``manual`` was not chosen: it makes the car keep its last
command, which for a stream of bad frames means driving blind.

Adjustments to the stack (``create_app`` / ``listen``): eventlet unmasks websocket frames one
byte at a time in Python (~5 ms per camera frame), replaced by one big-integer XOR; eventlet's
default ``SO_REUSEPORT`` is turned off (a second server on 4567 fails instead of sharing it);
websocket frames are capped at ``TRANSPORT_LIMIT_FACTOR`` x ``max_message_bytes``; handlers run
inline (``async_handlers=False``: lockstep needs no task per message).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from bc.errors import BcError
from bc.drive.controller import DEFAULT_BRAKE_MIN_SPEED_MPH, SpeedController
from bc.drive.predictor import BadFrame, Predictor, decode_base64
from bc.drive.recorder import FrameRecorder

if TYPE_CHECKING:  # pragma: no cover
    from bc.tracking import LoadedModel

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

LOG = logging.getLogger("bc.drive")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4567
MAX_PORT = 65535
# A simulator frame is ~10-30 KB of base64; anything near this limit is not a camera frame.
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
# Messages up to this many times the limit are read and answered with the safe reply;
# larger websocket frames are refused by the transport (connection closed) so memory stays
# bounded. The server itself keeps running either way.
TRANSPORT_LIMIT_FACTOR = 4
SAFE_BRAKE_THROTTLE = -0.5
BRAKE_MIN_SPEED = DEFAULT_BRAKE_MIN_SPEED_MPH
STEER_DECIMALS = 6
STEER_EVENT = "steer"
MANUAL_EVENT = "manual"
TELEMETRY_EVENT = "telemetry"


class BadTelemetry(BcError, ValueError):
    """A telemetry message that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Reply:
    """One answer to the simulator: an event name and its (all-string) payload."""

    event: str
    data: dict[str, str]


def steer_reply(steering: float, throttle: float) -> Reply:
    """A ``steer`` reply; numbers become fixed-point strings (no exponent for Unity's parser)."""
    return Reply(STEER_EVENT, {"steering_angle": f"{steering:.{STEER_DECIMALS}f}",
                               "throttle": f"{throttle:.{STEER_DECIMALS}f}"})


MANUAL_REPLY = Reply(MANUAL_EVENT, {})
CONNECT_REPLY = Reply(STEER_EVENT, {"steering_angle": "0", "throttle": "0"})


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


def safe_reply(speed: float | None) -> Reply:
    """Steering 0, braking only when the car is known to be moving (see module doc)."""
    moving = speed is not None and speed > BRAKE_MIN_SPEED
    return steer_reply(0.0, SAFE_BRAKE_THROTTLE if moving else 0.0)


def _describe(payload: object) -> str:
    text = repr(payload)
    return text if len(text) <= 60 else text[:57] + "..."


class DriveServer:
    """Protocol logic, independent of the socket: telemetry in, ``Reply`` out."""

    def __init__(self, predictor: Predictor, controller: SpeedController,
                 recorder: FrameRecorder | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        if max_message_bytes < 1:
            raise ValueError(f"max_message_bytes: expected >= 1, got {max_message_bytes}")
        self.predictor = predictor
        self.controller = controller
        self.recorder = recorder
        self.max_message_bytes = int(max_message_bytes)
        self.messages = 0
        self.bad_messages = 0

    def on_connect(self) -> Reply:
        """A new simulator connection: forget the old speed error, send steer 0/0."""
        self.controller.reset()
        return CONNECT_REPLY

    def bad_input(self, reason: str, speed: float | None = None) -> Reply:
        """Log one warning line for unusable input and return the safe reply."""
        self.bad_messages += 1
        reply = safe_reply(speed)
        LOG.warning("bad telemetry: %s -> replied steer 0, throttle %s",
                    reason, reply.data["throttle"])
        return reply

    def handle_telemetry(self, data: object = None) -> Reply:
        """The one reply to one telemetry message; never raises."""
        self.messages += 1
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
            raw_steering, _ = self.predictor.predict_jpeg(jpeg)
        except (BadTelemetry, BadFrame) as error:
            return self.bad_input(str(error), speed)
        except Exception as error:  # a bug, not bad input: still answer, keep the car safe
            LOG.exception("unexpected error handling telemetry: %s", error)
            self.bad_messages += 1
            return safe_reply(speed)
        steering = min(1.0, max(-1.0, raw_steering))
        throttle = self.controller.throttle(speed, steering)
        if self.recorder is not None:
            self.recorder.record(jpeg, steering, throttle, speed)
        return steer_reply(steering, throttle)


class _GuardedSocketIO(socketio.Server):
    """A Socket.IO server that answers messages it cannot even parse (or that are over the
    size limit) with the safe reply instead of dropping them, which would stop the
    simulator's lockstep loop."""

    def __init__(self, drive: DriveServer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.drive = drive

    def _answer(self, sid: str, reply: Reply) -> None:
        self.emit(reply.event, reply.data, room=sid)

    def _handle_eio_message(self, sid: str, data: Any) -> None:
        size = len(data) if isinstance(data, (str, bytes)) else 0
        if size > self.drive.max_message_bytes:
            self._answer(sid, self.drive.bad_input(
                f"message of {size} bytes is over the max_message_bytes limit of "
                f"{self.drive.max_message_bytes}"))
            return
        try:
            super()._handle_eio_message(sid, data)
        except Exception as error:  # noqa: BLE001 - malformed packet from the client
            self._answer(sid, self.drive.bad_input(
                f"not a valid Socket.IO packet ({type(error).__name__}: {error}): "
                f"{_describe(data)}"))


def xor_unmask(data: bytes, mask: tuple[int, ...] | bytes, length: int | None = None,
               offset: int = 0) -> bytes:
    """Drop-in for eventlet's ``RFC6455WebSocket._apply_mask``, which unmasks client frames
    one byte at a time in Python (~5 ms for one camera frame, more than the model takes):
    the same bytes from a single big-integer XOR."""
    if length is None:
        length = len(data)
    key = bytes(mask[(offset + i) % 4] for i in range(4))
    stream = (key * (length // 4 + 1))[:length]
    value = int.from_bytes(bytes(data[:length]), "little") ^ int.from_bytes(stream, "little")
    return value.to_bytes(length, "little")


def create_app(drive: DriveServer) -> tuple[socketio.Server, Callable]:
    """The Socket.IO server and the WSGI app (Flask behind Socket.IO) serving ``drive``."""
    for name in ("engineio.server", "socketio.server"):  # per-connection chatter at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    eventlet.websocket.RFC6455WebSocket._apply_mask = staticmethod(xor_unmask)
    sio = _GuardedSocketIO(
        drive, async_mode="eventlet", logger=False, engineio_logger=False,
        always_connect=True,  # send "40" before our connect-time steer (python clients like it)
        async_handlers=False,  # lockstep: handle in the reader, no task per message
        max_http_buffer_size=drive.max_message_bytes)
    # python-engineio 3.x applies max_http_buffer_size to HTTP polling only; bound websocket
    # frames too (the driver table is shared by all servers, so copy it).
    sio.eio._async = dict(sio.eio._async, websocket=partial(
        sio.eio._async["websocket"],
        max_frame_length=drive.max_message_bytes * TRANSPORT_LIMIT_FACTOR))

    @sio.on("connect")
    def connect(sid: str, environ: dict) -> None:
        LOG.info("simulator connected (%s)", environ.get("REMOTE_ADDR", "?"))
        reply = drive.on_connect()
        sio.emit(reply.event, reply.data, room=sid)

    @sio.on(TELEMETRY_EVENT)
    def telemetry(sid: str, data: object = None, *extra: object) -> None:
        reply = drive.handle_telemetry(data)
        sio.emit(reply.event, reply.data, room=sid)

    @sio.on("disconnect")
    def disconnect(sid: str) -> None:
        LOG.info("simulator disconnected")

    flask_app = Flask("bc.drive")

    @flask_app.get("/")
    def index() -> str:
        return f"bc drive server: {drive.predictor.source}\n"

    return sio, socketio.WSGIApp(sio, flask_app)


def listen(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> socket.socket:
    """A listening socket on ``host``:``port`` (port 0 picks a free one); a clear
    ``OSError`` when the address is in use."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        # eventlet sets SO_REUSEPORT by default: a forgotten server on 4567 would then share
        # the port silently and the simulator would reach either one.
        return eventlet.listen((host, port), family=family, reuse_port=False)
    except OSError as error:
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error} "
                      "(is another drive server or program using the port?)") from None


def _stop_on_signals(drive: DriveServer) -> None:
    """SIGINT / SIGTERM: flush the recorder and exit at once. (eventlet's server would
    otherwise wait for the simulator to hang up before returning.)"""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: object) -> None:
        LOG.info("stopping on %s", signal.Signals(signum).name)
        if drive.recorder is not None:
            drive.recorder.close()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)


def serve(drive: DriveServer, listener: socket.socket,
          announce: Callable[[str], None] = partial(print, flush=True)) -> None:
    """Announce ``serving <source> on http://host:port`` (the port is open by then) and
    serve until interrupted; the recorder is flushed on the way out."""
    _, app = create_app(drive)
    host, port = listener.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    _stop_on_signals(drive)
    announce(f"serving {drive.predictor.source} on http://{shown_host}:{port}")
    try:
        eventlet.wsgi.server(listener, app, log_output=False, debug=False)
    finally:
        if drive.recorder is not None:
            drive.recorder.close()


def load_from_config(cfg: Mapping[str, Any]) -> "LoadedModel":
    """The model chosen by ``run_id`` / ``model_path`` / ``experiment_name`` / ``metric`` /
    ``mode`` / ``tracking_uri`` of conf/drive.yaml (``TrackingError`` says what is wrong)."""
    from bc.drive.predictor import load_model

    return load_model(run_id=cfg.get("run_id"), model_path=cfg.get("model_path"),
                      experiment=cfg.get("experiment_name", "bc"),
                      metric=cfg.get("metric", "val/loss"), mode=cfg.get("mode", "min"),
                      tracking_uri=cfg.get("tracking_uri"))


def _int_setting(cfg: Mapping[str, Any], name: str, default: int | None,
                 minimum: int = 0, maximum: int | None = None) -> int | None:
    """An integer config value (``None`` stays ``None`` when that is the default)."""
    value = cfg.get(name, default)
    if value is None and default is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected an integer, got {value!r}") from None
    if number < minimum or (maximum is not None and number > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ValueError(f"{name}: expected {bounds}, got {number}")
    return number


def run_from_config(cfg: Mapping[str, Any]) -> None:
    """What ``scripts/drive.py`` does: check the settings, the image folder and the port,
    load the model, then listen and serve. Fails early (``TrackingError``,
    ``FolderNotEmptyError``, ``OSError``, ``ValueError``) with one-line messages, before
    anything is deleted."""
    from hydra.utils import instantiate

    from bc.drive.predictor import configure_torch
    from bc.drive.recorder import check_folder

    if cfg.get("image_folder"):
        check_folder(Path(cfg["image_folder"]), bool(cfg.get("overwrite")))
    port = _int_setting(cfg, "port", DEFAULT_PORT, maximum=MAX_PORT)
    max_message_bytes = _int_setting(cfg, "max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES, 1)
    num_threads = _int_setting(cfg, "num_threads", None, 1)
    host = str(cfg.get("host") or DEFAULT_HOST)
    controller = instantiate(cfg["controller"])
    if port:
        # Fail before the model loads if the port is taken, but open it for real only when
        # ready: tools (and the simulator) take an open port to mean "serving".
        listen(host, port).close()
    started = time.perf_counter()
    model = load_from_config(cfg)
    threads = configure_torch(num_threads)
    predictor = Predictor(model)
    predictor.warm_up()
    LOG.info("loaded %s (preprocess %s) in %.2f s, %d torch thread(s)", model.source,
             model.spec.to_dict(), time.perf_counter() - started, threads)
    recorder = None
    if cfg.get("image_folder"):
        recorder = FrameRecorder(Path(cfg["image_folder"]), bool(cfg.get("overwrite")))
        LOG.info("saving frames and %s in %s", "drive_log.csv", recorder.folder)
    drive = DriveServer(predictor, controller, recorder, max_message_bytes)
    try:
        listener = listen(host, port)
    except OSError:
        if recorder is not None:
            recorder.close()
        raise
    serve(drive, listener)
