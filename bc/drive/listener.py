"""Where the drive server listens: the listening socket (no port sharing), its settings
(conf/drive.yaml ``host``, ``port``, ``idle_timeout_s``, ``request_timeout_s``,
``max_request_bytes``) and an ``accept`` that survives running out of descriptors.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import time
import warnings
from dataclasses import dataclass
from typing import Any

from bc.drive.transport import RequestLimits
from bc.errors import BcError, ConfigError

os.environ.setdefault("EVENTLET_NO_GREENDNS", "yes")  # as in bc.drive.transport
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated", category=Warning)
    import eventlet

LOG = logging.getLogger("bc.drive")

MAX_PORT = 65535


# Messages up to this many times max_message_bytes are read and answered with the safe
# reply; larger requests and websocket messages are refused by the transport (HTTP 413 /
# close code 1009, connection closed) so memory stays bounded: the default of
# max_request_bytes. The server itself keeps running either way.
TRANSPORT_LIMIT_FACTOR = 4


# accept() errors: out of descriptors or memory -> wait and retry; a connection that died
# in the backlog -> retry at once. Anything else is a real error.
ACCEPT_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


ACCEPT_TRANSIENT = frozenset({errno.ECONNABORTED, errno.ECONNRESET, errno.EPROTO, errno.EPIPE,
                              errno.ENOTCONN, errno.ESHUTDOWN, errno.EINTR})


ACCEPT_BACKOFF_S = (0.01, 1.0)  # first and longest wait between accept retries


class ListenError(BcError, OSError):
    """The server cannot listen on its address."""


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (port 0 picks a free one); ``ListenError``
    when the address is in use."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        # eventlet sets SO_REUSEPORT by default: a forgotten server on 4567 would then share
        # the port silently and the simulator would reach either one.
        return eventlet.listen((host, port), family=family, reuse_port=False)
    except OSError as error:
        raise ListenError(f"cannot listen on {host}:{port}: {error.strerror or error} "
                          "(is another drive server or program using the port?)") from None


@dataclass(frozen=True)
class Listener:
    """Where the server listens, how long a connection may idle before its websocket
    upgrade, and how big and slow one request may be (conf/drive.yaml ``host``, ``port``,
    ``idle_timeout_s``, ``request_timeout_s``, ``max_request_bytes``; None:
    ``TRANSPORT_LIMIT_FACTOR`` x ``max_message_bytes``)."""

    host: str
    port: int
    idle_timeout_s: float
    request_timeout_s: float = 10.0
    max_request_bytes: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"host: expected an address such as 127.0.0.1, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) \
                or not 0 <= self.port <= MAX_PORT:
            raise ConfigError(f"port: expected an integer in 0..{MAX_PORT}, got {self.port!r}")
        for name in ("idle_timeout_s", "request_timeout_s"):
            timeout = getattr(self, name)
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                    or not 0 < timeout < math.inf:
                raise ConfigError(f"{name}: expected a number of seconds > 0, got {timeout!r}")
        size = self.max_request_bytes
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ConfigError(f"max_request_bytes: expected an integer >= 1 or null, got {size!r}")

    def limits(self, max_message_bytes: int) -> RequestLimits:
        """The request bounds, ``max_request_bytes`` defaulting to
        ``TRANSPORT_LIMIT_FACTOR`` x ``max_message_bytes``."""
        size = self.max_request_bytes
        return RequestLimits(
            max_request_bytes=TRANSPORT_LIMIT_FACTOR * max_message_bytes if size is None else size,
            request_timeout_s=self.request_timeout_s, idle_timeout_s=self.idle_timeout_s)

    def check_free(self) -> None:
        """Fail now if the port is taken, without keeping it: tools (and the simulator) take
        an open port to mean "serving", so it is opened for real only when ready."""
        if self.port:
            listen(self.host, self.port).close()

    def open(self) -> socket.socket:
        return listen(self.host, self.port)


class PatientListener:
    """The listening socket as eventlet's WSGI server sees it, with an ``accept`` that waits
    and retries when the process is out of descriptors (eventlet would re-raise ``EMFILE``
    and end the server) or a connection died in the backlog (eventlet would stop serving)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._exhausted_since: float | None = None

    def accept(self) -> tuple[socket.socket, Any]:
        delay, longest = ACCEPT_BACKOFF_S
        while True:
            try:
                accepted = self._sock.accept()
            except OSError as error:
                if error.errno in ACCEPT_TRANSIENT:
                    continue
                if error.errno not in ACCEPT_EXHAUSTED:
                    raise
                if self._exhausted_since is None:
                    self._exhausted_since = time.monotonic()
                    LOG.warning("cannot accept connections (%s); retrying while connected "
                                "clients are served", error.strerror or error)
                eventlet.sleep(delay)
                delay = min(2 * delay, longest)
                continue
            if self._exhausted_since is not None:
                LOG.warning("accepting connections again after %.1f s",
                            time.monotonic() - self._exhausted_since)
                self._exhausted_since = None
            return accepted

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)
