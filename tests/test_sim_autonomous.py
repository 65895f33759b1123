"""Autonomous mode against real python-socketio 4.6.1 / engineio 3.13.2 servers on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import re
import time

import cv2
import numpy as np
import pytest
from hydra.utils import instantiate
from sim_servers import DriveServerStub, steer

from bc.errors import ConfigError
from bc.evaluation.autonomous import AutonomousDrive
from bc.sim.unity_client import AutonomousError, UnityClient
from bc.sim.car import MPS_PER_MPH
from bc.sim.expert import Expert
from bc.evaluation.expert import expert_drive
from bc.evaluation.metrics import DriveResult, lap_time_s
from bc.sim.track import load_track
from bc.core.udacity import MAX_STEERING_DEG

FAST_TIMEOUT_S = 0.5


def drive(track, frames_callback=None, **settings) -> DriveResult:
    """One closed-loop drive with these AutonomousDrive settings (lockstep unless asked)."""
    settings.setdefault("realtime", False)
    return AutonomousDrive(**settings).drive(track, frames_callback=frames_callback)


@pytest.fixture(scope="module")
def server():
    with DriveServerStub() as stub:
        yield stub


@pytest.fixture
def fresh(server):
    """The module's server with an empty telemetry log and the default 0/0 answer."""
    server.telemetry.clear()
    server.handler = lambda data: [steer(0.0, 0.0)]
    return server


@pytest.fixture(scope="module")
def lake():
    return load_track("lake")


@pytest.fixture(scope="module")
def mountain():
    return load_track("mountain")


