"""Bounds on what one connection may cost the drive server, on both Engine.IO transports.

The stack (eventlet's WSGI server, python-engineio 3.13.2) leaves three holes that a
misbehaving client, or a port scanner, can use to pile up descriptors and memory:

- **Request size.** python-engineio checks ``max_http_buffer_size`` only for HTTP
  long-polling POSTs, and its refusal never reaches the client: it closes the session with
  ``Socket.close(wait=True)``, which waits for a poll that never comes, so the request
  hangs with its body unread and its descriptor held for good. `BoundedHttpProtocol` reads
  every request body itself before the app sees it: a body announced (or chunked) over
  ``max_request_bytes`` is answered ``413`` and the connection closed at once. Websocket
  messages over the limit (one frame, or fragments adding up) get close code 1009
  (`BoundedWebSocket`).
- **Request time.** eventlet's ``socket_timeout`` bounds each ``recv``, not a request:
  a client trickling a byte now and then keeps its connection forever. The request line
  must arrive within ``idle_timeout_s + request_timeout_s``, the headers and the body within
  ``request_timeout_s`` (else ``408`` and closed), a websocket message within
  ``request_timeout_s`` of its first byte (else close code 1008).
- **Sessions.** A websocket handshake that fails (the client resets before the ``101``
  reply) leaves its Engine.IO session, queue and WSGI environ in the server's tables for
  good, about 11 KB each; sessions closed by the ping timeout are never removed either.
  `SessionEngineIO` ends a websocket session with its request and drops every closed one,
  and a server-side disconnect no longer waits for the client. Each websocket session also
  left a ``_DummyThread`` behind in eventlet's green threading module (`GreenTask`).
"""

from __future__ import annotations

import io
import logging
import os
import socket
import time
import warnings
from dataclasses import dataclass
from typing import Any

# As in bc.drive.server: no green DNS resolver (~0.13 s of startup), and eventlet's own
# deprecation notice on import kept quiet.
os.environ.setdefault("EVENTLET_NO_GREENDNS", "yes")
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated", category=Warning)
    import engineio
    import eventlet
    import eventlet.websocket
    import eventlet.wsgi
    from eventlet.hubs import trampoline

LOG = logging.getLogger("bc.drive")

# Websocket messages may come in fragments; more than this many for one message is refused
# like an oversized message (each fragment costs memory of its own; the simulator sends one).
MAX_MESSAGE_FRAGMENTS = 64
CLOSE_MESSAGE_TOO_BIG = 1009  # RFC 6455 7.4.1: the websocket's 413
CLOSE_POLICY_VIOLATION = 1008  # RFC 6455 7.4.1: used here for a message that takes too long
SESSION_ID_KEY = "bc.engineio_sid"  # where SessionEngineIO notes a request's session
CLOSE_SILENTLY = ("", "")  # BoundedHttpProtocol: no answer, just close


@dataclass(frozen=True)
class RequestLimits:
    """How much and how slowly one request may arrive (conf/drive.yaml ``max_request_bytes``,
    ``request_timeout_s``, ``idle_timeout_s``; see the module doc)."""

    max_request_bytes: int
    request_timeout_s: float
    idle_timeout_s: float


def _close_quietly(*streams: Any) -> None:
    for stream in streams:
        try:
            stream.close()
        except OSError:
            pass


