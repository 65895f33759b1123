"""Drive server parts without a socket: speed control, frame decoding, telemetry handling,
frame saving, websocket unmasking."""

from __future__ import annotations

import base64
import csv
import os
import re
from datetime import datetime, timezone

import cv2
import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from bc.core import images

from bc.inference import artifact
from bc.cli import bc_error_in
from bc.drive.controller import PIController, SpeedController
from bc.drive.frames import CSV_NAME, FolderNotEmptyError, FrameRecorder, frame_stem
from bc.inference.predictor import BadFrame, Predictor, decode_base64
from bc.errors import ConfigError
from bc.core.preprocess import FrameSizeError, to_tensor
from unity_client import make_jpeg, telemetry


def simulate(controller: SpeedController, steps: int, steering: float = 0.0, speed: float = 0.0,
             gain: float = 2.0, drag: float = 0.05,
             predicted: float | None = None) -> tuple[list[float], list[float]]:
    """A crude car: speed += gain * throttle - drag * speed per step; returns speeds, throttles
    (`predicted`: the model's target speed at every step)."""
    speeds, throttles = [], []
    for _ in range(steps):
        throttle = controller.throttle(speed, steering, predicted)
        speed = max(0.0, speed + gain * throttle - drag * speed)
        speeds.append(speed)
        throttles.append(throttle)
    return speeds, throttles


def test_pi_controller_reaches_the_set_speed_and_stays_clamped():
    controller = SpeedController(set_speed=9.0)
    speeds, throttles = simulate(controller, 3000)
    assert speeds[-1] == pytest.approx(9.0, abs=0.1)
    assert all(-1.0 <= t <= 1.0 for t in throttles)
    assert max(throttles) == 1.0 or throttles[0] > 0.5  # starts by accelerating hard


def test_pi_output_is_clamped_and_braking_can_be_disabled():
    assert PIController(set_point=30).update(0.0) == 1.0
    assert PIController(set_point=0).update(30.0) == -1.0
    no_brake = SpeedController(set_speed=9.0, allow_brake=False)
    assert no_brake.throttle(25.0) == 0.0
    assert SpeedController(set_speed=9.0).throttle(25.0) < 0.0  # brakes when too fast
    # A negative throttle at a standstill would reverse the car: never below brake_min_speed.
    assert SpeedController(set_speed=1.0, brake_min_speed=5.0).throttle(4.0) == 0.0


def test_anti_windup_lets_the_controller_recover_at_once():
    pi = PIController(set_point=9.0)
    outputs = [pi.update(0.0) for _ in range(10_000)]  # car stuck against a wall
    assert outputs[-1] == pytest.approx(1.0)
    # Integration stops where the output saturates: (1 - kp * 9) / ki, not 10_000 * 9.
    assert pi.integral == pytest.approx((1.0 - pi.kp * 9.0) / pi.ki)
    outputs = [pi.update(12.0) for _ in range(5)]  # free again and too fast
    assert outputs[-1] < 0.0


def test_speed_source_bends_lowers_the_target_speed():
    straight = SpeedController(set_speed=20.0, speed_source="bends", bend_slowdown=0.5)
    assert straight.target_speed(0.0) == 20.0
    assert straight.target_speed(0.5) == pytest.approx(15.0)
    assert straight.target_speed(-1.0) == pytest.approx(10.0)
    assert SpeedController(set_speed=20.0).target_speed(1.0) == 20.0  # off by default
    floor = SpeedController(set_speed=9.0, speed_source="bends", min_speed=6.0)
    assert floor.target_speed(1.0) == 6.0
    bend = SpeedController(set_speed=20.0, speed_source="bends")
    bend_speeds, _ = simulate(bend, 3000, steering=0.8)
    assert bend_speeds[-1] == pytest.approx(20.0 * (1 - 0.5 * 0.8), abs=0.2)