def decode(image_b64: str) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(base64.b64decode(image_b64), np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def test_expert_server_completes_a_lap_without_interventions(fresh, lake):
    """The server answers each telemetry with the expert's action for the car's current state."""
    expert = Expert(lake, speed_mph=25)
    shared: dict = {}
    sent_frames: dict[int, np.ndarray] = {}
    replies: list[tuple[float, float]] = []

    def on_frame(index, rgb, state):
        shared["state"] = state
        if index in (0, 200):
            sent_frames[index] = rgb

    def answer(data):
        steering, throttle = expert.act(shared["state"])
        replies.append((steering, throttle))
        return [steer(steering, throttle)]

    fresh.handler = answer
    result = drive(lake, laps=1, port=fresh.port, frames_callback=on_frame, reply_timeout_s=5)

    assert result.stop_reason == "laps"
    assert len(result.intervention_steps) == 0
    assert result.s[-1] >= lake.length
    assert np.abs(result.cte).max() < lake.width / 2
    # lockstep, one chain: one telemetry per reply, one physics step per telemetry
    assert result.frames == len(fresh.telemetry) == result.steps == len(replies)
    assert result.greetings == 1 and result.manual_replies == 0
    for i, data in enumerate(fresh.telemetry):
        assert sorted(data) == ["image", "speed", "steering_angle", "throttle"]
        assert all(isinstance(v, str) for v in data.values())
        # the car reports the steering it executes, in degrees, like Unity's N4 format
        previous = replies[i - 1][0] if i else 0.0
        expected = f"{np.clip(previous, -1, 1) * MAX_STEERING_DEG:.4f}".replace("-0.0000", "0.0000")
        assert data["steering_angle"] == expected
        assert 0.0 <= float(data["throttle"]) <= 1.0
    assert float(fresh.telemetry[-1]["speed"]) == pytest.approx(result.speed_mph[-2], abs=1e-4)
    # the image is the center camera as RGB JPEG (a BGR mix-up would differ grossly)
    for index, rgb in sent_frames.items():
        received = decode(fresh.telemetry[index]["image"])
        assert received.shape == (160, 320, 3)
        assert np.abs(received.astype(int) - rgb).mean() < 4
        error = np.abs(received.astype(int) - rgb).mean()
        assert np.abs(received[:, :, ::-1].astype(int) - rgb).mean() > 2 * error
    print(f"\nexpert server: {result.steps} steps in {result.wall_s:.2f} s = "
          f"{result.steps / result.wall_s:.0f} steps/s")


def test_expert_answering_over_socketio_drives_the_reference_lap(fresh, lake):
    """The client loop and the expert's reference drive step the same DrivingEnv: the expert
    answering in lockstep laps in exactly the reference lap time (pace 100 %)."""
    expert = Expert(lake)  # its own pace, on the default car
    shared: dict = {}
    fresh.handler = lambda data: [steer(*expert.act(shared["state"]))]
    autonomous = AutonomousDrive(laps=1, port=fresh.port, realtime=False, reply_timeout_s=5)
    result = autonomous.drive(
        lake, frames_callback=lambda index, rgb, state: shared.update(state=state))
    assert result.stop_reason == "laps" and len(result.intervention_steps) == 0
    assert autonomous.expert_lap_time(result) == pytest.approx(lap_time_s(result), abs=1e-9)


def test_zero_steering_records_interventions(fresh, mountain):
    fresh.handler = lambda data: [steer(0.0, 0.5)]
    result = drive(mountain, laps=0.5, port=fresh.port, max_steps=450, reply_timeout_s=5)
    steps = result.intervention_steps
    assert len(steps) >= 2
    half = mountain.width / 2
    assert np.all(np.abs(result.cte[steps]) > half)  # counted when the centre left the road
    after = steps[steps + 1 < result.steps] + 1
    assert np.all(np.abs(result.cte[after]) < 1.0)  # put back near the centreline
    for step in steps:  # reset heading along the track
        here = mountain.locate(result.x[step], result.y[step])
        assert abs(np.angle(np.exp(1j * (result.yaw[step] - here.heading)))) < 0.05
        assert abs(here.cte) < 0.3
    assert result.s[-1] > 0.25 * mountain.length  # progress still counts after resets


@pytest.mark.parametrize(
    "reply, message",
    [
        (("steer", {"steering_angle": 0.1, "throttle": "0.2"}),
         r"'steering_angle' is a JSON float \(0\.1\); the Unity simulator expects a JSON string"),
        (("steer", {"steering_angle": "0.1", "throttle": 1}), r"'throttle' is a JSON int"),
        (("steer", {"steering_angle": "0.1"}), r"telemetry 0 has no 'throttle' field"),
        (("steer", {"steering_angle": "left", "throttle": "0.2"}),
         r"'steering_angle' = 'left' is not a finite number"),
        (("steer", {"steering_angle": "nan", "throttle": "0.2"}), r"'nan' is not a finite number"),
        (("steer", "0.1"), r"drops events whose second item is not an object"),
    ],
)
def test_bad_replies_are_clear_errors(fresh, lake, reply, message):
    fresh.handler = lambda data: [reply]
    with pytest.raises(AutonomousError, match=message):
        drive(lake, laps=0.1, port=fresh.port, reply_timeout_s=2)
    assert len(fresh.telemetry) == 1


def test_no_reply_is_a_timeout_error(fresh, lake):
    fresh.handler = lambda data: [steer(0.0, 0.3)] if len(fresh.telemetry) <= 3 else []
    started = time.monotonic()
    with pytest.raises(AutonomousError, match=r"did not answer telemetry 3 within 0.5 s"):
        drive(lake, laps=0.1, port=fresh.port, reply_timeout_s=FAST_TIMEOUT_S)
    assert time.monotonic() - started < 5


def test_manual_replies_resend_telemetry(fresh, lake):
    def answer(data):
        return [("manual", {})] if len(fresh.telemetry) <= 3 else [steer(0.0, 0.4)]

    fresh.handler = answer
    result = drive(lake, laps=0.1, port=fresh.port, max_steps=10, reply_timeout_s=5)
    assert result.manual_replies == 3
    assert result.steps == 10 and result.frames == 13 == len(fresh.telemetry)
    assert fresh.telemetry[0] == fresh.telemetry[1] == fresh.telemetry[2] == fresh.telemetry[3]
    # the car moves off (the first command acts one step late: the actuation delay)
    assert fresh.telemetry[5]["image"] != fresh.telemetry[3]["image"]


def test_endless_manual_is_an_error(fresh, lake):
    fresh.handler = lambda data: [("manual", {})]
    with pytest.raises(AutonomousError, match=r"'manual' to 6 telemetry messages in a row"):
        drive(lake, laps=0.1, port=fresh.port, max_manual_in_a_row=5, reply_timeout_s=5)


def test_other_events_are_ignored_like_unity(fresh, lake):
    fresh.handler = lambda data: [("log", {"message": "hi"}), steer(0.1, 0.5)]
    result = drive(lake, laps=0.1, port=fresh.port, max_steps=5, reply_timeout_s=5)
    assert result.steps == 5 and np.all(result.steering == 0.1)


def test_controls_are_clamped(fresh, lake):
    fresh.handler = lambda data: [steer(3.0, 7.0)]
    result = drive(lake, laps=0.1, port=fresh.port, max_steps=3, reply_timeout_s=5)
    assert np.all(result.steering == 1.0) and np.all(result.throttle == 1.0)
    assert fresh.telemetry[-1]["steering_angle"] == "25.0000"


@pytest.mark.parametrize("greeting, always_connect", [(True, False), (True, True), (False, False)])
def test_one_request_chain_whatever_the_greeting(lake, greeting, always_connect):
    """The connect greeting (`steer` before any telemetry) is absorbed, never a second chain."""
    with DriveServerStub(greeting=greeting, always_connect=always_connect) as stub:
        count = iter(range(1, 1000))
        stub.handler = lambda data: [steer(0.01 * next(count), 0.5)]
        result = drive(lake, laps=0.1, port=stub.port, max_steps=20, reply_timeout_s=5)
        time.sleep(0.2)  # a second chain would show up as extra telemetry here
        assert result.greetings == int(greeting)
        assert len(stub.telemetry) == result.frames == 20
        # reply k is applied at step k (no off-by-one from a swallowed or extra reply)
        assert np.allclose(result.steering, 0.01 * np.arange(1, 21))


def test_client_pings_while_waiting(lake):
    with DriveServerStub(ping_interval=0.2) as stub:
        marks = {}

        def slow(data):
            import eventlet

            marks["connected"] = stub.last_client_ping()
            eventlet.sleep(0.7)  # longer than pingInterval: the client must keep pinging
            marks["later"] = stub.last_client_ping()
            return [steer(0.0, 0.5)]

        stub.handler = slow
        client = UnityClient("127.0.0.1", stub.port, reply_timeout_s=5).connect()
        assert client.ping_interval_s == pytest.approx(0.2)
        reply = client.exchange('42["telemetry",{}]', 0)
        client.close()
        assert reply.event == "steer"
        assert marks["later"] - marks["connected"] >= 0.3


def test_realtime_latency_costs_simulated_time(fresh, lake):
    def slow(data):
        import eventlet

        eventlet.sleep(0.25)
        return [steer(0.1 * len(fresh.telemetry), 1.0)]

    fresh.handler = slow
    result = drive(lake, laps=0.5, port=fresh.port, realtime=True, max_steps=12, reply_timeout_s=5)
    assert result.realtime
    assert result.frames <= 4  # ~4 steps of 1/15 s pass per 0.25 s round trip
    assert result.steps == 12
    assert result.t[-1] == pytest.approx(12 / 15)
    # while the server thought (>= 3 steps of 1/15 s) the car kept its previous controls
    first_new = int(np.flatnonzero(result.steering)[0])
    assert first_new >= 2 and result.steering[first_new] == pytest.approx(0.1)
    assert np.count_nonzero(np.diff(result.steering)) <= result.frames
    fresh.telemetry.clear()
    fresh.handler = lambda data: [steer(0.0, 1.0)]
    lockstep = drive(lake, laps=0.5, port=fresh.port, max_steps=12, reply_timeout_s=5)
    assert lockstep.frames == lockstep.steps == 12


def test_no_server_is_a_clear_error(lake):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(AutonomousError,
                       match=rf"no drive server at ws://127.0.0.1:{port}/socket.io/"):
        drive(lake, laps=0.1, port=port, reply_timeout_s=1)


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """One real MLflow store for the module's runs (creating its tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlruns')}/mlflow.db"


def test_configured_run_writes_metrics_pictures_video_and_logs_to_mlflow(fresh, tmp_path,
                                                                         monkeypatch, capsys,
                                                                         compose, mlflow_uri):
    from bc.tracking import client, get_or_create_experiment

    monkeypatch.chdir(tmp_path)
    uri = mlflow_uri
    run_id = client(uri).create_run(get_or_create_experiment("bc-eval-test", uri)).info.run_id
    fresh.handler = lambda data: [steer(0.02, 0.6)]
    cfg = compose("simulate", [
        "mode=autonomous", "track=lake", "laps=1", f"port={fresh.port}",
        "autonomous.max_steps=45", "autonomous.video=true",
        f"autonomous.out={tmp_path / 'eval'}", f"autonomous.run_id={run_id}",
        f"autonomous.tracking_uri={uri}", "autonomous.progress=false",
    ])
    metrics = instantiate(cfg.autonomous).run(load_track(cfg.track))
    printed = capsys.readouterr().out
    assert "autonomy (%)" in printed and "interventions" in printed
    out = tmp_path / "eval"
    assert json.loads((out / "metrics.json").read_text())["steps"] == metrics["steps"] == 45
    assert (out / "trajectory.png").stat().st_size > 10_000
    import imageio.v2 as imageio

    with imageio.get_reader(out / "center.mp4") as reader:
        assert reader.count_frames() == 45
    logged = client(uri).get_run(run_id).data.metrics
    assert logged["system/eval/lake/steps"] == 45 and "eval/lake/steps" not in logged
    assert logged["eval/lake/autonomy"] == pytest.approx(metrics["autonomy"])
    artifacts = {a.path for a in client(uri).list_artifacts(run_id, "eval/lake")}
    expected = {f"eval/lake/{name}" for name in ("metrics.json", "trajectory.png", "center.mp4")}
    assert expected <= artifacts
    assert metrics["lap_time_s"] is None and metrics["pace_pct"] is None  # no whole lap yet
    assert "eval/lake/pace_pct" not in logged


RING_RADIUS_M = 30.0


def test_evaluation_reports_lap_time_and_pace_vs_the_expert(fresh, tmp_path, capsys, mlflow_uri):
    """A slow driver (constant left steering, 18 mph by the telemetry's speed) laps a ring;
    the report puts its lap time beside the expert's on the same track and car."""
    from bc.tracking import client, get_or_create_experiment

    angles = np.linspace(0.0, 2 * np.pi, 17)[:-1]
    ring = tmp_path / "ring.yaml"
    ring.write_text(json.dumps({"name": "ring", "width": 10.0, "points": [
        [round(RING_RADIUS_M * np.cos(a), 3), round(RING_RADIUS_M * np.sin(a), 3)]
        for a in angles]}))
    uri = mlflow_uri
    run_id = client(uri).create_run(get_or_create_experiment("bc-pace", uri)).info.run_id
    fresh.handler = lambda data: [steer(-0.2, float(np.clip(
        0.5 * (8.0 - float(data["speed"]) * MPS_PER_MPH), -1, 1)))]
    metrics = AutonomousDrive(laps=1, port=fresh.port, realtime=False, reply_timeout_s=5,
                              out=str(tmp_path / "eval"), run_id=run_id,
                              tracking_uri=uri).run(str(ring))
    expert = lap_time_s(expert_drive(str(ring), 1.0))
    assert metrics["laps_completed"] == 1 and metrics["interventions"] == 0
    assert metrics["lap_time_s"] == pytest.approx(metrics["sim_time_s"])
    assert metrics["expert_lap_time_s"] == pytest.approx(expert)
    assert metrics["pace_pct"] == pytest.approx(100 * expert / metrics["lap_time_s"])
    assert metrics["pace_pct"] < 80  # 18 mph is well below what the expert holds here
    printed = capsys.readouterr().out
    assert re.search(rf"pace vs expert \(%\) +\| +{metrics['pace_pct']:.1f}\n", printed)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["pace_pct"] == metrics["pace_pct"] and saved["expert_lap_time_s"] == expert
    logged = client(uri).get_run(run_id).data.metrics
    for key in ("lap_time_s", "expert_lap_time_s", "pace_pct", "autonomy", "mean_abs_cte"):
        assert logged[f"eval/ring/{key}"] == pytest.approx(metrics[key])


def test_realtime_is_the_default_for_evaluation(compose):
    """As Unity runs it: the server's latency costs simulated time unless asked otherwise."""
    assert AutonomousDrive().realtime
    assert instantiate(compose("evaluate").autonomous).realtime
    assert instantiate(compose("simulate").autonomous).realtime


@pytest.mark.parametrize("setting, value", [("laps", 0), ("dt", 0.0), ("reply_timeout_s", -1.0),
                                            ("max_steps", 0), ("stall_timeout_s", float("nan")),
                                            ("max_steps", "x"), ("port", 70000),
                                            ("realtime", "yes")])
def test_bad_settings_are_config_errors_naming_the_field(setting, value):
    with pytest.raises(ConfigError, match=rf"^{setting}: expected"):
        AutonomousDrive(**{setting: value})
