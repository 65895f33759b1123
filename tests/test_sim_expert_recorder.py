"""Expert driver laps every shipped track without leaving the road; DART noise perturbs the
executed action only; recordings are exactly the Unity format, append without name clashes
and survive being killed mid-recording."""

from __future__ import annotations

import csv
import math
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO

from bc.sim.car import GRAVITY_MPS2, MPS_PER_MPH, CarState, make_car
from bc.sim.expert import PACE, ActionNoise, Expert
from bc.evaluation.recorder import Recorder, parse_stamp
from bc.sim.track import load_track, random_track, shipped_tracks
from bc.core.udacity import (CAMERAS, LOG_NAME, SAMPLE_PERIOD_S, TOP_SPEED_MPH,
                        camera_image_name)

NAME = re.compile(r"^(center|left|right)_\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}_\d{3}\.jpg$")


def _lap(track, noise: ActionNoise | None = None, laps: float = 1.0, car: str = "dynamic",
         start_s: float = 0.0, **expert_settings):
    """Drive the expert (no rendering) from a standstill; returns |cte| per step (m), speeds
    (mph) and the steps the laps took."""
    car_model = make_car(car)
    expert = Expert(track, car=car_model, **expert_settings)
    x, y, h = track.pose_at(start_s)
    state = CarState(x, y, h, 0.0)
    travelled, prev_s, ctes, speeds = 0.0, start_s, [], []
    while travelled < laps * track.length and len(ctes) < 5000:
        here = track.locate(state.x, state.y)
        steering, throttle = expert.act(state)
        if noise is not None:
            steering, throttle = noise(steering, throttle, here.cte, track.width / 2,
                                       expert.feedforward(here.s))
        state = car_model.step(state, steering, throttle)
        now = track.locate(state.x, state.y)
        travelled += (now.s - prev_s + track.length / 2) % track.length - track.length / 2
        prev_s = now.s
        ctes.append(abs(now.cte))
        speeds.append(state.speed_mph)
    return np.array(ctes), np.array(speeds), len(ctes)


def _check_expert_lap(track) -> None:
    ctes, speeds, steps = _lap(track)
    assert steps < 5000, "the lap did not finish"
    assert ctes.max() < 0.4 * track.width / 2, f"near the edge: max |cte| {ctes.max():.2f} m"
    assert speeds.max() <= TOP_SPEED_MPH + 1e-9 and np.median(speeds) > 25  # at pace


@pytest.mark.parametrize("name", shipped_tracks() + ["random:0", "random:1", "random:2"])
def test_expert_laps_every_shipped_and_some_random_tracks_at_pace(name):
    """The dynamic car at the expert's own pace keeps well inside the road: 100 % autonomy."""
    _check_expert_lap(load_track(name) if ":" not in name else random_track(int(name[7:])))


@pytest.mark.slow
def test_expert_laps_twenty_random_tracks_at_pace():
    for seed in range(20):
        _check_expert_lap(random_track(seed))


def test_expert_plans_its_speed_from_curvature_and_friction():
    track = load_track("mountain")
    expert = Expert(track)
    apex = int(np.argmax(np.abs(track.curvature)))
    grip = PACE * expert.car.friction * GRAVITY_MPS2
    bend_limit = math.sqrt(grip * abs(1 / track.curvature[apex]))
    assert expert.target_speed(track.s[apex]) == pytest.approx(bend_limit, rel=0.05)
    # it brakes before the bend: the plan falls no faster than the grip allows
    before = np.array([expert.target_speed(track.s[apex] - d) for d in np.arange(0, 40, 0.25)])
    assert before[-1] > before[0] and np.all(np.diff(before ** 2) / 2 / 0.25 <= grip + 1e-6)
    # faster at a higher pace, slower with a speed cap, and the cap holds
    times = {}
    for label, settings in {"pace": {}, "slow": {"pace": 0.6}, "cap": {"speed_mph": 20}}.items():
        ctes, speeds, steps = _lap(track, laps=0.4, start_s=track.s[apex] - 100, **settings)
        times[label] = steps * SAMPLE_PERIOD_S
        assert ctes.max() < track.width / 2
    assert 19.5 < max(speeds) <= 20.3
    assert times["pace"] < times["slow"] < times["cap"]
    with pytest.raises(ValueError, match="pace"):
        Expert(track, pace=1.5)


