"""Expert driver for recording training data, and the DART-style noise it drives with.

`Expert.act` is the clean action: pure pursuit on the centreline for steering and a
proportional-integral speed controller whose target slows for the bends ahead. The
recorder *executes* `ActionNoise` applied to that action (temporally correlated noise
plus occasional recovery drifts) but *records* the clean action as the label, so the
data covers off-centre states labelled with how to get back (Laskey et al., DART).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np

from bc.errors import ConfigError
from bc.sim.car import MPS_PER_MPH, Car, CarState, angle_to_steering
from bc.sim.track import Track
from bc.udacity import SAMPLE_PERIOD_S

LOOKAHEAD_MIN_M = 3.5  # pure-pursuit lookahead at standstill
LOOKAHEAD_TIME_S = 0.5  # extra lookahead per m/s of speed
LOOKAHEAD_MAX_M = 14.0
MAX_LAT_ACCEL_MPS2 = 3.0  # comfortable cornering: v = sqrt(a / curvature)
COMFORT_BRAKE_MPS2 = 2.5  # how hard the expert plans to slow before a bend
MIN_SPEED_MPS = 3.0  # never plan slower than this
SPEED_KP = 0.5  # throttle per m/s of speed error
SPEED_KI = 0.1  # throttle per m of accumulated speed error
SPEED_INTEGRAL_LIMIT = 5.0


def speed_profile(track: Track, top_speed: float, max_lat_accel: float = MAX_LAT_ACCEL_MPS2,
                  brake: float = COMFORT_BRAKE_MPS2) -> np.ndarray:
    """Highest planned speed (m/s) at every centreline sample: the bend limit, slowed in
    advance so the car never has to brake harder than `brake` to meet a later bend."""
    kappa = np.abs(track.curvature)
    v = np.minimum(top_speed, np.sqrt(max_lat_accel / np.maximum(kappa, 1e-9)))
    v = np.maximum(v, MIN_SPEED_MPS)
    ds = track.spacing
    n = len(v)
    # two backward passes around the loop so the constraint wraps past the start line
    for _ in range(2):
        for i in range(2 * n - 1, -1, -1):
            j, k = i % n, (i + 1) % n
            v[j] = min(v[j], math.sqrt(v[k] ** 2 + 2 * brake * ds))
    return v


class Expert:
    """Pure pursuit on the centreline with speed control; `act(state)` -> (steering, throttle)."""

    def __init__(
        self,
        track: Track,
        speed_mph: float = 20.0,
        lookahead_min: float = LOOKAHEAD_MIN_M,
        lookahead_time: float = LOOKAHEAD_TIME_S,
        lookahead_max: float = LOOKAHEAD_MAX_M,
        max_lat_accel: float = MAX_LAT_ACCEL_MPS2,
        car: Car | None = None,
        dt: float = SAMPLE_PERIOD_S,
    ) -> None:
        if speed_mph <= 0:
            raise ConfigError(f"speed_mph: expected > 0, got {speed_mph}")
        self.track = track
        self.car = car or Car()
        self.speed = min(float(speed_mph) * MPS_PER_MPH, self.car.top_speed)
        self.lookahead_min = float(lookahead_min)
        self.lookahead_time = float(lookahead_time)
        self.lookahead_max = float(lookahead_max)
        self.dt = float(dt)
        self.profile = speed_profile(track, self.speed, max_lat_accel)
        self._integral = 0.0

    def reset(self) -> None:
        """Forget the speed controller's integral (after a teleport)."""
        self._integral = 0.0

    def target_speed(self, s: float) -> float:
        """Planned speed (m/s) at arc length s."""
        i = int(round((s % self.track.length) / self.track.spacing)) % len(self.profile)
        return float(self.profile[i])

    def steering(self, state: CarState, s: float | None = None) -> float:
        """Pure-pursuit steering (normalised, + = right) towards the centreline ahead."""
        if s is None:
            s = self.track.locate(state.x, state.y).s
        lookahead = min(self.lookahead_max, self.lookahead_min + self.lookahead_time * state.speed)
        tx, ty, _ = self.track.pose_at(s + lookahead)
        c, sn = math.cos(state.yaw), math.sin(state.yaw)
        rx = state.x - self.car.rear_to_centre * c  # pure pursuit steers the rear axle
        ry = state.y - self.car.rear_to_centre * sn
        dx, dy = tx - rx, ty - ry
        alpha = math.atan2(dy, dx) - state.yaw
        dist = max(math.hypot(dx, dy), 1e-3)
        delta = math.atan2(2.0 * self.car.wheelbase * math.sin(alpha), dist)
        return angle_to_steering(delta)

    def throttle(self, state: CarState, s: float) -> float:
        """PI speed control towards the planned speed; negative values brake."""
        error = self.target_speed(s) - state.speed
        integral = self._integral + error * self.dt
        self._integral = max(-SPEED_INTEGRAL_LIMIT, min(SPEED_INTEGRAL_LIMIT, integral))
        return max(-1.0, min(1.0, SPEED_KP * error + SPEED_KI * self._integral))

    def feedforward(self, s: float) -> float:
        """Steering that follows the centreline's curvature at s with no feedback."""
        return angle_to_steering(math.atan(self.car.wheelbase * self.track.curvature_at(s)))

    def act(self, state: CarState) -> tuple[float, float]:
        """Clean expert action (steering in [-1, 1], + = right; throttle in [-1, 1])."""
        s = self.track.locate(state.x, state.y).s
        return self.steering(state, s), self.throttle(state, s)


