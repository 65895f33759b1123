"""Both car models: straight with zero steering, top speed 30 mph, braking never reverses;
the kinematic model turns the bicycle-model radius at full lock (positive = right, as in
Unity) at any speed. The dynamic model's limits are in test_sim_physics.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bc.sim.car import CARS, MPS_PER_MPH, WHEELBASE_M, Car, CarState, make_car
from bc.core.udacity import MAX_STEERING_DEG, SAMPLE_PERIOD_S, TOP_SPEED_MPH


def _drive(car: Car, state: CarState, steering: float, throttle: float, steps: int,
           dt: float = SAMPLE_PERIOD_S) -> list[CarState]:
    states = [state]
    for _ in range(steps):
        states.append(car.step(states[-1], steering, throttle, dt))
    return states


@pytest.mark.parametrize("model", sorted(CARS))
def test_zero_steering_drives_straight(model):
    car = make_car(model)
    start = CarState(x=5.0, y=-3.0, yaw=0.7, speed=5.0)
    states = _drive(car, start, 0.0, 0.5, 150)
    end = states[-1]
    assert end.yaw == pytest.approx(start.yaw, abs=1e-12)
    dx, dy = end.x - start.x, end.y - start.y
    lateral = -math.sin(start.yaw) * dx + math.cos(start.yaw) * dy
    assert abs(lateral) < 1e-9 and math.hypot(dx, dy) > 50


def _fit_circle(xy: np.ndarray) -> tuple[float, float, float]:
    a = np.column_stack([2 * xy[:, 0], 2 * xy[:, 1], np.ones(len(xy))])
    b = (xy ** 2).sum(axis=1)
    cx, cy, c = np.linalg.lstsq(a, b, rcond=None)[0]
    return cx, cy, math.sqrt(c + cx * cx + cy * cy)


@pytest.mark.parametrize("steering, direction", [(1.0, -1.0), (-1.0, 1.0)])
def test_kinematic_full_lock_turns_with_the_bicycle_radius(steering, direction):
    car = make_car("kinematic", drag=0.0, coast_decel=0.0)  # constant speed without throttle
    states = _drive(car, CarState(0.0, 0.0, 0.0, 10.0), steering, 0.0, 100)  # 2 g: never slides
    xy = np.array([[s.x, s.y] for s in states])
    cx, cy, radius = _fit_circle(xy)
    rear_axle_radius = WHEELBASE_M / math.tan(math.radians(MAX_STEERING_DEG))
    assert radius == pytest.approx(math.hypot(rear_axle_radius, car.rear_to_centre), rel=0.01)
    # the state point (car centre) is 1.35 m ahead of the rear axle: a slightly larger circle
    assert radius == pytest.approx(rear_axle_radius, rel=0.04)
    assert math.copysign(1.0, cy) == direction  # positive steering turns right (centre below)
    yaw_change = states[5].yaw - states[0].yaw
    assert math.copysign(1.0, yaw_change) == direction


@pytest.mark.parametrize("model", sorted(CARS))
def test_full_throttle_never_exceeds_top_speed(model):
    car = make_car(model)
    states = _drive(car, CarState(), 0.0, 1.0, 60 * 15)
    speeds = np.array([s.speed_mph for s in states])
    assert speeds.max() <= TOP_SPEED_MPH + 1e-9
    assert speeds[-1] > TOP_SPEED_MPH - 0.5  # and it gets there
    assert speeds[15 * 2] > 10  # accelerates briskly
    assert np.all(np.diff(speeds) >= -1e-9)


@pytest.mark.parametrize("model", sorted(CARS))
def test_brake_stops_without_reversing_and_coasting_slows(model):
    car = make_car(model)
    moving = CarState(speed=10.0)
    braked = _drive(car, moving, 0.3, -1.0, 60)
    assert min(s.speed for s in braked) == 0.0 and braked[-1].speed == 0.0
    stopped = braked[-1]
    assert (stopped.x, stopped.y) == (braked[-2].x, braked[-2].y)  # stays put
    coasting = _drive(car, moving, 0.0, 0.0, 30)
    assert 0 < coasting[-1].speed < moving.speed
    braking, coasting = _drive(car, CarState(speed=5.0), 0.0, -0.5, 2), _drive(
        car, CarState(speed=5.0), 0.0, 0.0, 2)  # two steps: the dynamic car acts a step late
    assert braking[-1].speed < coasting[-1].speed < 5.0


def test_speed_units_and_configurable_step():
    assert CarState(speed=10 * MPS_PER_MPH).speed_mph == pytest.approx(10.0)
    car = make_car("kinematic")
    coarse = _drive(car, CarState(speed=8.0), 0.2, 0.1, 15, dt=SAMPLE_PERIOD_S)[-1]
    fine = _drive(car, CarState(speed=8.0), 0.2, 0.1, 30, dt=SAMPLE_PERIOD_S / 2)[-1]
    assert math.hypot(coarse.x - fine.x, coarse.y - fine.y) < 0.02  # same second of driving
    with pytest.raises(ValueError, match="wheelbase"):
        Car(wheelbase=0.0)
