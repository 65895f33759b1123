"""Car dynamics: a kinematic bicycle model with the Unity simulator's control ranges.

World frame: x east, y north, yaw counter-clockwise from +x (radians). Like Unity, a
*positive* steering input turns the car to the RIGHT (clockwise, decreasing yaw).
The state point (x, y) is the car's centre, halfway between the axles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bc.udacity import MAX_STEERING_DEG, SAMPLE_PERIOD_S, TOP_SPEED_MPH

MPS_PER_MPH = 0.44704
TOP_SPEED_MPS = TOP_SPEED_MPH * MPS_PER_MPH

WHEELBASE_M = 2.7  # a mid-size car
REAR_AXLE_TO_CENTRE_M = WHEELBASE_M / 2.0  # state point sits halfway between the axles
MAX_ACCEL_MPS2 = 4.0  # full throttle from rest: 0 to 30 mph in ~4 s
MAX_BRAKE_MPS2 = 8.0  # full brake (throttle -1), about 0.8 g
DRAG_PER_S = 0.02  # linear air/rolling drag: a = -DRAG_PER_S * v
COAST_DECEL_MPS2 = 0.3  # engine braking / rolling resistance with zero throttle
SUBSTEPS = 4  # integration sub-steps per control step, keeps arcs accurate at 15 Hz


@dataclass
class CarState:
    """Pose and speed of the car (speed in m/s, always >= 0)."""

    x: float = 0.0
    y: float = 0.0
    yaw: float = 0.0
    speed: float = 0.0

    @property
    def speed_mph(self) -> float:
        """Speed as the simulator reports it."""
        return self.speed / MPS_PER_MPH


def steering_to_angle(steering: float) -> float:
    """Normalised steering in [-1, 1] (positive = right) -> front-wheel angle in radians
    (positive = left, the mathematical sense used by the dynamics)."""
    s = min(1.0, max(-1.0, float(steering)))
    return -math.radians(s * MAX_STEERING_DEG)


def angle_to_steering(angle: float) -> float:
    """Front-wheel angle in radians (positive = left) -> normalised steering, clipped."""
    s = -math.degrees(angle) / MAX_STEERING_DEG
    return min(1.0, max(-1.0, s))


class Car:
    """Kinematic bicycle model; `step` advances one control step of `dt` seconds."""

    def __init__(
        self,
        wheelbase: float = WHEELBASE_M,
        rear_to_centre: float = REAR_AXLE_TO_CENTRE_M,
        max_accel: float = MAX_ACCEL_MPS2,
        max_brake: float = MAX_BRAKE_MPS2,
        drag: float = DRAG_PER_S,
        coast_decel: float = COAST_DECEL_MPS2,
        top_speed: float = TOP_SPEED_MPS,
        substeps: int = SUBSTEPS,
    ) -> None:
        if wheelbase <= 0 or not 0 <= rear_to_centre <= wheelbase:
            raise ValueError(
                f"Car: expected wheelbase > 0 and 0 <= rear_to_centre <= wheelbase, "
                f"got {wheelbase}, {rear_to_centre}"
            )
        self.wheelbase = float(wheelbase)
        self.rear_to_centre = float(rear_to_centre)
        self.max_accel = float(max_accel)
        self.max_brake = float(max_brake)
        self.drag = float(drag)
        self.coast_decel = float(coast_decel)
        self.top_speed = float(top_speed)
        self.substeps = max(1, int(substeps))

    @property
    def min_turn_radius(self) -> float:
        """Radius of the circle the car's centre follows at full lock (metres)."""
        delta = math.radians(MAX_STEERING_DEG)
        return math.hypot(self.rear_to_centre, self.wheelbase / math.tan(delta))

    def acceleration(self, speed: float, throttle: float) -> float:
        """Longitudinal acceleration (m/s^2) for a throttle in [-1, 1]; negative brakes."""
        t = min(1.0, max(-1.0, float(throttle)))
        if t > 0:
            drive = t * self.max_accel
        elif t < 0:
            drive = t * self.max_brake
        else:
            drive = -self.coast_decel if speed > 0 else 0.0
        return drive - self.drag * speed

    def step(
        self, state: CarState, steering: float, throttle: float, dt: float = SAMPLE_PERIOD_S
    ) -> CarState:
        """Advance the car by dt seconds with constant controls; returns a new state."""
        delta = steering_to_angle(steering)
        # slip angle of the centre point for a kinematic bicycle (front-wheel steer)
        beta = math.atan(self.rear_to_centre / self.wheelbase * math.tan(delta))
        yaw_gain = math.cos(beta) * math.tan(delta) / self.wheelbase
        x, y, yaw, v = state.x, state.y, state.yaw, state.speed
        h = float(dt) / self.substeps
        for _ in range(self.substeps):
            v_new = v + self.acceleration(v, throttle) * h
            v_new = min(self.top_speed, max(0.0, v_new))  # never reverses, never above top
            v_mid = 0.5 * (v + v_new)
            yaw_mid = yaw + 0.5 * v_mid * yaw_gain * h
            x += v_mid * math.cos(yaw_mid + beta) * h
            y += v_mid * math.sin(yaw_mid + beta) * h
            yaw += v_mid * yaw_gain * h
            v = v_new
        yaw = math.atan2(math.sin(yaw), math.cos(yaw))
        return CarState(x=x, y=y, yaw=yaw, speed=v)
