"""The drive server bounds every request (scripts/drive.py in a subprocess under a low
descriptor limit, real sockets): oversized HTTP long-polling POSTs and websocket messages
are refused at once (413 / close code 1009), slow requests are timed out (408 / 1008), reset
handshakes leave no Engine.IO session behind, and afterwards a Unity-style client is served
with the server holding as many descriptors as before."""

from __future__ import annotations

import os
import re
import resource
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import websocket

from bc.inference import artifact
from bc.drive.launch import drive_server
from conftest import compose_config
from unity_client import HANDSHAKE, UnityClient, make_jpeg, telemetry

DESCRIPTOR_LIMIT = 64
MAX_MESSAGE_BYTES = 100_000
MAX_REQUEST_BYTES = 4 * MAX_MESSAGE_BYTES  # max_request_bytes: null -> 4 x max_message_bytes
REQUEST_TIMEOUT_S = 1
OVERSIZED_POSTS = 300
SLOW_REQUESTS = 120  # more than the descriptor limit: the later ones wait to be accepted
CONCURRENCY = 40
CLIENT_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    config = compose_config("train", ["model=small"]).model
    torch.manual_seed(0)
    net = artifact.build_model(config).eval()
    folder = artifact.save_model(net, config, tmp_path_factory.mktemp("model") / "model")
    return folder / artifact.TORCHSCRIPT_FILE


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    """scripts/drive.py with small limits and, once it serves, at most DESCRIPTOR_LIMIT
    open descriptors (`ulimit -n 64`)."""
    workdir = tmp_path_factory.mktemp("drive")
    with drive_server([f"model_path={model}", f"max_message_bytes={MAX_MESSAGE_BYTES}",
                       f"request_timeout_s={REQUEST_TIMEOUT_S}"], workdir) as info:
        pid = info["process"].pid
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (DESCRIPTOR_LIMIT, DESCRIPTOR_LIMIT))
        yield dict(info, pid=pid)


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT_S)


