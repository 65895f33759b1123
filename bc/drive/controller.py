"""Speed control for autonomous mode: a PI controller towards a target speed.

The reference ``drive.py`` uses ``SimplePIController(Kp=0.1, Ki=0.002)`` towards 9 mph,
one update per telemetry message (the integral is a per-step sum, not per-second: the
gains were tuned that way). We keep that, and add what it lacks: a clamped output,
anti-windup (the integral stops where the output saturates) and a choice of where the
target speed comes from (``speed_source``):

- ``set_speed``: the constant ``set_speed`` (the reference's behaviour);
- ``bends``: ``set_speed`` lowered with the steering angle (``bend_slowdown`` at full lock);
- ``model``: the target speed the model predicts for each frame (a model trained with
  ``model.outputs=[steering,speed]``), kept between ``min_speed`` and the top speed.

Throttle semantics in the simulator: positive accelerates; negative brakes while the car
moves forward, but *reverses* it from a standstill. So braking is only allowed above
``brake_min_speed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bc.core import udacity
from bc.errors import ConfigError

REFERENCE_KP = 0.1
REFERENCE_KI = 0.002
DEFAULT_SET_SPEED_MPH = 9.0
# Below this speed a negative throttle would reverse the car instead of braking it
# (the simulator's CarController brakes only above ~5 units of speed).
DEFAULT_BRAKE_MIN_SPEED_MPH = 5.0
SPEED_SOURCES = ("set_speed", "bends", "model")


@dataclass
class PIController:
    """Discrete PI controller with output clamping and anti-windup."""

    kp: float = REFERENCE_KP
    ki: float = REFERENCE_KI
    set_point: float = DEFAULT_SET_SPEED_MPH
    output_min: float = -1.0
    output_max: float = 1.0
    integral: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if self.output_min > self.output_max:
            raise ConfigError(f"output_min {self.output_min} > output_max {self.output_max}")

    def reset(self) -> None:
        """Forget the accumulated error (a new car / a new connection)."""
        self.integral = 0.0

    def update(self, measurement: float) -> float:
        """One control step: the clamped output for this ``measurement``.

        Anti-windup: the integral grows only as far as needed to reach the output bound
        (never beyond, never pulled back), so after a long saturation (a car stuck, a
        steep hill) the controller reacts at once instead of unwinding for seconds.
        """
        error = self.set_point - measurement
        integral = self.integral + error
        output = self.kp * error + self.ki * integral
        if self.ki > 0:
            if output > self.output_max:
                integral = max(self.integral, (self.output_max - self.kp * error) / self.ki)
            elif output < self.output_min:
                integral = min(self.integral, (self.output_min - self.kp * error) / self.ki)
        self.integral = integral
        output = self.kp * error + self.ki * integral
        return min(self.output_max, max(self.output_min, output))


@dataclass
class SpeedController:
    """Throttle from the measured speed: PI towards the target speed ``speed_source`` gives
    (module doc). Types are checked by the config's schema (`bc.core.configs.SpeedControlConfig`);
    the ranges here."""

    set_speed: float = DEFAULT_SET_SPEED_MPH
    speed_source: str = "set_speed"
    kp: float = REFERENCE_KP
    ki: float = REFERENCE_KI
    bend_slowdown: float = 0.5
    min_speed: float = 5.0
    allow_brake: bool = True
    brake_min_speed: float = DEFAULT_BRAKE_MIN_SPEED_MPH
    max_throttle: float = 1.0

    def __post_init__(self) -> None:
        for name in ("set_speed", "kp", "ki", "bend_slowdown", "min_speed", "brake_min_speed",
                     "max_throttle"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name}: expected a finite number, got {getattr(self, name)!r}")
        if not 0.0 <= self.set_speed <= udacity.TOP_SPEED_MPH:
            raise ConfigError(
                f"set_speed: expected 0..{udacity.TOP_SPEED_MPH} mph, got {self.set_speed}")
        if not 0.0 <= self.bend_slowdown <= 1.0:
            raise ConfigError(f"bend_slowdown: expected 0..1, got {self.bend_slowdown}")
        if not 0.0 < self.max_throttle <= 1.0:
            raise ConfigError(f"max_throttle: expected in (0, 1], got {self.max_throttle}")
        if self.speed_source not in SPEED_SOURCES:
            raise ConfigError(f"speed_source: expected one of {list(SPEED_SOURCES)}, "
                              f"got {self.speed_source!r}")
        self.pi = PIController(kp=self.kp, ki=self.ki, set_point=self.set_speed,
                               output_min=-1.0 if self.allow_brake else 0.0,
                               output_max=self.max_throttle)

    def reset(self) -> None:
        self.pi.reset()

    @property
    def needs_model_speed(self) -> bool:
        """Whether every update needs the model's target speed (``speed_source=model``)."""
        return self.speed_source == "model"

    def target_speed(self, steering: float, predicted: float | None = None) -> float:
        """The PI's set point (mph): ``set_speed``; with ``bends`` lowered linearly with
        |steering| (never below ``min_speed`` unless the set speed itself is lower); with
        ``model`` the model's ``predicted`` target speed within [min_speed, top speed]."""
        if self.speed_source == "model":
            if predicted is None or not math.isfinite(predicted):
                raise ValueError(f"speed_source=model: expected the model's target speed, "
                                 f"got {predicted}")
            return min(udacity.TOP_SPEED_MPH, max(self.min_speed, predicted))
        if self.speed_source == "set_speed":
            return self.set_speed
        reduced = self.set_speed * (1.0 - self.bend_slowdown * min(1.0, abs(steering)))
        return max(min(self.min_speed, self.set_speed), reduced)

    def throttle(self, speed: float, steering: float = 0.0,
                 predicted_speed: float | None = None) -> float:
        """Throttle in [-1, max_throttle] (in [0, max_throttle] without braking);
        ``predicted_speed`` is the model's target speed (mph), used with ``speed_source=model``."""
        if not math.isfinite(speed):
            raise ValueError(f"speed: expected a finite number, got {speed}")
        self.pi.set_point = self.target_speed(steering, predicted_speed)
        output = self.pi.update(speed)
        if output < 0.0 and speed < self.brake_min_speed:
            output = 0.0  # a negative throttle here would drive backwards
        return output
