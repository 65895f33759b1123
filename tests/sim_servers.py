"""A real Socket.IO drive-server stand-in for the autonomous-mode tests.

Same stack as scripts/drive.py (python-socketio 4.6.1 + python-engineio 3.13.2 + eventlet
WSGI), bound to 127.0.0.1 on a free port, running its own eventlet hub in a background
thread of the test process (no monkey-patching), so a test can share state with the
handler. What the handler answers is a plain function the test sets per drive.
"""

from __future__ import annotations

import logging
import threading
import warnings
from typing import Any, Callable

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated", category=Warning)
    import eventlet
    import eventlet.wsgi
    import socketio

# handler(data) -> list of (event, data) to emit, in order; [] = no reply
Handler = Callable[[dict | None], list[tuple[str, Any]]]

STOP_POLL_S = 0.02


def steer(steering: float, throttle: float) -> tuple[str, dict]:
    """A well-formed reply, values as JSON strings like the reference drive.py."""
    return "steer", {"steering_angle": str(steering), "throttle": str(throttle)}


class DriveServerStub:
    """python-socketio 4.x server answering `telemetry` with whatever `handler` returns."""

    def __init__(self, greeting: bool = True, always_connect: bool = False,
                 ping_interval: float = 25.0) -> None:
        self.handler: Handler = lambda data: [steer(0.0, 0.0)]
        self.telemetry: list[dict | None] = []  # every telemetry payload received, in order
        self.connects = 0
        self.disconnects = 0
        self.greeting = greeting
        self.sid: str | None = None
        self.port = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        quiet = logging.getLogger("drive-server-stub")
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
        self.sio = socketio.Server(async_mode="eventlet", logger=False, engineio_logger=False,
                                   always_connect=always_connect, ping_interval=ping_interval)
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("telemetry", self._on_telemetry)
        self._app = socketio.WSGIApp(self.sio)
        self._log = quiet
        self._thread = threading.Thread(target=self._serve, name="drive-server-stub", daemon=True)

    def _on_connect(self, sid: str, environ: dict) -> None:
        self.connects += 1
        self.sid = sid
        if self.greeting:  # the reference server's connect greeting
            self.sio.emit("steer", {"steering_angle": "0", "throttle": "0"}, room=sid)

    def _on_disconnect(self, sid: str) -> None:
        self.disconnects += 1

    def _on_telemetry(self, sid: str, data: dict | None) -> None:
        self.telemetry.append(data)
        for event, payload in self.handler(data):
            self.sio.emit(event, payload, room=sid)

    def _serve(self) -> None:
        try:
            listener = eventlet.listen(("127.0.0.1", 0))
            self.port = listener.getsockname()[1]
            server = eventlet.spawn(eventlet.wsgi.server, listener, self._app, log=self._log,
                                    log_output=False)
            self._ready.set()
            while not self._stop.is_set():
                eventlet.sleep(STOP_POLL_S)
            server.kill()
            listener.close()
        except BaseException as error:  # surfaced by start()
            self._error = error
            self._ready.set()

    def start(self) -> "DriveServerStub":
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def last_client_ping(self) -> float:
        """time.time() of the current client's last engine ping (its connect time if none)."""
        return self.sio.eio.sockets[self.sid].last_ping

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def __enter__(self) -> "DriveServerStub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