def test_speed_source_model_follows_the_predicted_speed():
    bends = SpeedController(set_speed=20.0, speed_source="bends", bend_slowdown=0.5)
    assert bends.target_speed(0.5) == pytest.approx(15.0)
    assert SpeedController(set_speed=20.0, speed_source="set_speed").target_speed(1.0, 3.0) == 20.0
    model = SpeedController(set_speed=9.0, speed_source="model", min_speed=5.0)
    assert model.target_speed(0.9, 17.5) == 17.5  # neither set_speed nor the steering count
    assert model.target_speed(0.0, 2.0) == 5.0 and model.target_speed(0.0, 45.0) == 30.0
    with pytest.raises(ValueError, match="speed_source=model"):
        model.target_speed(0.0, None)
    # At 25 mph, a predicted 30 mph accelerates and a predicted 15 mph brakes.
    assert model.throttle(25.0, 0.0, 30.0) > 0.0
    model.reset()
    assert model.throttle(25.0, 0.0, 15.0) < 0.0
    model_speeds, _ = simulate(model, 3000, predicted=17.5)
    assert model_speeds[-1] == pytest.approx(17.5, abs=0.2)


@pytest.mark.parametrize("bad", [{"set_speed": 31.0}, {"set_speed": -1.0}, {"bend_slowdown": 1.5},
                                 {"max_throttle": 0.0}, {"ki": float("nan")},
                                 {"speed_source": "lidar"}])  # types: the schema (test_configs)
def test_speed_controller_rejects_bad_settings(bad):
    with pytest.raises(ConfigError, match=rf"^{next(iter(bad))}: "):
        SpeedController(**bad)


def small_net(compose, **frame_size: int) -> torch.nn.Module:
    """An untrained SmallNet (conf/model/small.yaml), optionally for another camera frame size."""
    config = compose("train", ["model=small", *(f"model.preprocess.{key}={value}"
                                                 for key, value in frame_size.items())]).model
    return artifact.build_model(config).eval()


def loaded(net: torch.nn.Module) -> artifact.LoadedModel:
    return artifact.LoadedModel(net=net, spec=net.preprocess_spec, source="test")


@pytest.fixture
def predictor(compose) -> Predictor:
    return Predictor(loaded(small_net(compose)))


def test_predictor_decodes_rgb_and_rejects_bad_frames(predictor):
    rgb = np.zeros((160, 320, 3), np.uint8)
    rgb[..., 0] = 200  # pure red in RGB
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    decoded = predictor.decode(jpeg)
    assert decoded.shape == (160, 320, 3)
    assert decoded[..., 0].mean() > 190 and decoded[..., 2].mean() < 40  # still red, not blue
    assert np.array_equal(predictor.decode(jpeg + bytes(100)), decoded)  # trailing bytes are fine
    with pytest.raises(BadFrame, match="truncated"):
        predictor.decode(jpeg[:-100])
    with pytest.raises(BadFrame, match="not a JPEG"):
        predictor.decode(b"GIF89a" + jpeg)
    with pytest.raises(FrameSizeError, match="expects 320x160 frames, got 64x32"):
        predictor.decode(make_jpeg(0, width=64, height=32))
    with pytest.raises(BadFrame, match="base64"):
        decode_base64("abc$")
    with pytest.raises(BadFrame, match="expected a base64 string"):
        decode_base64(None)
    assert decode_base64(base64.b64encode(jpeg).decode()) == jpeg


def test_a_frame_bigger_than_the_model_frame_is_refused_before_decoding(predictor, monkeypatch):
    # 14000 x 14000 declared in the header; decoding it would take ~600 MB.
    bomb = cv2.imencode(".jpg", np.zeros((14000, 14000), np.uint8),
                        [cv2.IMWRITE_JPEG_QUALITY, 10, cv2.IMWRITE_JPEG_OPTIMIZE, 1])[1].tobytes()
    assert len(bomb) < 800_000  # base64 of it fits the 1 MiB message limit
    decoded = []
    monkeypatch.setattr(images, "decode_jpeg", lambda *a, **k: decoded.append(a))
    with pytest.raises(FrameSizeError, match="expects 320x160 frames, got 14000x14000"):
        predictor.decode(bomb)
    assert decoded == []