def test_thirty_mph_into_mountains_tightest_bend_leaves_the_road_the_expert_does_not():
    """A driver holding a fixed 30 mph set speed (the expert's steering, a speed controller)
    slides off the tightest bend of `mountain`; the expert at its own pace stays on; the
    old kinematic car took the bend at 30 mph (2 g) and stayed on."""
    track = load_track("mountain")
    apex = float(track.s[int(np.argmax(np.abs(track.curvature)))])
    x, y, h = track.pose_at(apex - 60.0)
    worst = {}
    for label, car_name in [("set speed", "dynamic"), ("expert", "dynamic"),
                            ("kinematic", "kinematic")]:
        car = make_car(car_name)
        expert = Expert(track, car=car)
        start = TOP_SPEED_MPH * MPS_PER_MPH if label != "expert" else expert.target_speed(apex - 60)
        state, ctes = CarState(x, y, h, start), []
        for _ in range(8 * 15):
            if label == "expert":
                action = expert.act(state)
            else:
                ahead = expert.predict(state)
                steering = expert.steering(ahead, track.locate(ahead.x, ahead.y).s)
                action = (steering, 0.5 * (TOP_SPEED_MPH * MPS_PER_MPH - state.speed))
            state = car.step(state, *action)
            ctes.append(abs(track.locate(state.x, state.y).cte))
        worst[label] = max(ctes) / (track.width / 2)
    assert worst["set speed"] > 1.0, worst
    assert worst["expert"] < 0.5 and worst["kinematic"] < 0.5, worst


def test_expert_steers_back_towards_the_centreline():
    track = load_track("lake")
    expert = Expert(track, speed_mph=20)
    x, y, h = track.pose_at(20.0)  # a straight
    left_of_centre = CarState(x - math.sin(h) * 2, y + math.cos(h) * 2, h, 8.0)
    right_of_centre = CarState(x + math.sin(h) * 2, y - math.cos(h) * 2, h, 8.0)
    assert expert.act(left_of_centre)[0] > 0.05  # positive = steer right
    assert expert.act(right_of_centre)[0] < -0.05
    assert expert.act(CarState(x, y, h, 0.0))[1] > 0.5  # standing: accelerate
    assert expert.act(CarState(x, y, h, 13.0))[1] < 0  # far above 20 mph: brake


def test_action_noise_is_correlated_and_only_perturbs():
    clean = ActionNoise(False, False, seed=0)
    assert all(clean(0.1, 0.4) == (0.1, 0.4) for _ in range(50))
    settings = {"steering_std": 0.1, "throttle_std": 0.0, "correlation_s": 0.5}
    noise = ActionNoise(settings, False, seed=3)
    steer = np.array([noise(0.0, 0.3)[0] for _ in range(3000)])
    assert 0.06 < steer.std() < 0.14
    assert np.corrcoef(steer[:-1], steer[1:])[0, 1] > 0.8  # temporally correlated, not white
    again = ActionNoise(settings, False, seed=3)
    assert np.allclose(steer[:100], [again(0.0, 0.3)[0] for _ in range(100)])
    with pytest.raises(ValueError, match="unknown keys"):
        ActionNoise({"steer_std": 0.1})


@pytest.mark.parametrize("name", ["lake", "mountain"])
def test_recovery_drifts_off_centre_and_the_expert_recovers_at_pace(name):
    track = load_track(name)
    recovery = {"every_s": 4.0, "drift_s": 2.0, "steering": 0.12, "max_offset": 0.7}
    noise = ActionNoise(None, recovery, seed=1)
    ctes, _, _ = _lap(track, noise)
    assert ctes.max() > 0.5 * track.width / 2  # it really leaves the centre
    assert ctes.max() < track.width / 2  # but never the road, even at the limit of grip
    assert np.median(ctes) < 1.0  # and gets back


def _rows(log: Path) -> list[list[str]]:
    with open(log, newline="") as fh:
        return list(csv.reader(fh))


