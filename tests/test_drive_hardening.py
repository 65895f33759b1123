"""The drive server under hostile or unlucky conditions (scripts/drive.py in a subprocess,
real sockets): a model trained on another simulator's 96x96 frames, connections reset in
the middle of the websocket handshake, a process out of file descriptors, connections that
never finish their request, and a JPEG decompression bomb."""

from __future__ import annotations

import base64
import os
import resource
import signal
import socket
import struct
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from bc.core import images

from bc.inference import artifact
from bc.drive.launch import drive_server
from bc.inference.predictor import Predictor
from conftest import compose_config
from unity_client import HANDSHAKE, UnityClient, make_jpeg, telemetry

FRAME = 96  # the model's camera frames are FRAME x FRAME (not Udacity's 320x160)
DESCRIPTOR_LIMIT = 128
IDLE_TIMEOUT_S = 2
RESET_HANDSHAKES = 1000
SAFE_BRAKE = ("steer", {"steering_angle": "0.000000", "throttle": "-0.500000"})


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """An exported SmallNet for 96x96 frames (crop as for another simulator's camera)."""
    config = compose_config("train", [
        "model=small", f"model.preprocess.frame_width={FRAME}",
        f"model.preprocess.frame_height={FRAME}", "model.preprocess.crop_top=0",
        "model.preprocess.crop_bottom=12"]).model
    torch.manual_seed(0)
    net = artifact.build_model(config).eval()
    folder = artifact.save_model(net, config, tmp_path_factory.mktemp("model") / "model")
    return folder / artifact.TORCHSCRIPT_FILE


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    """scripts/drive.py serving the 96x96 model with the default message limit, a short idle
    timeout and, once it serves, at most DESCRIPTOR_LIMIT open descriptors."""
    workdir = tmp_path_factory.mktemp("drive")
    with drive_server([f"model_path={model}", f"idle_timeout_s={IDLE_TIMEOUT_S}"],
                      workdir) as info:
        pid = info["process"].pid
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (DESCRIPTOR_LIMIT, DESCRIPTOR_LIMIT))
        yield dict(info, pid=pid)


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def expected_steering(model: Path, jpeg: bytes) -> float:
    return Predictor(artifact.load_exported(model)).predict_jpeg(jpeg).steering


def assert_steers_like_the_model(server, model) -> None:
    """A Unity-style client gets the model's own steering for a 96x96 frame."""
    jpeg = make_jpeg(5, width=FRAME, height=FRAME)
    with UnityClient(server["port"]) as client:
        event, data = client.send_telemetry(telemetry(jpeg))
    assert event == "steer"
    assert float(data["steering_angle"]) == pytest.approx(
        max(-1.0, min(1.0, expected_steering(model, jpeg))), abs=2e-6)


def reset(connection: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer sees a TCP reset, not a clean close."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


def test_serves_the_model_frame_size_and_refuses_others(server, model):
    assert server["source"] == str(model)
    assert f"on http://127.0.0.1:{server['port']} for {FRAME}x{FRAME} frames" in \
        server["log"].read_text()
    assert_steers_like_the_model(server, model)
    with UnityClient(server["port"]) as client:
        assert client.send_telemetry(telemetry(make_jpeg(5), speed=20.0)) == SAFE_BRAKE
    assert f"this model expects {FRAME}x{FRAME} frames, got 320x160" in server["log"].read_text()


def test_reset_handshakes_leak_no_descriptor(server, model):
    before = open_descriptors(server["pid"])
    for number in range(RESET_HANDSHAKES):
        connection = socket.create_connection(("127.0.0.1", server["port"]), timeout=10)
        if number % 10 == 0:
            connection.sendall(HANDSHAKE[:20])  # cut off inside the request line
        else:
            connection.sendall(HANDSHAKE)
            if number % 2:
                connection.recv(64)  # reset after the server switched protocols
        reset(connection)
    assert server["process"].poll() is None
    deadline = time.monotonic() + 5
    while open_descriptors(server["pid"]) > before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_descriptors(server["pid"]) <= before + 2
    assert_steers_like_the_model(server, model)


def test_out_of_descriptors_the_server_waits_and_serves_again(server, model):
    held = []
    try:
        while (open_descriptors(server["pid"]) < DESCRIPTOR_LIMIT
               and len(held) < 2 * DESCRIPTOR_LIMIT):
            connection = socket.socket()
            connection.setblocking(False)
            connection.connect_ex(("127.0.0.1", server["port"]))
            held.append(connection)
            time.sleep(0.002)
        assert open_descriptors(server["pid"]) == DESCRIPTOR_LIMIT
        time.sleep(0.3)  # accept() fails with EMFILE meanwhile
        assert server["process"].poll() is None
    finally:
        for connection in held:
            reset(connection)
    assert_steers_like_the_model(server, model)
    log = server["log"].read_text()
    assert "cannot accept connections (Too many open files)" in log
    assert "accepting connections again" in log


def test_a_connection_that_never_finishes_its_request_is_closed(server):
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=IDLE_TIMEOUT_S + 10) \
            as connection:
        connection.sendall(HANDSHAKE[:60])
        started = time.monotonic()
        assert connection.recv(1024) == b""  # closed by the server, nothing answered
    assert time.monotonic() - started < IDLE_TIMEOUT_S + 5


def peak_memory_mb(pid: int) -> float:
    """Peak resident memory of process ``pid`` so far."""
    status = Path(f"/proc/{pid}/status").read_text()
    kilobytes = next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]
    return int(kilobytes) / 1024


def test_a_decompression_bomb_is_refused_before_decoding(server, model):
    # A 766 KB greyscale JPEG declaring 14000 x 14000 pixels: decoding it takes ~600 MB.
    bomb = cv2.imencode(".jpg", np.zeros((14000, 14000), np.uint8),
                        [cv2.IMWRITE_JPEG_QUALITY, 10, cv2.IMWRITE_JPEG_OPTIMIZE, 1])[1].tobytes()
    assert images.jpeg_size(bomb) == (14000, 14000)
    assert len(base64.b64encode(bomb)) < 1 << 20  # under drive.yaml's max_message_bytes
    before = peak_memory_mb(server["pid"])
    with UnityClient(server["port"]) as client:
        assert client.send_telemetry(telemetry(bomb, speed=20.0)) == SAFE_BRAKE
    assert peak_memory_mb(server["pid"]) - before < 100
    assert f"expects {FRAME}x{FRAME} frames, got 14000x14000" in server["log"].read_text()
    assert_steers_like_the_model(server, model)


def test_ctrl_c_flushes_the_saved_frames_and_exits_130(model, tmp_path):
    frames = tmp_path / "frames"
    with drive_server([f"model_path={model}", f"image_folder={frames}"], tmp_path) as info:
        with UnityClient(info["port"]) as client:
            client.send_telemetry(telemetry(make_jpeg(1, width=FRAME, height=FRAME)))
        info["process"].send_signal(signal.SIGINT)
        assert info["process"].wait(timeout=10) == 130
    assert info["log"].read_text().rstrip().endswith("drive.py: interrupted")
    rows = (frames / "drive_log.csv").read_text().splitlines()
    assert len(rows) == 2 and len(list(frames.glob("*.jpg"))) == 1
