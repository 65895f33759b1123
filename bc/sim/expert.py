"""Expert driver for recording training data, and the DART-style noise it drives with.

`Expert.act` is the clean action: pure pursuit on the centreline for steering and a
proportional-integral speed controller towards a speed planned from the track's curvature
and the tyres' grip: v = sqrt(pace * friction * g / curvature) in a bend, braking early
enough before it (`speed_profile`). At its default pace it is the fastest driver bc has and
its lap time the pace reference; `speed_mph` caps it to record at a chosen speed. The
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
from bc.sim.car import (GRAVITY_MPS2, MPS_PER_MPH, ROAD_FRICTION, Car, CarState,
                        angle_to_steering, gravity_along, make_car, steering_to_angle)
from bc.sim.track import Track
from bc.core.udacity import SAMPLE_PERIOD_S

PACE = 0.9  # share of the tyres' grip (friction * g) the expert plans to use: a 10 % margin
LOOKAHEAD_MIN_M = 3.5  # pure-pursuit lookahead at standstill
LOOKAHEAD_TIME_S = 0.45  # extra lookahead per m/s of speed
LOOKAHEAD_MAX_M = 14.0
BEND_WINDOW_M = 3.0  # a bend's speed limit holds this far either side of its apex
MIN_SPEED_MPS = 3.0  # never plan slower than this
SPEED_KP = 0.5  # throttle per m/s of speed error
SPEED_KI = 0.1  # throttle per m of accumulated speed error
SPEED_INTEGRAL_LIMIT = 5.0
FEEDFORWARD_LEAD_S = 0.25  # the wheels' turn takes about this long (rate limit) after the delay
RECOVERY_REACTION_S = 0.3  # a drift ends early enough for the expert to react this long
RECOVERY_DECEL_MPS2 = 2.0  # and then cancel the outward slide at this lateral deceleration


def speed_profile(track: Track, top_speed: float, grip: float, brake: float,
                  window_m: float = BEND_WINDOW_M, floor: float = MIN_SPEED_MPS) -> np.ndarray:
    """Highest planned speed (m/s) at every centreline sample: the bend limit
    v = sqrt(grip / curvature) (grip in m/s^2), lowered in advance so that the car never
    needs more than `brake` m/s^2, nor more than the grip the bend leaves (friction circle),
    to slow down for a later bend; on a descent gravity takes away from the brakes (and adds
    to them uphill), so braking for a bend at the foot of a hill starts earlier."""
    kappa = np.abs(track.curvature)
    window = max(0, int(round(window_m / track.spacing)))
    kappa = np.max([np.roll(kappa, k) for k in range(-window, window + 1)], axis=0)
    v = np.minimum(top_speed, np.sqrt(grip / np.maximum(kappa, 1e-9)))
    v = np.maximum(v, floor)
    ds = track.spacing
    n = len(v)
    slope = GRAVITY_MPS2 * track.grade / np.sqrt(1.0 + track.grade ** 2)
    # two backward passes around the loop so the constraint wraps past the start line
    for _ in range(2):
        for i in range(2 * n - 1, -1, -1):
            j, k = i % n, (i + 1) % n
            lateral = v[k] ** 2 * kappa[k]
            decel = min(brake, math.sqrt(max(grip * grip - lateral * lateral, 0.0))) + slope[j]
            v[j] = min(v[j], math.sqrt(max(v[k] ** 2 + 2 * decel * ds, 0.0)))
    return v


def lap_time_bound(track: Track, car: Car | None = None, laps: float = 1.0) -> float:
    """A physical bound on the time (s) to drive `laps` laps from a standing start: the
    minimum-time speed profile along the centreline under the friction circle at the car's full
    friction (no margin), its engine's acceleration, drag and top speed, and gravity along the
    grades. No driver that keeps to the centreline is faster; cutting bends can beat it a little."""
    standing, flying = bound_profile(track, car)
    if laps <= 1.0:
        return float(np.interp(laps * track.length, np.append(track.s, track.length), standing))
    return float(standing[-1] + (laps - 1.0) * flying)


def bound_profile(track: Track, car: Car | None = None) -> tuple[np.ndarray, float]:
    """lap_time_bound's profile: the time (s) to reach each centreline sample (and the lap's
    end) from a standing start, and the time of a flying lap (the next one)."""
    car = car if car is not None else make_car()
    mu_g = getattr(car, "friction", ROAD_FRICTION) * GRAVITY_MPS2
    kappa = np.abs(track.curvature)
    v = speed_profile(track, car.top_speed, mu_g, min(mu_g, car.max_brake), window_m=0.0,
                      floor=0.0)
    slope = GRAVITY_MPS2 * track.grade / np.sqrt(1.0 + track.grade ** 2)
    ds, n = track.spacing, len(v)
    speed, elapsed = 0.0, 0.0
    times = np.zeros(2 * n + 1)
    for step in range(2 * n):  # forward, two laps: as fast as the engine and the grip allow
        j = step % n
        lateral = speed * speed * kappa[j]
        room = math.sqrt(max(mu_g * mu_g - lateral * lateral, 0.0))
        accel = min(car.max_accel, room) - car.drag * speed - slope[j]
        nxt = min(v[(j + 1) % n], math.sqrt(max(speed * speed + 2 * accel * ds, 0.0)))
        elapsed += 2 * ds / max(speed + nxt, 1e-6)
        times[step + 1] = elapsed
        speed = nxt
    return times[:n + 1], float(times[2 * n] - times[n])


class Expert:
    """Pure pursuit on the centreline with planned speed; `act(state)` -> (steering, throttle).

    The speed plan uses `pace` of the road's grip (friction * g of the car) in bends and
    for braking, capped at `speed_mph` (None: the car's top speed). The expert knows its
    car: it steers from where the car will be when the command acts (the actuation delay)."""

    def __init__(
        self,
        track: Track,
        speed_mph: float | None = None,
        pace: float = PACE,
        lookahead_min: float = LOOKAHEAD_MIN_M,
        lookahead_time: float = LOOKAHEAD_TIME_S,
        lookahead_max: float = LOOKAHEAD_MAX_M,
        car: Car | None = None,
        dt: float = SAMPLE_PERIOD_S,
    ) -> None:
        if speed_mph is not None and not speed_mph > 0:
            raise ConfigError(f"speed_mph: expected > 0 (or null: the car's top speed), "
                              f"got {speed_mph}")
        if not 0 < pace <= 1:
            raise ConfigError(f"pace: expected a share of the tyres' grip in (0, 1], got {pace}")
        self.track = track
        self.car = car if car is not None else make_car()
        top = self.car.top_speed
        self.speed = top if speed_mph is None else min(float(speed_mph) * MPS_PER_MPH, top)
        self.pace = float(pace)
        self.lookahead_min = float(lookahead_min)
        self.lookahead_time = float(lookahead_time)
        self.lookahead_max = float(lookahead_max)
        self.dt = float(dt)
        friction = getattr(self.car, "friction", ROAD_FRICTION)  # the kinematic car never slides
        self.grip = self.pace * friction * GRAVITY_MPS2  # m/s^2 the plan may use
        self.profile = speed_profile(track, self.speed, self.grip,
                                     min(self.grip, self.car.max_brake))
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

    def throttle(self, state: CarState, s: float, steering: float | None = None) -> float:
        """PI speed control towards the planned speed; negative values brake.

        With the `steering` about to be sent, the target is also low enough for the grip to
        hold the curvature it asks for (a car pushed off its line slows to get back), and
        the brakes never take more than the grip the bend leaves (friction circle)."""
        target = self.target_speed(s)
        if steering is not None:
            kappa = abs(math.tan(steering_to_angle(steering))) / self.car.wheelbase
            target = min(target, max(MIN_SPEED_MPS, math.sqrt(self.grip / max(kappa, 1e-9))))
        error = target - state.speed
        lateral = state.speed * state.yaw_rate
        room = math.sqrt(max(0.0, self.grip * self.grip - lateral * lateral))
        lowest = -min(1.0, room / self.car.max_brake)
        integral = max(-SPEED_INTEGRAL_LIMIT,
                       min(SPEED_INTEGRAL_LIMIT, self._integral + error * self.dt))
        command = SPEED_KP * error + SPEED_KI * integral + self._hill(s)
        if lowest <= command <= 1.0:  # integrate only while the pedals are not at a limit
            self._integral = integral
        return max(lowest, min(1.0, SPEED_KP * error + SPEED_KI * self._integral + self._hill(s)))

    def _hill(self, s: float) -> float:
        """Feed-forward pedal that cancels gravity along the grade at s."""
        grade = self.track.grade_at(s)
        if not grade:
            return 0.0
        pull = gravity_along(grade)
        return pull / (self.car.max_accel if pull > 0 else self.car.max_brake)

    def feedforward(self, s: float) -> float:
        """Steering that follows the centreline's bends with no feedback: the curvature where
        the car will be (at the planned speed) when a command sent at s has turned the wheels."""
        lead = self.car.delay_steps * self.dt + FEEDFORWARD_LEAD_S
        kappa = self.track.curvature_at(s + self.target_speed(s) * lead)
        return angle_to_steering(math.atan(self.car.wheelbase * kappa))

    def predict(self, state: CarState) -> CarState:
        """Where the car will be when a command sent now starts to act (after the commands
        already queued in the actuation delay)."""
        for _ in range(self.car.delay_steps):
            held = state.pending[-1] if state.pending else (state.steering, 0.0)
            state = self.car.step(state, *held, self.dt)
        return state

    def act(self, state: CarState) -> tuple[float, float]:
        """Clean expert action (steering in [-1, 1], + = right; throttle in [-1, 1])."""
        ahead = self.predict(state)
        s = self.track.locate(ahead.x, ahead.y).s
        steering = self.steering(ahead, s)
        return steering, self.throttle(ahead, s, steering)


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
        self._last_cte = 0.0

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
                # stop where the car, still sliding outwards (to either side: a bend can
                # carry it the other way) until the steering has turned back, would reach
                # the offset
                outwards = max(0.0, (abs(cte) - abs(self._last_cte)) / self.dt)
                toward = (abs(cte) + outwards * RECOVERY_REACTION_S
                          + outwards ** 2 / (2 * RECOVERY_DECEL_MPS2))
                if toward >= rec.max_offset * half_width:
                    self._drift_until = self._t  # far enough: let the expert recover
                else:
                    base = steering if feedforward is None else feedforward
                    steer = base + self._state[0] + self._drift_side * rec.steering
        self._t += self.dt
        self._last_cte = cte
        return max(-1.0, min(1.0, steer)), max(-1.0, min(1.0, thr))
