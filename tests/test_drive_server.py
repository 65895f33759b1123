"""The real drive server (scripts/drive.py in a subprocess on 127.0.0.1) with real clients:
a raw-websocket client that behaves like the Unity simulator and a python-socketio client.
One server (model by run id, frames saved) serves the whole module."""

from __future__ import annotations

import base64
import csv
import importlib.metadata
import json
import queue
import re
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from bc.core import images

from bc import tracking
from bc.inference import store as model_store
from bc.inference import artifact
from bc.cli import bc_error_in
from bc.drive.launch import drive_server
from bc.core.preprocess import to_tensor
from conftest import compose_config
from unity_client import UnityClient, make_jpeg, telemetry

with warnings.catch_warnings():  # socketio 4.6.1 imports eventlet, which announces its deprecation
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated", category=Warning)
    import socketio

EXPERIMENT = "drive-test"
MAX_MESSAGE_BYTES = 100_000
TRANSPORT_LIMIT = 4 * MAX_MESSAGE_BYTES  # bc.drive.listener.TRANSPORT_LIMIT_FACTOR
FRAME_NAME = re.compile(r"^\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}_\d{3}(_\d+)?\.jpg$")
SAFE_STEER = "0.000000"
BRAKE = "-0.500000"
COAST = "0.000000"

DRIVE_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "drive.py"