def test_predictor_serves_the_model_frame_size(compose):
    """A model trained on 96x96 frames (another simulator) takes 96x96 frames, nothing else."""
    net = small_net(compose, frame_width=96, frame_height=96, crop_top=0, crop_bottom=12)
    predictor = Predictor(loaded(net))
    assert predictor.frame_size == (96, 96)
    predictor.warm_up()
    jpeg = make_jpeg(4, width=96, height=96)
    rgb = images.decode_jpeg(jpeg)
    model_input = predictor.model_input(rgb)
    assert model_input.shape == (1, *net.input_shape) and model_input.dtype == torch.float32
    assert torch.equal(model_input, to_tensor(net.preprocess_spec(rgb)))
    with torch.inference_mode():
        expected = float(net(model_input))
    assert predictor.predict_jpeg(jpeg) == (pytest.approx(expected, abs=1e-6), None)
    with pytest.raises(FrameSizeError, match="expects 96x96 frames, got 320x160"):
        predictor.predict_jpeg(make_jpeg(4))
    with pytest.raises(FrameSizeError):
        predictor.model_input(images.decode_jpeg(make_jpeg(4)))


@pytest.fixture
def drive(compose):
    """The protocol logic with a real (untrained) SmallNet."""
    from bc.drive.server import DriveServer

    return DriveServer(Predictor(loaded(small_net(compose))), SpeedController(),
                       max_message_bytes=100_000)


def test_telemetry_replies_are_strings_and_bad_input_gets_the_safe_reply(drive, caplog):
    from bc.drive.server import MANUAL_REPLY

    reply = drive.handle_telemetry(telemetry(make_jpeg(3), speed=8.0))
    assert reply.event == "steer" and all(isinstance(v, str) for v in reply.data.values())
    assert re.fullmatch(r"-?\d\.\d{6}", reply.data["steering_angle"])  # no exponent for Unity
    assert drive.handle_telemetry({}) == MANUAL_REPLY
    assert drive.handle_telemetry(None) == MANUAL_REPLY
    moving = drive.handle_telemetry({"speed": "20.0", "image": "%%%"})
    assert moving.data == {"steering_angle": "0.000000", "throttle": "-0.500000"}  # brake
    still = drive.handle_telemetry({"speed": "1.0", "image": "%%%"})
    assert still.data == {"steering_angle": "0.000000", "throttle": "0.000000"}  # no reversing
    warnings = [r.getMessage() for r in caplog.records if r.name == "bc.drive"]
    assert len(warnings) == 2 and all("image: not valid base64" in w for w in warnings)
    # Unity writes "N4" numbers with the machine's decimal separator.
    comma = dict(telemetry(make_jpeg(3)), speed="25,0000")
    assert float(drive.handle_telemetry(comma).data["throttle"]) < 0


def test_recorder_saves_bytes_as_received_and_a_csv(tmp_path):
    jpegs = [make_jpeg(seed) for seed in range(3)]
    with FrameRecorder(tmp_path / "run", overwrite=False) as recorder:
        names = [recorder.record(jpeg, 0.1 * i, 0.2, 9.0) for i, jpeg in enumerate(jpegs)]
    assert len(set(names)) == 3  # unique even within one millisecond
    for name, jpeg in zip(names, jpegs):
        assert re.fullmatch(r"\d{4}(_\d{2}){5}_\d{3}(_\d+)?\.jpg", name)
        assert (tmp_path / "run" / name).read_bytes() == jpeg
    with open(tmp_path / "run" / CSV_NAME, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["image"] for row in rows] == names
    assert [float(row["steering"]) for row in rows] == pytest.approx([0.0, 0.1, 0.2])
    assert sorted(names) == names  # name order is time order


def test_frame_names_follow_the_reference_format():
    when = datetime(2016, 12, 1, 13, 30, 48, 287654, tzinfo=timezone.utc)
    assert frame_stem(when) == "2016_12_01_13_30_48_287"


def test_overwrite_deletes_only_an_earlier_drive(tmp_path):
    folder = tmp_path / "run"
    with FrameRecorder(folder, overwrite=False) as recorder:
        recorder.record(make_jpeg(0), 0.0, 0.1, 5.0)
    with pytest.raises(FolderNotEmptyError, match="not empty.*overwrite=true"):
        FrameRecorder(folder, overwrite=False)
    with FrameRecorder(folder, overwrite=True) as recorder:  # an earlier drive: replaced
        name = recorder.record(make_jpeg(1), 0.0, 0.1, 5.0)
    assert sorted(p.name for p in folder.iterdir()) == sorted([CSV_NAME, name])