@dataclass
class RecoveryConfig:
    """Recovery segments: every `every_s` seconds steer off-centre for up to `drift_s` s."""

    enabled: bool = True
    every_s: float = 12.0
    drift_s: float = 2.0
    steering: float = 0.12  # steering bias on top of the bend's feed-forward (random side)
    max_offset: float = 0.7  # stop drifting at this fraction of the half road width


@dataclass
class NoiseConfig:
    """DART noise on the executed action: Ornstein-Uhlenbeck, stationary std per channel."""

    steering_std: float = 0.08
    throttle_std: float = 0.1
    correlation_s: float = 0.6  # time constant of the noise


def _as_config(cls: type, value: Any) -> Any:
    """None -> defaults, False -> off (None), a mapping -> validated config."""
    if value is None:
        return cls()
    if value is False or isinstance(value, cls):
        return value or None
    if isinstance(value, Mapping):
        known = {f.name for f in fields(cls)}
        unknown = set(value) - known
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown keys {sorted(unknown)}; expected {sorted(known)}"
            )
        return cls(**dict(value))
    raise ConfigError(
        f"{cls.__name__}: expected a mapping, None (defaults) or False (off), got {value!r}"
    )


class ActionNoise:
    """Perturbs the expert's action into the executed one (the label stays clean).

    `noise` / `recovery`: None for the defaults, False for off, or a mapping of fields."""

    def __init__(self, noise: NoiseConfig | Mapping | bool | None = None,
                 recovery: RecoveryConfig | Mapping | bool | None = None,
                 dt: float = SAMPLE_PERIOD_S, seed: int = 0) -> None:
        self.noise = _as_config(NoiseConfig, noise) or NoiseConfig(0.0, 0.0)
        self.recovery = _as_config(RecoveryConfig, recovery)
        if self.recovery is not None and not self.recovery.enabled:
            self.recovery = None
        self.dt = float(dt)
        self.rng = np.random.default_rng(seed)
        self._state = np.zeros(2)
        self._t = 0.0
        self._next_drift = self._schedule()
        self._drift_until = -1.0
        self._drift_side = 0.0

    def _schedule(self) -> float:
        if self.recovery is None:
            return math.inf
        return self._t + self.recovery.every_s * self.rng.uniform(0.6, 1.4)

    @property
    def drifting(self) -> bool:
        """True while a recovery drift is pushing the car off-centre."""
        return self._t < self._drift_until

    def __call__(
        self,
        steering: float,
        throttle: float,
        cte: float = 0.0,
        half_width: float = math.inf,
        feedforward: float | None = None,
    ) -> tuple[float, float]:
        """Executed (steering, throttle) for the clean action at lateral offset `cte`.

        While drifting the executed steering ignores the expert's feedback: it is the
        bend's `feedforward` steering (or the clean one if not given) plus a side bias."""
        tau = max(self.noise.correlation_s, 1e-6)
        decay = math.exp(-self.dt / tau)
        std = np.array([self.noise.steering_std, self.noise.throttle_std])
        kick = std * math.sqrt(1 - decay * decay) * self.rng.standard_normal(2)
        self._state = self._state * decay + kick
        steer = steering + self._state[0]
        thr = throttle + self._state[1]
        rec = self.recovery
        if rec is not None:
            if self._t >= self._next_drift:
                self._drift_until = self._t + rec.drift_s
                self._drift_side = float(self.rng.choice([-1.0, 1.0]))  # + = right
                self._next_drift = self._schedule() + rec.drift_s
            if self.drifting:
                # positive steering goes right, i.e. towards negative cte
                toward = -self._drift_side * cte
                if toward >= rec.max_offset * half_width:
                    self._drift_until = self._t  # far enough: let the expert recover
                else:
                    base = steering if feedforward is None else feedforward
                    steer = base + self._state[0] + self._drift_side * rec.steering
        self._t += self.dt
        return max(-1.0, min(1.0, steer)), max(-1.0, min(1.0, thr))