def train_small_net(seed: int, target: float) -> tuple[torch.nn.Module, dict]:
    """A SmallNet (conf/model/small.yaml) after a few optimizer steps on random frames."""
    config = compose_config("train", ["model=small"]).model
    torch.manual_seed(seed)
    net = artifact.build_model(config)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    inputs = torch.rand(8, *net.input_shape) * 255
    targets = target + 0.1 * torch.randn(8, 1)
    for _ in range(3):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(net(inputs), targets)
        loss.backward()
        optimizer.step()
    return net.eval(), config


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An MLflow sqlite store with a finished run without a model, then two finished runs with
    models named "run-a" and "run-b" (B is the latest and has the better val/loss), and an
    empty experiment."""
    root = tmp_path_factory.mktemp("drive-store")
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    experiment = tracking.get_or_create_experiment(EXPERIMENT, uri)
    tracking.get_or_create_experiment("empty", uri)
    client = tracking.client(uri)
    runs, nets = {}, {}
    runs["no_model"] = client.create_run(experiment, run_name="no-model").info.run_id
    client.set_terminated(runs["no_model"])
    for name, seed, target, val_loss in (("a", 0, 0.3, 0.5), ("b", 1, -0.2, 0.2)):
        net, config = train_small_net(seed, target)
        time.sleep(0.01)  # distinct start times: "latest" is well defined
        run_id = client.create_run(experiment, run_name=f"run-{name}").info.run_id
        client.log_metric(run_id, "val/loss", val_loss)
        model_store.log_model(run_id, net, config, uri)
        client.set_terminated(run_id)
        runs[name], nets[name] = run_id, net
    return {"root": root, "uri": uri, "runs": runs, "nets": nets}


@pytest.fixture(scope="module")
def server(store):
    """scripts/drive.py serving run A by id, saving frames, on a free port."""
    overrides = [f"run_id={store['runs']['a']}", f"tracking_uri={store['uri']}",
                 f"image_folder={store['root'] / 'frames'}",
                 f"max_message_bytes={MAX_MESSAGE_BYTES}"]
    with drive_server(overrides, store["root"]) as info:
        yield info


def server_log(server) -> str:
    return server["log"].read_text(errors="replace")


def expected_steering(net: torch.nn.Module, jpeg: bytes) -> float:
    """What the trained module itself says for this frame."""
    with torch.inference_mode():
        return float(net(to_tensor(net.preprocess_spec(images.decode_jpeg(jpeg)))))


def assert_valid_steer(reply) -> tuple[float, float]:
    event, data = reply
    assert event == "steer", reply
    assert set(data) == {"steering_angle", "throttle"}
    assert all(isinstance(value, str) for value in data.values()), data  # Unity needs strings
    steering, throttle = float(data["steering_angle"]), float(data["throttle"])
    assert -1.0 <= steering <= 1.0 and -1.0 <= throttle <= 1.0
    return steering, throttle


def test_socketio_and_engineio_pins_match_the_simulator():
    # PROTOCOL.md section 3: engineio 3.14 rejects the sim's EIO=4 URL, socketio 5 drops its events.
    assert importlib.metadata.version("python-socketio") == "4.6.1"
    assert importlib.metadata.version("python-engineio") == "3.13.2"


def test_unity_client_never_sends_40_and_gets_steer_for_every_telemetry(server, store):
    with UnityClient(server["port"]) as client:
        assert client.handshake["upgrades"] == []
        assert client.connect_reply == ("steer", {"steering_angle": SAFE_STEER, "throttle": COAST})
        for seed, speed in enumerate((0.0, 4.5, 9.0, 12.0, 30.0)):
            assert_valid_steer(client.send_telemetry(telemetry(make_jpeg(seed), speed=speed)))
        assert client.send_telemetry({}) == ("manual", {})
        assert client.send_telemetry(None) == ("manual", {})
        assert_valid_steer(client.send_telemetry(telemetry(make_jpeg(9))))
        client.ping()
        assert_valid_steer(client.send_telemetry(telemetry(make_jpeg(10))))
    # Every event reached the default namespace although no "40" was ever sent.
    assert not any(frame.startswith("40") for frame in client.sent)
    assert all(frame.startswith(("42[\"telemetry\"", "2")) for frame in client.sent)


def test_server_steers_exactly_like_the_trained_module(server, store):
    net = store["nets"]["a"]
    spec = net.preprocess_spec
    with UnityClient(server["port"]) as client:
        for seed in range(4):
            jpeg = make_jpeg(100 + seed)
            steering, _ = assert_valid_steer(client.send_telemetry(telemetry(jpeg)))
            rgb = images.decode_jpeg(jpeg)
            with torch.inference_mode():
                expected = float(net(to_tensor(spec(rgb))))
                swapped = float(net(to_tensor(spec(rgb[..., ::-1].copy()))))
            assert abs(expected) < 1.0  # not hidden by the clamp
            assert steering == pytest.approx(expected, abs=2e-6)
            # The comparison would notice a BGR/RGB mix-up.
            assert abs(swapped - expected) > 1e-4


def test_speed_control_accelerates_slow_car_and_brakes_fast_car(server):
    with UnityClient(server["port"]) as client:
        _, slow = assert_valid_steer(client.send_telemetry(telemetry(make_jpeg(1), speed=0.0)))
        _, fast = assert_valid_steer(client.send_telemetry(telemetry(make_jpeg(1), speed=25.0)))
    assert slow > 0.5 and fast < 0


def test_a_second_server_cannot_take_the_port(server):
    from bc.drive.listener import listen

    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{server['port']}"):
        listen("127.0.0.1", server["port"])


def test_flask_page_names_the_served_model(server, store):
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{server['port']}/", timeout=10) as response:
        assert store["runs"]["a"] in response.read().decode()


def test_python_socketio_client_gets_steer_and_manual(server):
    replies: queue.Queue = queue.Queue()
    client = socketio.Client(reconnection=False)
    client.on("steer", lambda data: replies.put(("steer", data)))
    client.on("manual", lambda data=None: replies.put(("manual", data)))
    client.connect(f"http://127.0.0.1:{server['port']}", transports=["websocket"])
    try:
        assert replies.get(timeout=10) == (
            "steer", {"steering_angle": SAFE_STEER, "throttle": COAST})
        for seed in range(3):
            client.emit("telemetry", telemetry(make_jpeg(seed)))
            assert_valid_steer(replies.get(timeout=10))
        client.emit("telemetry", {})
        assert replies.get(timeout=10) == ("manual", {})
    finally:
        client.disconnect()


def _with_image(image: object, speed: object = "20.0") -> dict:
    return {"steering_angle": "0.0000", "throttle": "0.0000", "speed": speed, "image": image}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _png() -> bytes:
    return cv2.imencode(".png", np.zeros((160, 320, 3), np.uint8))[1].tobytes()


GOOD = make_jpeg(7)
_SCAN = GOOD.index(b"\xff\xda") + 40  # well inside the entropy-coded data
CORRUPT = GOOD[:_SCAN] + bytes(len(GOOD) - _SCAN - 2) + b"\xff\xd9"  # header fine, body zeroed
# name -> (raw text frame the client sends, expected throttle of the safe reply, log words)
BAD_INPUTS = {
    "bad_base64": (_with_image("not*base64!"), BRAKE, "base64"),
    "truncated_jpeg": (_with_image(_b64(GOOD[: len(GOOD) // 2])), BRAKE, "truncated"),
    "not_a_jpeg": (_with_image(_b64(_png())), BRAKE, "not a JPEG"),
    "corrupt_jpeg": (_with_image(_b64(CORRUPT)), BRAKE, "corrupt"),
    "wrong_size": (_with_image(_b64(make_jpeg(1, width=64, height=32))), BRAKE,
                   "this model expects 320x160 frames, got 64x32"),
    "image_not_string": (_with_image(12345), BRAKE, "image"),
    "missing_image": ({"speed": "20.0", "throttle": "0.1"}, BRAKE, "image: missing"),
    "missing_speed": ({"image": _b64(GOOD)}, COAST, "speed: missing"),
    "non_numeric_speed": (_with_image(_b64(GOOD), "fast"), COAST, "speed: expected a number"),
    "speed_is_a_list": (_with_image(_b64(GOOD), [1]), COAST, "speed"),
    "payload_is_string": ("hello", COAST, "expected a JSON object"),
    "payload_is_list": ([1, 2], COAST, "expected a JSON object"),
    "payload_is_number": (5, COAST, "expected a JSON object"),
    "oversized_image": (_with_image("A" * (MAX_MESSAGE_BYTES + 8)), COAST, "max_message_bytes"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_is_answered_and_the_next_frame_steers(server, name):
    payload, throttle, words = BAD_INPUTS[name]
    with UnityClient(server["port"]) as client:
        assert client.send_telemetry(payload) == (
            "steer", {"steering_angle": SAFE_STEER, "throttle": throttle})
        steering, _ = assert_valid_steer(client.send_telemetry(telemetry(GOOD)))
        assert steering != 0.0
    warnings = [line for line in server_log(server).splitlines() if "bad telemetry" in line]
    assert any(words in line for line in warnings), (words, warnings[-3:])


def test_malformed_packet_is_answered_and_the_next_frame_steers(server):
    with UnityClient(server["port"]) as client:
        client.send_text('42["telemetry",{"speed": "3"')  # cut-off JSON
        assert client.wait_reply() == ("steer", {"steering_angle": SAFE_STEER, "throttle": COAST})
        assert_valid_steer(client.send_telemetry(telemetry(GOOD)))
    assert "not a valid Socket.IO packet" in server_log(server)


def _good_packet() -> str:
    return "42" + json.dumps(["telemetry", telemetry(GOOD)], separators=(",", ":"))


# Websocket frames that are not a usable telemetry event; the Unity client waits in lockstep
# for a reply to each message it sends, so each must get exactly one safe reply.
JUNK_FRAMES = {
    "unknown_event": '42["hello",{"speed":"20.0"}]',
    "unknown_event_with_ack_id": '421["hello",{}]',
    "server_event_from_the_client": '42["steer",{"steering_angle":"0","throttle":"0"}]',
    "connect_to_other_namespace": "40/other",
    "disconnect_from_other_namespace": "41/other",
    "other_namespace": "42/other," + _good_packet()[2:],
    "event_without_data": "42",
    "empty_event_array": "42[]",
    "event_name_not_a_string": "42[7,{}]",
    "event_not_an_array": '42{"telemetry":{}}',
    "ack_packet": '43["telemetry"]',
    "error_packet": '44"oops"',
    "unknown_socketio_packet_type": "49[]",
    "empty_socketio_message": "4",
    "binary_placeholder": '451-["telemetry",{"_placeholder":true,"num":0}]',
    "empty_text_frame": "",
    "unknown_engineio_packet": "7hello",
    "engineio_open_from_the_client": "0{}",
    "base64_binary_engineio_packet": "b4AAECAw==",
    "binary_frame": b"\x04junk",
    "empty_binary_frame": b"",
}


@pytest.mark.parametrize("name", sorted(JUNK_FRAMES))
def test_junk_gets_exactly_one_safe_reply_and_the_next_frame_steers(server, store, name):
    frame = JUNK_FRAMES[name]
    with UnityClient(server["port"]) as client:
        if isinstance(frame, bytes):
            client.ws.send_binary(frame)
        else:
            client.ws.send(frame)
        assert client.wait_reply() == ("steer", {"steering_angle": SAFE_STEER, "throttle": COAST})
        # A second reply to the junk would be taken for this frame's reply.
        steering, _ = assert_valid_steer(client.send_telemetry(telemetry(GOOD)))
        assert steering == pytest.approx(expected_steering(store["nets"]["a"], GOOD), abs=2e-6)


def test_binary_placeholder_does_not_swallow_the_next_frame(server, store):
    with UnityClient(server["port"]) as client:
        client.send_text('451-["telemetry",{"_placeholder":true,"num":0}]')
        client.send_text(_good_packet())  # python-socketio 4 took this for the attachment
        assert client.wait_reply() == ("steer", {"steering_angle": SAFE_STEER, "throttle": COAST})
        steering, _ = assert_valid_steer(client.wait_reply())
    assert steering == pytest.approx(expected_steering(store["nets"]["a"], GOOD), abs=2e-6)
    assert "binary Socket.IO packet" in server_log(server)


def test_jpeg_with_trailing_bytes_is_served(server, store):
    with UnityClient(server["port"]) as client:
        steering, _ = assert_valid_steer(client.send_telemetry(telemetry(GOOD + bytes(64))))
    assert steering == pytest.approx(expected_steering(store["nets"]["a"], GOOD), abs=2e-6)


def test_frame_over_the_transport_limit_closes_only_that_connection(server):
    client = UnityClient(server["port"]).connect()
    try:
        client.send_text('42["telemetry",{"image":"' + "A" * TRANSPORT_LIMIT + '"}]')
        with pytest.raises(Exception):
            client.wait_reply()
    finally:
        client.close()
    with UnityClient(server["port"]) as fresh:
        assert_valid_steer(fresh.send_telemetry(telemetry(GOOD)))


def _csv_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "drive_log.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_received_frames_are_saved_as_sent_with_a_csv(server, store):
    folder = store["root"] / "frames"
    jpegs = [make_jpeg(200 + index) for index in range(5)]
    with UnityClient(server["port"]) as client:
        replies = [client.send_telemetry(telemetry(jpeg, speed=7.5)) for jpeg in jpegs]

    def saved(row: dict[str, str]) -> bytes:
        path = folder / row["image"]
        return path.read_bytes() if path.is_file() else b""

    deadline = time.monotonic() + 10  # files are written by a background thread
    while time.monotonic() < deadline:
        rows = _csv_rows(folder)
        if len(rows) >= len(jpegs) and saved(rows[-1]) == jpegs[-1]:
            break
        time.sleep(0.05)
    new = rows[-len(jpegs):]
    for row, jpeg, (_, data) in zip(new, jpegs, replies):
        assert FRAME_NAME.match(row["image"]), row["image"]
        assert saved(row) == jpeg  # bytes as received, no re-encode
        assert row["steering"] == data["steering_angle"] and row["throttle"] == data["throttle"]
        assert float(row["speed"]) == 7.5
    assert len(list(folder.glob("*.jpg"))) == len(rows)  # bad frames are not saved


def test_run_is_chosen_by_id_name_latest_or_best(store, compose):
    def chosen(*overrides: str) -> str:
        cfg = compose("drive", [f"experiment_name={EXPERIMENT}", f"tracking_uri={store['uri']}",
                                *overrides])
        return instantiate(cfg.predictor.model).source

    runs = store["runs"]
    assert chosen(f"run_id={runs['a']}") == f"runs:/{runs['a']}/model"
    assert chosen("run_id=run-a") == f"runs:/{runs['a']}/model"
    assert chosen("run_id=latest") == f"runs:/{runs['b']}/model"
    assert chosen("run_id=best", "metric=val/loss", "mode=min") == f"runs:/{runs['b']}/model"
    assert chosen("run_id=best", "mode=max") == f"runs:/{runs['a']}/model"


def test_loading_by_run_id_removes_what_a_killed_load_left(store, tmp_path, monkeypatch):
    """A SIGKILL while drive.py downloads its model leaves the download folder; the next
    load (any process's) removes it, and its own."""
    import tempfile

    from bc.core.scratch import default_root
    from test_scratch import hold_a_folder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    killed, leftover = hold_a_folder(default_root())
    killed.kill()
    killed.wait()
    assert leftover.is_dir()
    model_store.load_model(store["runs"]["a"], store["uri"])
    assert list(tmp_path.iterdir()) == []


def test_served_model_steers_like_the_chosen_run(store, compose):
    cfg = compose("drive", ["run_id=best", f"experiment_name={EXPERIMENT}",
                            f"tracking_uri={store['uri']}"])
    predictor = instantiate(cfg.predictor)
    assert predictor.frame_size == (320, 160)
    assert predictor.predict_jpeg(GOOD) == (pytest.approx(
        expected_steering(store["nets"]["b"], GOOD), abs=1e-6), None)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _uri(store: dict) -> str:
    return f"tracking_uri={store['uri']}"


def _copied_recording(root: Path) -> Path:
    """A simulator recording (driving_log.csv + IMG/) copied into ``root``."""
    folder = root / "recording"
    (folder / "IMG").mkdir(parents=True, exist_ok=True)
    (folder / "driving_log.csv").write_text("IMG/center_2016_12_01_13_30_48_287.jpg,,,0,0,0,0\n")
    (folder / "IMG" / "center_2016_12_01_13_30_48_287.jpg").write_bytes(GOOD)
    return folder


# name -> (drive.py overrides for the module's store, expected words of the error)
ERROR_CASES = {
    "unknown_run_id": (lambda s: [f"run_id={'0' * 31}f", _uri(s)], "no MLflow run"),
    "run_without_model": (lambda s: [f"run_id={s['runs']['no_model']}", _uri(s)],
                          "has no logged model"),
    "empty_experiment": (lambda s: ["run_id=best", "experiment_name=empty", _uri(s)],
                         "has no finished run"),
    "missing_experiment": (lambda s: ["run_id=latest", "experiment_name=nope", _uri(s)],
                           "no MLflow experiment named 'nope'"),
    "unknown_run_name": (lambda s: ["run_id=run-z", f"experiment_name={EXPERIMENT}", _uri(s)],
                         "no finished run named 'run-z'"),
    "unreachable_server": (lambda s: ["run_id=best",
                                      f"tracking_uri=http://127.0.0.1:{_closed_port()}"],
                           "unreachable"),
    "no_model_given": (lambda s: [], "give exactly one of run_id"),
    "both_given": (lambda s: ["run_id=best", f"model_path={s['root'] / 'x.ts'}"],
                   "give exactly one"),
    "missing_model_file": (lambda s: [f"model_path={s['root'] / 'nope.ts'}"], "does not exist"),
    "not_a_model_file": (lambda s: [f"model_path={s['root'] / 'mlruns' / 'mlflow.db'}"],
                         "not a TorchScript model exported by bc"),
    "non_empty_image_folder": (lambda s: [f"model_path={s['root'] / 'nope.ts'}",
                                          f"image_folder={s['root'] / 'mlruns'}"], "is not empty"),
    "copied_recording_as_image_folder": (
        lambda s: [f"model_path={s['root'] / 'nope.ts'}", "overwrite=true",
                   f"image_folder={_copied_recording(s['root'])}"],
        "holds IMG, driving_log.csv, which drive.py did not write"),
    "bad_port": (lambda s: ["port=70000", f"model_path={s['root'] / 'nope.ts'}"],
                 "port: expected an integer in 0..65535, got 70000"),  # port=http: the schema
    "bad_set_speed": (lambda s: ["set_speed=50", f"model_path={s['root'] / 'nope.ts'}"],
                      "set_speed: expected 0..30"),
    "bad_speed_source": (lambda s: ["speed_source=lidar", f"model_path={s['root'] / 'nope.ts'}"],
                         "speed_source: expected one of ['set_speed', 'bends', 'model']"),
    "speed_source_model_without_speed_output": (
        lambda s: [f"run_id={s['runs']['a']}", _uri(s), "speed_source=model"],
        "speed_source: model needs a model with a speed output, but runs:/"),
}


def _with_free_port(overrides: list[str]) -> list[str]:
    return overrides if any(o.startswith("port=") for o in overrides) else ["port=0", *overrides]


@pytest.mark.parametrize("name", sorted(ERROR_CASES))
def test_bad_settings_raise_a_one_line_bc_error_before_anything_is_deleted(store, compose, name):
    from bc.drive.server import run_from_config

    overrides, message = ERROR_CASES[name]
    with pytest.raises(Exception) as raised:
        run_from_config(compose("drive", _with_free_port(overrides(store))))
    error = bc_error_in(raised.value)  # what scripts/drive.py prints as its one line
    assert error is not None and message in str(error), raised.value
    assert (store["root"] / "mlruns" / "mlflow.db").is_file()
    assert sorted(p.name for p in _copied_recording(store["root"]).iterdir()) == [
        "IMG", "driving_log.csv"]


# One per way the error reaches the script: from MLflow, from a folder check, from inside
# Hydra's InstantiationException, and from the server refusing a model that cannot give speed.
CLI_ERROR_CASES = ("unknown_run_id", "copied_recording_as_image_folder", "bad_port",
                   "speed_source_model_without_speed_output")


@pytest.fixture(scope="module")
def cli_errors(store):
    """Failing scripts/drive.py invocations, started together (each is mostly import time)."""
    processes = {}
    for name in CLI_ERROR_CASES:
        command = [sys.executable, str(DRIVE_SCRIPT),
                   f"hydra.run.dir={store['root'] / 'hydra' / name}",
                   *_with_free_port(ERROR_CASES[name][0](store))]
        processes[name] = subprocess.Popen(command, cwd=store["root"], stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True)
    return {name: (process, *process.communicate(timeout=120))
            for name, process in processes.items()}


@pytest.mark.parametrize("name", CLI_ERROR_CASES)
def test_drive_script_errors_are_one_line_and_exit_2(cli_errors, name):
    process, stdout, stderr = cli_errors[name]
    assert process.returncode == 2, (stdout, stderr)
    errors = [line for line in stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("drive.py: error:"), stderr
    assert ERROR_CASES[name][1] in errors[0]
    assert "Traceback" not in stdout + stderr and "serving" not in stdout


def test_drive_imports_neither_lightning_nor_albumentations_nor_mlflow_pytorch(store, tmp_path):
    exported = tmp_path / "model"
    artifact.save_model(store["nets"]["a"], compose_config("train", ["model=small"]).model,
                        exported)
    code = f"""
import json, runpy, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
runpy.run_path({str(DRIVE_SCRIPT)!r}, run_name="drive")
import bc.drive.server
from hydra.utils import instantiate
from conftest import compose_config
heavy = ("lightning", "pytorch_lightning", "albumentations", "mlflow.pytorch")
def loaded(names):
    return sorted(m for m in sys.modules if any(m == n or m.startswith(n + ".") for n in names))
def serve_model(*overrides):
    instantiate(compose_config("drive", list(overrides)).predictor)
serve_model("model_path={exported / 'model.ts'}")
by_path = loaded(heavy + ("mlflow",))
serve_model("run_id={store['runs']['a']}", "tracking_uri={store['uri']}")
print(json.dumps({{"by_path": by_path, "by_run": loaded(heavy)}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found == {"by_path": [], "by_run": []}

