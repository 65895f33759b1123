"""The dynamic car has limits: its tyres never give more than the road's friction, a bend
entered at top speed throws it off the road on the outside (the kinematic car makes it), at
walking speed it drives the kinematic path, the steering is rate limited and acts one
control step late, and every parameter is a named constant with its unit."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

import bc.sim.car as car_module
from bc.errors import ConfigError
from bc.sim.car import (GRAVITY_MPS2, LOCK_TO_LOCK_S, ROAD_FRICTION, TOP_SPEED_MPS, Car,
                        CarState, DynamicCar, angle_to_steering, make_car)
from bc.sim.track import load_track, shipped_tracks
from bc.core.udacity import SAMPLE_PERIOD_S

DT = SAMPLE_PERIOD_S
UNIT_SUFFIXES = ("_M", "_MPS", "_MPS2", "_PER_S", "_S", "_KG", "_KGM2", "_PER_RAD", "_STEPS")
DIMENSIONLESS = {"ROAD_FRICTION", "TYRE_SHAPE_C", "SUBSTEPS", "DYNAMIC_SUBSTEPS"}


def _world_velocity(state: CarState) -> np.ndarray:
    forward = math.sqrt(max(0.0, state.speed ** 2 - state.lateral_speed ** 2))
    c, s = math.cos(state.yaw), math.sin(state.yaw)
    return np.array([forward * c - state.lateral_speed * s, forward * s + state.lateral_speed * c])


def _accelerations(states: list[CarState]) -> tuple[np.ndarray, np.ndarray]:
    """(total, lateral) horizontal acceleration (m/s^2) between consecutive states."""
    velocity = np.array([_world_velocity(s) for s in states])
    accel = np.diff(velocity, axis=0) / DT
    mid = 0.5 * (velocity[1:] + velocity[:-1])
    heading = mid / np.maximum(np.linalg.norm(mid, axis=1, keepdims=True), 1e-9)
    lateral = np.abs(accel[:, 0] * heading[:, 1] - accel[:, 1] * heading[:, 0])
    return np.linalg.norm(accel, axis=1), lateral


def _hold_speed(speed: float, state: CarState) -> float:
    return float(np.clip(2.0 * (speed - state.speed), -1.0, 1.0))


def test_every_parameter_is_a_named_constant_with_its_unit():
    constants = {name: value for name, value in vars(car_module).items() if name.isupper()}
    for model in (Car, DynamicCar):
        for parameter in inspect.signature(model).parameters.values():
            if parameter.default in (inspect.Parameter.empty, 0):  # **chassis; 0 = off
                continue
            names = [name for name, value in constants.items()
                     if type(value) is type(parameter.default) and value == parameter.default]
            assert names, f"{model.__name__}({parameter.name}=...) is not a named constant"
            assert any(n.endswith(UNIT_SUFFIXES) or n in DIMENSIONLESS for n in names), \
                f"{parameter.name}: {names} name no unit"
    assert DynamicCar().max_lateral_accel == pytest.approx(0.9 * GRAVITY_MPS2, rel=0.01)


@pytest.mark.parametrize("steering", [0.25, 0.5, 1.0])
def test_steady_cornering_never_exceeds_friction(steering):
    car = DynamicCar()
    limit = car.friction * GRAVITY_MPS2
    steady = []
    for speed in (6.0, 9.0, 12.0, TOP_SPEED_MPS):
        states = [CarState(speed=speed)]
        for _ in range(90):  # 6 s of steady cornering at a held speed
            states.append(car.step(states[-1], steering, _hold_speed(speed, states[-1])))
        total, lateral = _accelerations(states)
        assert total.max() <= limit * 1.03, (speed, total.max() / GRAVITY_MPS2)
        steady.append(lateral[-30:].mean())
    # and the limit is really reached: ~0.9 g when the wheels are turned far enough
    assert max(steady) > (0.8 if steering >= 0.5 else 0.55) * limit


def test_random_driving_never_exceeds_friction():
    car, rng = DynamicCar(), np.random.default_rng(0)
    states = [CarState(speed=TOP_SPEED_MPS)]
    steering = 0.0
    for step in range(1500):
        if step % 8 == 0:
            steering = rng.uniform(-1, 1)
        states.append(car.step(states[-1], steering, rng.uniform(-1, 1)))
    assert all(math.isfinite(s.x + s.y + s.speed + s.yaw_rate) for s in states)
    total, _ = _accelerations(states)
    drag = car.drag * TOP_SPEED_MPS  # air drag is not the tyres' doing
    assert total.max() <= car.friction * GRAVITY_MPS2 * 1.03 + drag


def _tightest_bend() -> tuple[object, float]:
    tracks = [load_track(name) for name in shipped_tracks()]
    track = max(tracks, key=lambda t: np.abs(t.curvature).max())
    return track, float(track.s[int(np.argmax(np.abs(track.curvature)))])


def _chase(track, state: CarState) -> float:
    """A driver that steers hard (up to full lock) back onto the centreline and its heading."""
    here = track.locate(state.x, state.y)
    error = here.heading - state.yaw
    heading_error = math.atan2(math.sin(error), math.cos(error))
    towards_centre = math.atan(-2.0 * here.cte / max(state.speed, 1.0))
    return angle_to_steering(3.0 * (heading_error + towards_centre))


def test_the_tightest_bend_at_top_speed_throws_the_dynamic_car_off_on_the_outside():
    track, apex = _tightest_bend()
    bend = math.copysign(1.0, track.curvature_at(apex))  # + = a left bend
    x, y, heading = track.pose_at(apex - 15.0)
    for name in ("dynamic", "kinematic"):
        car, state = make_car(name), CarState(x, y, heading, TOP_SPEED_MPS)
        ctes, wheels = [], []
        for _ in range(60):
            state = car.step(state, _chase(track, state), 1.0)
            ctes.append(track.locate(state.x, state.y).cte)
            wheels.append(abs(state.steering))
        ctes = np.array(ctes)
        if name == "dynamic":  # full lock cannot save it: the front tyres slide, it runs wide
            assert max(wheels) == 1.0
            off = np.flatnonzero(np.abs(ctes) > track.width / 2)
            assert off.size, f"stayed on the road: max |cte| {np.abs(ctes).max():.2f} m"
            assert ctes[off[0]] * bend < 0  # on the outside of the bend: understeer
        else:  # the kinematic car follows the 9 m bend at 30 mph (2 g): the old, optimistic sim
            assert np.abs(ctes).max() < track.width / 4


@pytest.mark.parametrize("speed, tolerance_m", [(2.5, 0.05), (5.0, 1.0)])
def test_at_low_speed_the_path_is_the_kinematic_one(speed, tolerance_m):
    dynamic = make_car("dynamic")
    kinematic = make_car("kinematic", lock_to_lock_s=LOCK_TO_LOCK_S, delay_steps=1)
    a = b = CarState(speed=speed)
    deviation = 0.0
    for step in range(300):  # 20 s of slalom, up to 0.8 of full lock
        steering = 0.8 * math.sin(2 * math.pi * step / 60)
        a = dynamic.step(a, steering, _hold_speed(speed, a))
        b = kinematic.step(b, steering, _hold_speed(speed, b))
        deviation = max(deviation, math.hypot(a.x - b.x, a.y - b.y))
    assert deviation < tolerance_m  # 5 cm in 50 m at walking pace, 1 % at 5 m/s
    assert math.hypot(a.x, a.y) > 10 * speed


def test_standing_still_is_stable_and_pulling_away_turns_the_kinematic_circle():
    car = DynamicCar()
    state = CarState(x=1.0, y=2.0, yaw=0.3)
    for steering in (1.0, -1.0, 0.3, 0.0):
        for _ in range(10):
            state = car.step(state, steering, 0.0)
    assert (state.x, state.y, state.yaw, state.speed) == (1.0, 2.0, 0.3, 0.0)
    path = [state]
    for _ in range(40):  # creep away at full lock
        path.append(car.step(path[-1], 1.0, 0.08 if path[-1].speed < 1.2 else 0.0))
    xy = np.array([[s.x, s.y] for s in path[10:]])
    a = np.column_stack([2 * xy, np.ones(len(xy))])
    cx, cy, c = np.linalg.lstsq(a, (xy ** 2).sum(axis=1), rcond=None)[0]
    assert math.sqrt(c + cx * cx + cy * cy) == pytest.approx(car.min_turn_radius, rel=0.02)


def test_steering_is_rate_limited_and_every_command_acts_one_step_late():
    car = DynamicCar()
    state = car.step(CarState(speed=10.0), -1.0, 0.0)  # full left, sent now
    assert state.steering == 0.0 and state.yaw_rate == 0.0  # nothing happens for one step
    turned = [state.steering]
    for command in [-1.0] * 10 + [1.0] * 20:  # hold full left, then full right
        state = car.step(state, command, 0.0)
        turned.append(state.steering)
    turned = np.array(turned)
    per_step = 2.0 / LOCK_TO_LOCK_S * DT
    assert np.all(np.abs(np.diff(turned)) <= per_step + 1e-12)
    assert turned[1] == pytest.approx(-per_step)
    assert turned[11] == -1.0 and turned[12] > -1.0  # the first right command acts at step 12
    lock_to_lock = (np.argmax(turned >= 1.0) - 11) * DT
    assert LOCK_TO_LOCK_S <= lock_to_lock < LOCK_TO_LOCK_S + DT  # full left to full right
    start = car.step(CarState(), 0.0, 1.0)  # throttle: the same one-step delay
    assert start.speed == 0.0 and car.step(start, 0.0, 1.0).speed > 0.0


def test_make_car_names_the_models_and_rejects_unknown_ones():
    assert isinstance(make_car(), DynamicCar) and make_car().name == "dynamic"
    kinematic = make_car("kinematic")
    assert type(kinematic) is Car and kinematic.delay_steps == 0
    assert make_car("dynamic", friction=0.5).max_lateral_accel == pytest.approx(0.5 * 9.81)
    assert ROAD_FRICTION == 0.9
    with pytest.raises(ConfigError, match=r"car: expected one of \['dynamic', 'kinematic'\]"):
        make_car("hovercraft")
    with pytest.raises(ConfigError, match=r"car=kinematic: unknown parameters \['friction'\]"):
        make_car("kinematic", friction=0.5)
    with pytest.raises(ConfigError, match="mass"):
        make_car("dynamic", mass=0.0)