def _check_unity_rows(rows: list[list[str]], folder: Path) -> None:
    for row in rows:
        assert len(row) == 7
        for cell, camera in zip(row[:3], ("center", "left", "right")):
            path = Path(cell)
            assert path.is_absolute() and path.parent == folder.resolve() / "IMG"
            assert NAME.match(path.name) and path.name.startswith(camera + "_")
            assert path.is_file()
        assert Path(row[0]).name[len("center"):] == Path(row[1]).name[len("left"):]
        steering, throttle, brake, speed = map(float, row[3:])
        assert -1 <= steering <= 1 and 0 <= throttle <= 1 and 0 <= brake <= 1 and 0 <= speed <= 30
        assert throttle == 0 or brake == 0


def test_recording_is_unity_format_and_appends(tmp_path):
    track = load_track("lake")
    folder = tmp_path / "rec"
    log = Recorder(max_rows=30, seed=0, progress=False).record(track, folder)
    assert log == folder.resolve() / LOG_NAME
    first = _rows(log)
    assert len(first) == 30
    assert not first[0][0].lower().startswith("center")  # no header
    _check_unity_rows(first, folder)
    frame = cv2.imread(first[-1][0], cv2.IMREAD_COLOR)
    assert frame.shape == (160, 320, 3)
    assert float(first[-1][6]) > float(first[0][6])  # it drives off
    stamps = [parse_stamp(r[0]) for r in first]
    gaps = np.diff([s.timestamp() for s in stamps])
    assert np.allclose(gaps, 1 / 15, atol=0.0015)  # the simulated 15 Hz clock

    Recorder(max_rows=20, seed=1, progress=False).record(track, folder)  # appends
    rows = _rows(log)
    assert len(rows) == 50 and rows[:30] == first
    _check_unity_rows(rows, folder)
    names = [Path(c).name for r in rows for c in r[:3]]
    assert len(set(names)) == len(names) == len(list((folder / "IMG").glob("*.jpg")))
    assert parse_stamp(rows[30][0]) > parse_stamp(rows[29][0])

    from bc.data.log import read_driving_log  # the loader training uses

    frame = read_driving_log(folder)
    assert len(frame) == 50
    assert frame["steering"].tolist() == pytest.approx([float(r[3]) for r in rows])
    assert all(Path(p).is_file() for p in frame["center"])


def test_recording_drives_the_env_reversed_with_the_chosen_car(tmp_path):
    """Recording loops over the DrivingEnv: `reverse` records the road the other way round
    (the same world), `car` picks the model, `speed_mph=None` the expert's own pace."""
    from bc.sim.env import DrivingEnv

    log = Recorder(max_rows=3, seed=0, progress=False, reverse=True, car="kinematic",
                   speed_mph=None).record("lake", tmp_path / "reverse")
    first = cv2.cvtColor(cv2.imread(_rows(log)[0][0], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    backward, _ = DrivingEnv("lake", reverse=True).reset()
    forward, _ = DrivingEnv("lake").reset()
    error = np.abs(first.astype(int) - backward).mean()
    assert error < 4 and np.abs(first.astype(int) - forward).mean() > 4 * error


def test_appending_continues_after_a_later_clock(tmp_path):
    """An existing log stamped in the future (another machine's clock) must not collide."""
    folder = tmp_path / "rec"
    (folder / "IMG").mkdir(parents=True)
    future = datetime.now() + timedelta(hours=1)
    old = [str(folder / "IMG" / camera_image_name(camera, future)) for camera in CAMERAS]
    (folder / LOG_NAME).write_text(",".join(old + ["0", "0", "0", "0"]))  # no final newline either
    log = Recorder(max_rows=5, seed=0, progress=False).record(load_track("lake"), folder)
    rows = _rows(log)
    assert len(rows) == 6 and rows[0] == old + ["0", "0", "0", "0"]
    assert all(parse_stamp(r[0]) > future for r in rows[1:])


def test_labels_are_the_clean_action_not_the_executed_one(tmp_path):
    """With noise the car wanders, but the logged steering is what the expert would do."""
    track = load_track("lake")
    recorder = Recorder(max_rows=60, seed=2, progress=False, recovery=False,
                        noise={"steering_std": 0.3, "throttle_std": 0.0, "correlation_s": 0.1})
    noisy = recorder.record(track, tmp_path / "noisy")
    steering = np.array([float(r[3]) for r in _rows(noisy)])
    # executed noise of 0.3 std would make the labels jump; the expert's labels are smooth
    assert np.abs(np.diff(steering)).max() < 0.1
    assert steering.std() > 0.005  # yet they react to the wandering


def test_killed_recording_leaves_a_valid_log(tmp_path):
    folder = tmp_path / "killed"
    code = ("from bc.evaluation.recorder import Recorder; from bc.sim.track import load_track; "
            f"Recorder(max_rows=100000, progress=False).record(load_track('lake'), "
            f"{str(folder)!r})")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path)
    log = folder / LOG_NAME
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if log.is_file() and len(log.read_bytes().splitlines()) >= 8:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the recorder wrote no rows within 60 s")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    text = log.read_text()
    assert text.endswith("\n")  # no half row
    rows = _rows(log)
    assert len(rows) >= 8
    _check_unity_rows(rows, folder)
    for row in rows:
        for cell in row[:3]:
            assert cv2.imread(cell) is not None  # every referenced JPEG is complete


SIMULATE = str(REPO / "scripts" / "simulate.py")
QUIET = {**os.environ, "PYTHONWARNINGS": "ignore"}


def simulate(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SIMULATE, *overrides], cwd=cwd, env=QUIET,
                          capture_output=True, text=True, timeout=120)