class BoundedHttpProtocol(eventlet.wsgi.HttpProtocol):
    """eventlet's HTTP protocol with the request bounds of the module doc; ``limits`` is set
    by `http_protocol`. Also: a connection reset while a reply is still buffered closes the
    connection (eventlet's ``finish`` stops at the failed flush and leaves the read side
    open, one leaked descriptor per reset)."""

    limits: RequestLimits

    def _read_request_line(self) -> str:
        timer = eventlet.Timeout(self.limits.idle_timeout_s + self.limits.request_timeout_s)
        try:
            return super()._read_request_line()
        except eventlet.Timeout as error:
            if error is not timer:
                raise
            self.close_connection = 1
            return ""
        finally:
            timer.cancel()

    def parse_request(self) -> bool:
        timer = eventlet.Timeout(self.limits.request_timeout_s)
        try:
            return super().parse_request()
        except eventlet.Timeout as error:
            if error is not timer:
                raise
            self._refuse("408 Request Timeout",
                         f"headers not complete within request_timeout_s="
                         f"{self.limits.request_timeout_s:g} s")
            return False
        finally:
            timer.cancel()

    def handle_one_response(self) -> None:
        refusal = self._read_body()
        if refusal is not None:
            self._refuse(*refusal)
            return
        super().handle_one_response()

    def _read_body(self) -> tuple[str, str] | None:
        """Read the whole request body under the limits and hand it to the app from memory;
        else the status and reason to refuse the request with (`CLOSE_SILENTLY` for a client
        that broke off)."""
        request_input = self.environ["eventlet.input"]
        length = request_input.content_length
        if not request_input.chunked_input and not length:
            return None
        limit = self.limits.max_request_bytes
        if length is not None and length > limit:
            return ("413 Payload Too Large",
                    f"body of {length} bytes is over max_request_bytes={limit}")
        timer = eventlet.Timeout(self.limits.request_timeout_s)
        try:
            body = request_input.read(limit + 1 if length is None else length)
        except eventlet.Timeout as error:
            if error is not timer:
                raise
            return ("408 Request Timeout", f"body not complete within request_timeout_s="
                                           f"{self.limits.request_timeout_s:g} s")
        except (OSError, ValueError):  # reset, or broken chunked encoding
            return CLOSE_SILENTLY
        finally:
            timer.cancel()
        if len(body) > limit:
            return ("413 Payload Too Large",
                    f"chunked body of more than max_request_bytes={limit} bytes")
        if length is not None and len(body) < length:  # the client went away mid-body
            return CLOSE_SILENTLY
        self.environ["wsgi.input"] = io.BytesIO(body)
        self.environ["CONTENT_LENGTH"] = str(len(body))
        return None

    def _refuse(self, status: str, reason: str) -> None:
        """Answer ``status`` with ``reason`` and close the connection (without an answer
        for `CLOSE_SILENTLY`)."""
        self.close_connection = 1
        if not status:
            return
        LOG.warning("refused a request from %s: %s (HTTP %s, connection closed)",
                    self.client_address[0] if self.client_address else "?", reason,
                    status.split()[0])
        text = f"{reason}\n".encode()
        try:
            self.wfile.write(f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\n"
                             f"Content-Length: {len(text)}\r\nConnection: close\r\n\r\n"
                             .encode() + text)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            _close_quietly(self.wfile, self.rfile, self.connection)


def http_protocol(limits: RequestLimits) -> type[BoundedHttpProtocol]:
    """The protocol class for ``eventlet.wsgi.server`` bound to ``limits``."""
    return type("DriveHttpProtocol", (BoundedHttpProtocol,), {"limits": limits})


class BoundedWebSocket(eventlet.websocket.RFC6455WebSocket):
    """eventlet's websocket with a bound on one message's size (all its fragments) and on
    the time from its first byte to its last; `bound_websocket` makes one of a websocket."""

    limits: RequestLimits
    _deadline: float = 0.0
    _message_bytes: int = 0
    _message_frames: int = 0

    def _recv_frame(self, message: Any = None) -> Any:
        # Waiting for a frame to begin is idling, bounded by the socket's own timeout (the
        # ping timeout python-engineio sets); the frame itself must not take longer than
        # what is left of its message's request_timeout_s.
        trampoline(self.socket.fd, read=True, timeout=self.socket.gettimeout(),
                   timeout_exc=socket.timeout("timed out"))
        if message is None:
            self._deadline = time.monotonic() + self.limits.request_timeout_s
            self._message_bytes = self._message_frames = 0
        chunks_before = len(message.data) if message is not None else 0
        timer = eventlet.Timeout(max(self._deadline - time.monotonic(), 1e-3))
        try:
            frame = super()._recv_frame(message)
        except eventlet.Timeout as error:
            if error is not timer:
                raise
            self._refused(CLOSE_POLICY_VIOLATION, f"message not complete within "
                                                  f"request_timeout_s={self.limits.request_timeout_s:g} s")
        except eventlet.websocket.FailedConnectionError as error:
            if error.status == CLOSE_MESSAGE_TOO_BIG:
                self._log(error.status, error.message)
            raise
        finally:
            timer.cancel()
        if frame is message:  # a continuation of a fragmented message
            self._message_frames += 1
            self._message_bytes += sum(len(chunk) for chunk in frame.data[chunks_before:])
            limit = self.limits.max_request_bytes
            if self._message_bytes > limit or self._message_frames > MAX_MESSAGE_FRAGMENTS:
                self._refused(CLOSE_MESSAGE_TOO_BIG,
                              f"fragmented message over max_request_bytes={limit} or "
                              f"{MAX_MESSAGE_FRAGMENTS} fragments")
        elif not frame.opcode & 8:  # the first frame of a data message
            self._message_frames = 1
            self._message_bytes = sum(len(chunk) for chunk in frame.data)
        return frame

    def _log(self, status: int, reason: str) -> None:
        LOG.warning("refused a websocket message from %s: %s (close code %d, connection "
                    "closed)", self.environ.get("REMOTE_ADDR", "?"), reason, status)

    def _refused(self, status: int, reason: str) -> None:
        self._log(status, reason)
        raise eventlet.websocket.FailedConnectionError(status, reason)