def test_overwrite_refuses_a_folder_holding_anything_else(tmp_path, monkeypatch):
    recording = tmp_path / "recording"  # a copied simulator recording
    (recording / "IMG").mkdir(parents=True)
    (recording / "driving_log.csv").write_text("center,left,right,0,0,0,0\n")
    (recording / "IMG" / "center_2016_12_01_13_30_48_287.jpg").write_bytes(make_jpeg(0))
    before = sorted(recording.rglob("*"))
    with pytest.raises(FolderNotEmptyError, match="driving_log.csv.*drive.py did not write"):
        FrameRecorder(recording, overwrite=True)
    assert sorted(recording.rglob("*")) == before
    # A drive's frames beside one foreign file: nothing is deleted either.
    mixed = tmp_path / "mixed"
    with FrameRecorder(mixed, overwrite=False) as recorder:
        recorder.record(make_jpeg(0), 0.0, 0.1, 5.0)
    (mixed / "notes.txt").write_text("precious")
    with pytest.raises(FolderNotEmptyError, match="notes.txt"):
        FrameRecorder(mixed, overwrite=True)
    assert len(list(mixed.iterdir())) == 3
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FolderNotEmptyError, match="did not write"):
        FrameRecorder(".", overwrite=True)


def test_fast_websocket_unmasking_matches_the_rfc():
    from bc.drive.transport import xor_unmask

    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 1001, dtype=np.uint8).tobytes()
    mask = tuple(int(v) for v in rng.integers(0, 256, 4))
    for offset in (0, 1, 3, 6):
        expected = bytes(data[i] ^ mask[(offset + i) % 4] for i in range(len(data)))
        assert xor_unmask(data, mask, len(data), offset) == expected
    assert xor_unmask(data, mask, 10) == bytes(data[i] ^ mask[i % 4] for i in range(10))
    assert xor_unmask(b"", mask) == b""


def test_default_torch_threads_leave_cores_for_the_simulator():
    from bc.inference.predictor import default_num_threads

    cores = len(os.sched_getaffinity(0))
    assert default_num_threads() == (1 if cores < 8 else 2)


@pytest.mark.parametrize("override, message", [
    ("port=70000", "port: expected an integer in 0..65535, got 70000"),
    ("idle_timeout_s=0", "idle_timeout_s: expected a number of seconds > 0"),
    ("request_timeout_s=-1", "request_timeout_s: expected a number of seconds > 0"),
    ("max_request_bytes=0", "max_request_bytes: expected an integer >= 1 or null, got 0"),
    ("host=''", "host: expected an address"),
])
def test_listener_settings_are_checked_where_the_listener_is_built(compose, override, message):
    with pytest.raises(InstantiationException) as raised:
        instantiate(compose("drive", [override]).listener)
    assert message in str(bc_error_in(raised.value))  # what scripts/drive.py prints


def test_drive_config_builds_its_objects(compose, tmp_path):
    from bc.drive.listener import Listener
    from bc.drive.server import DriveServer

    cfg = compose("drive", ["port=0", "set_speed=12", f"image_folder={tmp_path / 'run'}",
                            "max_message_bytes=5000"])
    listener = instantiate(cfg.listener)
    assert isinstance(listener, Listener) and listener.idle_timeout_s == 60
    limits = listener.limits(5000)  # max_request_bytes: null -> 4 x max_message_bytes
    assert (limits.max_request_bytes, limits.request_timeout_s) == (20000, 10)
    explicit = instantiate(compose("drive", ["max_request_bytes=7"]).listener)
    assert explicit.limits(5000).max_request_bytes == 7
    controller = instantiate(cfg.controller)
    assert controller.set_speed == 12.0
    recorder = instantiate(cfg.frames)
    assert recorder.folder == tmp_path / "run" and not recorder.folder.exists()  # not yet made
    server = instantiate(cfg.server)(predictor=None, controller=controller, recorder=recorder)
    assert isinstance(server, DriveServer) and server.max_message_bytes == 5000
    with pytest.raises(ConfigError, match="max_message_bytes: expected an integer >= 1"):
        instantiate(compose("drive", ["max_message_bytes=0"]).server)(predictor=None,
                                                                      controller=controller)