def test_simulate_script_records_and_reports_bad_tracks(tmp_path):
    ok = simulate(tmp_path, "mode=record", "track=mountain", "max_rows=6",
                  f"out={tmp_path / 'mountain'}", "seed=3", "progress=false")
    assert ok.returncode == 0, ok.stderr
    assert len(_rows(tmp_path / "mountain" / LOG_NAME)) == 6
    assert (tmp_path / "outputs" / "simulate" / "record").is_dir()  # hydra's folder, not cwd
    bad = tmp_path / "bad.yaml"
    bad.write_text("width: 8\npoints: [[0, 0], [1, 1], [2, 0]]\n")
    err = simulate(tmp_path, f"track={bad}", f"out={tmp_path / 'x'}")
    assert err.returncode == 2
    assert str(bad) in err.stderr and "at least 4 points" in err.stderr
    mode = simulate(tmp_path, "mode=fly")
    assert mode.returncode == 2 and "mode: expected one of" in mode.stderr


@pytest.mark.parametrize("overrides, message", [
    (["dt=0"], "simulate.py: error: dt: expected a simulation step > 0 s, got 0"),
    (["max_rows=-5"], "simulate.py: error: max_rows: expected a number of samples >= 1"),
    (["laps=abc"], "simulate.py: error: laps: Value 'abc' of type 'str' could not be converted "
                   "to Float (override laps=abc)"),  # the schema (bc/core/configs.py)
    (["mode=autonomous", "dt=0"], "simulate.py: error: dt: expected > 0, got 0"),
    (["car=hovercraft"], "simulate.py: error: car: expected one of ['dynamic', 'kinematic']"),
])
def test_bad_settings_are_one_line_errors_before_anything_is_written(tmp_path, overrides,
                                                                     message):
    out = tmp_path / "rec"
    done = simulate(tmp_path, *overrides, f"out={out}", "progress=false")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr
    assert not out.exists()


def test_ctrl_c_stops_a_recording_with_one_line_and_a_valid_log(tmp_path):
    folder = tmp_path / "rec"
    proc = subprocess.Popen([sys.executable, SIMULATE, "max_rows=100000", f"out={folder}",
                             "progress=false"], cwd=tmp_path, env=QUIET,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = folder / LOG_NAME
    deadline = time.monotonic() + 60
    try:
        while not (log.is_file() and len(log.read_bytes().splitlines()) >= 5):
            assert time.monotonic() < deadline, "the recorder wrote no rows within 60 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert stderr == "simulate.py: interrupted\n"
    rows = _rows(log)
    assert log.read_text().endswith("\n") and len(rows) >= 5
    _check_unity_rows(rows, folder)
    for row in rows:
        for cell in row[:3]:
            assert cv2.imread(cell) is not None