def bound_websocket(ws: eventlet.websocket.RFC6455WebSocket,
                    limits: RequestLimits) -> eventlet.websocket.RFC6455WebSocket:
    """``ws`` (just opened by eventlet's websocket app, no frame read yet) as a
    `BoundedWebSocket`: eventlet builds the object itself, so its class is changed in place;
    the subclass only adds state with class-level defaults."""
    if type(ws) is eventlet.websocket.RFC6455WebSocket:
        ws.__class__ = BoundedWebSocket
        ws.limits = limits
    return ws


class GreenTask:
    """python-engineio's background task (its ``thread`` driver: the websocket writer, the
    ping service) on a plain eventlet greenthread. eventlet's green ``threading.Thread``
    registers a ``_DummyThread`` for every greenthread that joins one and never drops it:
    about 0.75 KB kept for good per websocket session."""

    def __init__(self, target: Any, args: tuple = (), kwargs: dict | None = None) -> None:
        self._call = (target, args, kwargs or {})
        self._greenthread: Any = None

    def start(self) -> None:
        target, args, kwargs = self._call
        self._greenthread = eventlet.spawn(target, *args, **kwargs)

    def join(self, timeout: float | None = None) -> None:
        if self._greenthread is None:
            return
        try:
            with eventlet.Timeout(timeout, False):
                self._greenthread.wait()
        except Exception:  # noqa: BLE001 - a thread's join does not raise its errors either
            LOG.exception("background task failed")


class SessionEngineIO(engineio.Server):
    """python-engineio's server whose sessions end with their connection (module doc)."""

    def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        if event == "connect":
            sid, environ = args[0], args[1]
            environ[SESSION_ID_KEY] = sid
        try:
            return super()._trigger_event(event, *args, **kwargs)
        finally:
            if event == "disconnect":
                self.sockets.pop(args[0], None)

    def _handle_connect(self, environ: dict, start_response: Any, transport: str,
                        b64: bool = False, jsonp_index: int | None = None) -> Any:
        try:
            return super()._handle_connect(environ, start_response, transport, b64,
                                           jsonp_index)
        finally:
            # A websocket session lives as long as this request; whatever ended it (a reset
            # before the handshake reply, a refused handshake), it ends here too.
            if transport == "websocket":
                self._end(environ.get(SESSION_ID_KEY))

    def _end(self, sid: str | None) -> None:
        session = self.sockets.pop(sid, None) if sid is not None else None
        if session is not None and not session.closed:
            session.close(wait=False, abort=True)

    def disconnect(self, sid: str | None = None) -> None:
        """Close one session (or all) without waiting for the client to collect the close
        packet: python-engineio's ``close(wait=True)`` blocks until the next poll, forever
        for a client that sends no more."""
        sessions = list(self.sockets.values()) if sid is None else [self.sockets.get(sid)]
        for session in sessions:
            if session is not None and not session.closed:
                session.close(wait=False)
        if sid is None:
            self.sockets = {}
        else:
            self.sockets.pop(sid, None)


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


def install_patches() -> None:
    """Apply the process-wide adjustment this server needs, once, before serving: eventlet's
    websocket unmasking replaced by `xor_unmask` (the rest of the bounds are per server)."""
    eventlet.websocket.RFC6455WebSocket._apply_mask = staticmethod(xor_unmask)
