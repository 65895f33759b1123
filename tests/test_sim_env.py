"""DrivingEnv: the Gymnasium API, and the one rule for progress, laps, off-road and
interventions that recording, autonomous mode, the expert reference and the benchmarks share."""

from __future__ import annotations

import math
import re
import warnings

import gymnasium
import numpy as np
import pytest
from conftest import REPO
from gymnasium.utils.env_checker import check_env

import bc.sim  # noqa: F401  (registers bc/Drive-v0)
from bc.errors import ConfigError
from bc.sim.env import OFF_ROAD_PENALTY_M, DrivingEnv
from bc.sim.expert import Expert
from bc.core.udacity import CAMERAS, FRAME_HEIGHT, FRAME_WIDTH, SAMPLE_PERIOD_S

INFO_KEYS = {"x", "y", "yaw", "speed", "cte", "progress", "off_road", "lap", "interventions"}


def test_gymnasium_make_passes_check_env():
    env = gymnasium.make("bc/Drive-v0", track="lake")
    assert env.unwrapped.dt == pytest.approx(SAMPLE_PERIOD_S)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)  # also builds it again for each render mode and closes it
    assert [str(w.message) for w in caught] == []
    frame, info = env.reset(seed=0)
    assert frame.shape == (FRAME_HEIGHT, FRAME_WIDTH, 3) and frame.dtype == np.uint8
    assert INFO_KEYS <= set(info)
    frame, reward, terminated, truncated, info = env.step(np.array([0.0, 1.0], np.float32))
    assert frame.shape == (FRAME_HEIGHT, FRAME_WIDTH, 3) and not (terminated or truncated)
    env.close()


def test_all_cameras_when_asked_and_the_state_observation():
    env = DrivingEnv("lake", cameras=CAMERAS)
    frame, info = env.reset()
    assert set(info["frames"]) == set(CAMERAS)
    assert np.array_equal(info["frames"]["center"], frame)
    assert not np.array_equal(info["frames"]["left"], info["frames"]["right"])
    state_env = DrivingEnv("lake", obs_type="state")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(state_env)
    assert [str(w.message) for w in caught if "spec" not in str(w.message)] == []
    vector, info = state_env.reset(options={"start_s": 30.0, "speed_mph": 10.0})
    assert vector.shape == (6,) and "frames" not in info
    assert vector[3] == pytest.approx(10 * 0.44704, rel=1e-6)  # speed, m/s
    assert info["s"] == pytest.approx(30.0, abs=0.01)


def _expert_lap(env: DrivingEnv) -> tuple[list[dict], float]:
    expert = Expert(env.track, car=env.car, dt=env.dt)
    env.reset()
    infos, total, terminated = [], 0.0, False
    while not terminated:
        _, reward, terminated, _, info = env.step(expert.act(env.state))
        infos.append(info)
        total += reward
    return infos, total


@pytest.mark.parametrize("reverse", [False, True])
def test_expert_lap_progress_laps_and_reward(reverse):
    env = DrivingEnv("lake", laps=1.0, reverse=reverse, obs_type="state")
    infos, total = _expert_lap(env)
    last = infos[-1]
    assert last["progress"] >= 1.0 and last["lap"] == 1 and last["interventions"] == 0
    assert infos[-2]["progress"] < 1.0 and infos[-2]["lap"] == 0  # it ends at the line
    assert total == pytest.approx(last["progress"] * env.track.length)  # metres of progress
    assert max(abs(info["cte"]) for info in infos) < env.track.width / 2
    assert last["time"] == pytest.approx(len(infos) * env.dt)
    assert last["distance"] == pytest.approx(env.track.length, rel=0.02)


def test_reverse_is_the_same_road_and_world_the_other_way():
    forward, backward = DrivingEnv("lake"), DrivingEnv("lake", reverse=True)
    forward.reset()
    frame, info = backward.reset()
    assert backward.track.length == pytest.approx(forward.track.length, rel=1e-3)
    assert (info["x"], info["y"]) == pytest.approx((forward.state.x, forward.state.y), abs=1e-6)
    assert math.cos(backward.state.yaw - forward.state.yaw) == pytest.approx(-1.0, abs=1e-3)
    assert backward.renderer is forward.renderer  # the same painted world, seen the other way
    assert np.array_equal(frame, forward.renderer.render(backward.state))
    # what is left of the road going one way is right of it going the other
    x, y, h = forward.track.pose_at(40.0)
    assert (backward.track.locate(x - math.sin(h), y + math.cos(h)).cte
            == pytest.approx(-forward.track.locate(x - math.sin(h), y + math.cos(h)).cte, abs=1e-2))


def test_leaving_the_road_intervenes_or_terminates():
    intervene = DrivingEnv("mountain", car="kinematic", obs_type="state", laps=None)
    intervene.reset(options={"speed_mph": 20.0})
    for _ in range(200):  # full right lock at speed: off the road within a few seconds
        _, reward, terminated, _, info = intervene.step([1.0, 0.3])
        if info["off_road"]:
            break
    assert info["off_road"] and info["interventions"] == 1 and not terminated
    assert abs(info["off_road_cte"]) > intervene.track.width / 2
    assert reward < -OFF_ROAD_PENALTY_M / 2
    here = intervene.track.locate(info["x"], info["y"])  # put back like a safety driver:
    assert abs(here.cte) < 0.05 and info["cte"] == 0.0  # on the centreline,
    assert math.cos(info["yaw"] - here.heading) > 0.999  # along the road,
    assert info["speed"] > 5.0  # keeping its speed
    terminate = DrivingEnv("mountain", car="kinematic", obs_type="state", laps=None,
                           off_road="terminate")
    terminate.reset(options={"speed_mph": 20.0})
    steps = 0
    while True:
        _, _, terminated, truncated, info = terminate.step([1.0, 0.3])
        steps += 1
        if terminated:
            break
    assert info["off_road"] and info["interventions"] == 0 and not truncated
    assert abs(info["cte"]) > terminate.track.width / 2  # left where it went off


def test_random_tracks_and_bad_options_name_the_field():
    assert DrivingEnv("random:3", obs_type="state").track.name == "random-3"
    with pytest.raises(ConfigError, match=r"^cameras: expected a subset of"):
        DrivingEnv("lake", cameras=("roof",))
    with pytest.raises(ConfigError, match=r"^off_road: expected one of"):
        DrivingEnv("lake", off_road="bounce")
    with pytest.raises(ConfigError, match=r"^car: expected one of"):
        DrivingEnv("lake", car="hovercraft")


def test_one_off_road_rule_in_the_code():
    """Recording, autonomous mode, the expert reference and the benchmarks loop over the env:
    no other module compares a cross-track error with the road's half width."""
    rule = re.compile(r"abs\([^)]*cte[^)]*\)\s*>")  # abs(cte) > half width, abs(here.cte) > ...
    found = {path.relative_to(REPO).as_posix()
             for path in (REPO / "bc").rglob("*.py") if rule.search(path.read_text())}
    assert found == {"bc/sim/env.py"}