def read_to_end(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as a
    close); a timeout here means the server kept the connection open."""
    data = b""
    while True:
        try:
            chunk = connection.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def send_quietly(connection: socket.socket, data: bytes) -> None:
    """Send what the server still takes: it may close before the body is through."""
    try:
        connection.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def polling_session(port: int) -> str:
    """A new Engine.IO long-polling session (as a browser's socket.io client opens one)."""
    with connect(port) as connection:
        connection.sendall(b"GET /socket.io/?EIO=3&transport=polling HTTP/1.1\r\n"
                           b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
        reply = read_to_end(connection)
    return re.search(rb'"sid":"([0-9a-f]+)"', reply)[1].decode()


def post_head(sid: str, length: int | None) -> bytes:
    size = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (f"POST /socket.io/?EIO=3&transport=polling&sid={sid} HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nContent-Type: text/plain;charset=UTF-8\r\n{size}\r\n\r\n"
            ).encode()


def oversized_post(port: int, sid: str, number: int) -> tuple[bytes, float]:
    """A POST announcing 3-20 MB (every tenth one chunked, without a length) that sends its
    first 256 KB; the server's whole answer and how long it took."""
    with connect(port) as connection:
        started = time.monotonic()
        if number % 10 == 0:
            chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"4" * 64 * 1024)
            send_quietly(connection, post_head(sid, None) + chunk * 8)
        else:
            size = 3_000_000 + number * 57_000
            send_quietly(connection, post_head(sid, size) + b"4" * 256 * 1024)
        return read_to_end(connection), time.monotonic() - started


def slow_request(port: int, sid: str, number: int) -> tuple[bytes, float]:
    """A request that stops part way (in its body, or in its headers) and waits."""
    with connect(port) as connection:
        started = time.monotonic()
        if number % 4 == 0:
            connection.sendall(post_head(sid, 1000)[:-30])  # headers cut off
        else:
            connection.sendall(post_head(sid, 1000) + b"12:42[")
        return read_to_end(connection), time.monotonic() - started


def status_line(reply: bytes) -> str:
    return reply.split(b"\r\n", 1)[0].decode(errors="replace")


def close_code(client: UnityClient) -> int | None:
    """The status of the server's close frame (None if the connection just ended); read
    frame by frame, as answering the close would fail on the closed connection."""
    try:
        while True:
            frame = client.ws.recv_frame()
            if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
                return struct.unpack("!H", frame.data[:2])[0]
    except (websocket.WebSocketConnectionClosedException, ConnectionError):
        return None


def reset_handshake(port: int, number: int) -> None:
    connection = connect(port)
    connection.sendall(HANDSHAKE)
    if number % 3 == 0:
        connection.recv(64)  # after the server switched protocols
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


def sessions(port: int) -> int:
    """Engine.IO sessions the server holds (its index page says)."""
    with connect(port) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return int(re.search(rb"sessions: (\d+)", read_to_end(connection))[1])


def test_oversized_and_slow_requests_are_refused_and_leave_nothing_behind(server):
    port, pid = server["port"], server["pid"]
    before = open_descriptors(pid)
    sid = polling_session(port)
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        oversized = list(pool.map(lambda n: oversized_post(port, sid, n), range(OVERSIZED_POSTS)))
        slow = list(pool.map(lambda n: slow_request(port, sid, n), range(SLOW_REQUESTS)))
    for reply, took in oversized:
        assert status_line(reply) == "HTTP/1.1 413 Payload Too Large", reply[:200]
        assert b"over max_request_bytes=400000" in reply or b"more than max_request_bytes" in reply
        assert took < 3
    for reply, took in slow:
        assert status_line(reply) == "HTTP/1.1 408 Request Timeout", reply[:200]
        assert took < REQUEST_TIMEOUT_S + 3

    # The websocket transport: a message over the limit in one frame or in fragments, and one
    # that stops part way; each closes its connection, and the next client is served.
    for fragments in (1, 1, 5):
        with UnityClient(port) as client:
            piece = "A" * (MAX_REQUEST_BYTES // fragments + 1024)
            if fragments == 1:
                client.ws.send('42["telemetry",{"image":"' + piece + '"}]')
            else:
                client.ws.send_frame(websocket.ABNF.create_frame("42" + piece, 1, fin=0))
                for _ in range(fragments - 1):
                    client.ws.send_frame(websocket.ABNF.create_frame(piece, 0, fin=0))
            assert close_code(client) == 1009
    with UnityClient(port) as client:
        frame = websocket.ABNF.create_frame("4" * 5000, websocket.ABNF.OPCODE_TEXT)
        client.ws.sock.sendall(frame.format()[:200])
        started = time.monotonic()
        assert close_code(client) == 1008
        assert time.monotonic() - started < REQUEST_TIMEOUT_S + 3

    deadline = time.monotonic() + 5
    while open_descriptors(pid) > before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_descriptors(pid) <= before + 1
    with UnityClient(port) as client:
        event, data = client.send_telemetry(telemetry(make_jpeg(3)))
    assert event == "steer" and set(data) == {"steering_angle", "throttle"}
    assert server["process"].poll() is None
    log = server["log"].read_text()
    for words in ("over max_request_bytes=400000 (HTTP 413, connection closed)",
                  "body not complete within request_timeout_s=1 s (HTTP 408",
                  "headers not complete within request_timeout_s=1 s (HTTP 408",
                  "(close code 1009, connection closed)",
                  "message not complete within request_timeout_s=1 s (close code 1008"):
        assert words in log


def test_a_polling_client_under_the_limits_is_served(server):
    """The bounded body reading hands engine.io the whole body: a long-polling POST of a
    telemetry frame gets its steer reply on the next poll."""
    port = server["port"]
    sid = polling_session(port)
    frame = '42["telemetry",{"speed":"8.0","image":"' + telemetry(make_jpeg(4))["image"] + '"}]'
    body = f"{len(frame)}:{frame}".encode()
    with connect(port) as connection:
        connection.sendall(post_head(sid, len(body)).replace(b"HTTP/1.1\r\n",
                                                             b"HTTP/1.1\r\nConnection: close\r\n")
                           + body)
        assert status_line(read_to_end(connection)) == "HTTP/1.1 200 OK"
    with connect(port) as connection:
        connection.sendall(f"GET /socket.io/?EIO=3&transport=polling&sid={sid}&b64=1 HTTP/1.1\r\n"
                           f"Host: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        assert b'42["steer",{"steering_angle":"' in read_to_end(connection)


def sessions_after(port: int, most: int) -> int:
    """The session count once it is down to ``most`` (the last handshakes may be in flight),
    or after 5 s."""
    deadline = time.monotonic() + 5
    while sessions(port) > most and time.monotonic() < deadline:
        time.sleep(0.05)
    return sessions(port)


def test_reset_handshakes_leave_no_session_behind(server):
    port = server["port"]
    before = sessions(port)
    for number in range(300):
        reset_handshake(port, number)
    assert sessions_after(port, before) == before


def resident_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


@pytest.mark.slow
def test_memory_stays_flat_over_many_reset_handshakes(server):
    """Each reset handshake used to keep ~7.6 KB for good (its Engine.IO session and WSGI
    environ, and a _DummyThread of eventlet's green threading): 20,000 of them, ~150 MB."""
    port, pid = server["port"], server["pid"]
    before = sessions(port)
    for number in range(2000):  # warm-up: allocator pools, the hub's cancelled timers
        reset_handshake(port, number)
    series = [(0, resident_mb(pid))]
    for step in range(1, 6):
        for number in range(4000):
            reset_handshake(port, number)
        series.append((step * 4000, resident_mb(pid)))
    print("reset handshakes -> resident MB:", series)
    assert series[-1][1] - series[0][1] < 4, series
    assert sessions_after(port, before) <= before  # (other tests' polling sessions may expire)
