"""Car dynamics with the Unity simulator's control ranges: a tyre-limited dynamic bicycle
model (the default) and the kinematic bicycle model (`make_car("kinematic")`).

World frame: x east, y north, yaw counter-clockwise from +x (radians). Like Unity, a
*positive* steering input turns the car to the RIGHT (clockwise, decreasing yaw).
The state point (x, y) is the car's centre, halfway between the axles; the dynamic model
puts the centre of mass there too. `CarState.speed` is the ground speed of that point.

The dynamic model (`DynamicCar`) is a single-track model: one tyre per axle whose lateral
force follows a simplified Pacejka "magic formula" and saturates at the road friction
(shared with the longitudinal force by a friction circle), yaw inertia, and a steering
actuator that turns at a limited rate and acts one control step late. Below walking speed,
where tyre slip angles are undefined, it blends into the kinematic model, so it stands
still and starts off without jitter.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

from bc.errors import ConfigError
from bc.core.udacity import MAX_STEERING_DEG, SAMPLE_PERIOD_S, TOP_SPEED_MPH

MPS_PER_MPH = 0.44704
GRAVITY_MPS2 = 9.81
TOP_SPEED_MPS = TOP_SPEED_MPH * MPS_PER_MPH

# --- chassis (both models) ------------------------------------------------------------------
WHEELBASE_M = 2.7  # a mid-size car
REAR_AXLE_TO_CENTRE_M = WHEELBASE_M / 2.0  # state point sits halfway between the axles
MAX_ACCEL_MPS2 = 4.0  # full throttle from rest: 0 to 30 mph in ~4 s
MAX_BRAKE_MPS2 = 8.0  # full brake (throttle -1), about 0.8 g
DRAG_PER_S = 0.02  # linear air/rolling drag: a = -DRAG_PER_S * v
COAST_DECEL_MPS2 = 0.3  # engine braking / rolling resistance with zero throttle
SUBSTEPS = 4  # kinematic model: integration sub-steps per control step (exact arcs at 15 Hz)

# --- dynamic model: mass, tyres, actuator ----------------------------------------------------
MASS_KG = 1500.0  # a mid-size saloon with a driver
YAW_INERTIA_KGM2 = 2700.0  # ~ mass * (half wheelbase)^2: yaw dynamic index about 1
ROAD_FRICTION = 0.9  # tyre-road friction coefficient (dry asphalt): peak ~0.9 g of grip
TYRE_B_PER_RAD = 14.0  # Pacejka stiffness factor B: cornering stiffness B*C*mu*Fz ~ 19 Fz/rad
TYRE_SHAPE_C = 1.5  # Pacejka C: peak force at ~7 deg of slip, ~70 % of it when sliding
LOCK_TO_LOCK_S = 0.75  # fastest full-left to full-right sweep of the front wheels (~67 deg/s)
ACTUATION_DELAY_STEPS = 1  # a command acts one control step later (67 ms at 15 Hz)
KINEMATIC_BELOW_MPS = 1.5  # walking speed: pure kinematic model below (slip undefined at rest)
DYNAMIC_ABOVE_MPS = 4.0  # pure tyre model above; linear blend in between
DYNAMIC_SUBSTEPS = 6  # explicit integration sub-steps of 11 ms: stable down to walking speed


@dataclass
class CarState:
    """Pose and motion of the car. Built from (x, y, yaw, speed) alone it is a car rolling
    straight with centred wheels and nothing queued, e.g. after a reset onto the road.

    speed: ground speed (m/s, >= 0); lateral_speed: body-frame sideways velocity (m/s,
    + = left); yaw_rate: rad/s (+ = counter-clockwise); steering: the front wheels'
    normalised angle now (+ = right, as commanded); pending: (steering, throttle) commands
    sent but not yet acting (the actuation delay), oldest first."""

    x: float = 0.0
    y: float = 0.0
    yaw: float = 0.0
    speed: float = 0.0
    lateral_speed: float = 0.0
    yaw_rate: float = 0.0
    steering: float = 0.0
    pending: tuple[tuple[float, float], ...] = ()

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


def gravity_along(grade: float) -> float:
    """Deceleration (m/s^2) gravity causes along a road of slope `grade` (dz/ds): g sin(atan)."""
    return GRAVITY_MPS2 * grade / math.sqrt(1.0 + grade * grade) if grade else 0.0


def _clip(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


class Car:
    """The chassis both models share (geometry, engine and brakes, steering actuator) and, on
    its own, the kinematic bicycle model: the wheels roll where they point at any speed, so
    it never slides. By default its steering acts at once (bc's car before the dynamic one);
    `lock_to_lock_s` / `delay_steps` give it the dynamic car's actuator. `step` advances one
    control step of `dt` seconds and returns a new state."""

    name = "kinematic"

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
        lock_to_lock_s: float = 0.0,
        delay_steps: int = 0,
    ) -> None:
        if not wheelbase > 0 or not 0 <= rear_to_centre <= wheelbase:
            raise ConfigError(
                f"car: expected wheelbase > 0 and 0 <= rear_to_centre <= wheelbase (m), "
                f"got {wheelbase}, {rear_to_centre}"
            )
        if not lock_to_lock_s >= 0 or delay_steps < 0 or int(delay_steps) != delay_steps:
            raise ConfigError(
                f"car: expected lock_to_lock_s >= 0 (s) and a whole delay_steps >= 0, "
                f"got {lock_to_lock_s}, {delay_steps}"
            )
        if not top_speed > 0 or substeps < 1:
            raise ConfigError(f"car: expected top_speed > 0 (m/s) and substeps >= 1, "
                              f"got {top_speed}, {substeps}")
        self.wheelbase = float(wheelbase)
        self.rear_to_centre = float(rear_to_centre)
        self.max_accel = float(max_accel)
        self.max_brake = float(max_brake)
        self.drag = float(drag)
        self.coast_decel = float(coast_decel)
        self.top_speed = float(top_speed)
        self.substeps = int(substeps)
        self.lock_to_lock_s = float(lock_to_lock_s)
        self.delay_steps = int(delay_steps)

    @property
    def min_turn_radius(self) -> float:
        """Radius of the circle the car's centre follows at full lock and low speed (metres)."""
        delta = math.radians(MAX_STEERING_DEG)
        return math.hypot(self.rear_to_centre, self.wheelbase / math.tan(delta))

    @property
    def steering_rate(self) -> float:
        """Fastest change of the normalised steering (1/s); inf without a rate limit."""
        return 2.0 / self.lock_to_lock_s if self.lock_to_lock_s > 0 else math.inf

    def acceleration(self, speed: float, throttle: float) -> float:
        """Longitudinal acceleration (m/s^2) for a throttle in [-1, 1]; negative brakes."""
        t = _clip(float(throttle), -1.0, 1.0)
        if t > 0:
            drive = t * self.max_accel
        elif t < 0:
            drive = t * self.max_brake
        else:
            drive = -self.coast_decel if speed > 0 else 0.0
        return drive - self.drag * speed

    def actuate(self, state: CarState, steering: float,
                throttle: float) -> tuple[float, float, tuple[tuple[float, float], ...]]:
        """The (steering, throttle) command acting during this step, and the queue after it:
        a command takes effect `delay_steps` control steps after it is sent. A state with
        nothing queued (a fresh start, a reset) holds its wheels and coasts meanwhile."""
        command = (_clip(float(steering), -1.0, 1.0), _clip(float(throttle), -1.0, 1.0))
        if self.delay_steps == 0:
            return command[0], command[1], ()
        queue = state.pending[-self.delay_steps:] + (command,)
        missing = self.delay_steps + 1 - len(queue)
        queue = ((state.steering, 0.0),) * max(0, missing) + queue
        return queue[0][0], queue[0][1], queue[1:]

    def turn_wheels(self, wheels: float, target: float, h: float) -> float:
        """Normalised steering after turning for h seconds towards `target` at the rate limit."""
        limit = self.steering_rate * h
        return wheels + _clip(target - wheels, -limit, limit)

    def rolling(self, steering: float) -> tuple[float, float]:
        """Rolling without slip at this steering: (slip angle of the centre's velocity (rad),
        yaw rate per m/s of ground speed (1/m))."""
        delta = steering_to_angle(steering)
        beta = math.atan(self.rear_to_centre / self.wheelbase * math.tan(delta))
        return beta, math.cos(beta) * math.tan(delta) / self.wheelbase

    def step(
        self, state: CarState, steering: float, throttle: float, dt: float = SAMPLE_PERIOD_S,
        grade: float = 0.0,
    ) -> CarState:
        """Advance the car by dt seconds with the controls sent now; returns a new state.
        `grade`: the road's slope along the car's heading (dz/ds, + = uphill); gravity's
        share along it slows the car uphill and speeds it up downhill."""
        target, throttle, pending = self.actuate(state, steering, throttle)
        slope = gravity_along(grade)
        instant = self.delay_steps == 0 and self.lock_to_lock_s == 0
        wheels = target if instant else state.steering
        x, y, yaw, v = state.x, state.y, state.yaw, state.speed
        h = float(dt) / self.substeps
        beta = yaw_gain = 0.0
        for _ in range(self.substeps):
            wheels = self.turn_wheels(wheels, target, h)
            beta, yaw_gain = self.rolling(wheels)
            v_new = _clip(v + (self.acceleration(v, throttle) - slope) * h, 0.0, self.top_speed)
            v_mid = 0.5 * (v + v_new)  # never reverses, never above top speed
            yaw_mid = yaw + 0.5 * v_mid * yaw_gain * h
            x += v_mid * math.cos(yaw_mid + beta) * h
            y += v_mid * math.sin(yaw_mid + beta) * h
            yaw += v_mid * yaw_gain * h
            v = v_new
        yaw = math.atan2(math.sin(yaw), math.cos(yaw))
        return CarState(x, y, yaw, v, v * math.sin(beta), v * yaw_gain, wheels, pending)


class DynamicCar(Car):
    """Dynamic bicycle model with tyre forces that saturate at the road friction.

    Each axle's lateral force is mu*Fz*sin(C*atan(B*alpha)) of its slip angle alpha (a
    simplified Pacejka formula), scaled down by the friction circle when the car also
    accelerates or brakes; the body has mass and yaw inertia, so a bend entered too fast
    makes the front tyres slide and the car runs wide. The steering turns at most
    full lock to full lock in `lock_to_lock_s` and acts `delay_steps` control steps late.
    Below `kinematic_below` m/s it is the kinematic model, blended linearly up to
    `dynamic_above` m/s, where slip angles become meaningful."""

    name = "dynamic"

    def __init__(
        self,
        mass: float = MASS_KG,
        yaw_inertia: float = YAW_INERTIA_KGM2,
        friction: float = ROAD_FRICTION,
        tyre_b: float = TYRE_B_PER_RAD,
        tyre_c: float = TYRE_SHAPE_C,
        kinematic_below: float = KINEMATIC_BELOW_MPS,
        dynamic_above: float = DYNAMIC_ABOVE_MPS,
        substeps: int = DYNAMIC_SUBSTEPS,
        lock_to_lock_s: float = LOCK_TO_LOCK_S,
        delay_steps: int = ACTUATION_DELAY_STEPS,
        **chassis: Any,
    ) -> None:
        super().__init__(substeps=substeps, lock_to_lock_s=lock_to_lock_s,
                         delay_steps=delay_steps, **chassis)
        named = {"mass": mass, "yaw_inertia": yaw_inertia, "friction": friction,
                 "tyre_b": tyre_b, "tyre_c": tyre_c}
        for key, value in named.items():
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"car: expected {key} > 0, got {value}")
        if not 0 <= kinematic_below < dynamic_above:
            raise ConfigError(f"car: expected 0 <= kinematic_below < dynamic_above (m/s), "
                              f"got {kinematic_below}, {dynamic_above}")
        self.mass = float(mass)
        self.yaw_inertia = float(yaw_inertia)
        self.friction = float(friction)
        self.tyre_b = float(tyre_b)
        self.tyre_c = float(tyre_c)
        self.kinematic_below = float(kinematic_below)
        self.dynamic_above = float(dynamic_above)
        front_to_centre = self.wheelbase - self.rear_to_centre
        weight = self.mass * GRAVITY_MPS2
        self.front_load = weight * self.rear_to_centre / self.wheelbase  # N, static
        self.rear_load = weight * front_to_centre / self.wheelbase

    @property
    def max_lateral_accel(self) -> float:
        """The most lateral acceleration the tyres can hold (m/s^2): friction * g."""
        return self.friction * GRAVITY_MPS2

    def step(
        self, state: CarState, steering: float, throttle: float, dt: float = SAMPLE_PERIOD_S,
        grade: float = 0.0,
    ) -> CarState:
        """Advance the car by dt seconds with the controls sent now; returns a new state
        (`grade` as for Car.step: gravity along the slope; the tyres' grip is unchanged).

        Explicit sub-steps of the single-track equations (body frame, vx forward, vy left):
        m (vx' - vy r) = m a - Ff sin(delta);  m (vy' + vx r) = Ff cos(delta) + Fr;
        Iz r' = lf Ff cos(delta) - lr Fr; blended with rolling without slip at low speed."""
        target, throttle, pending = self.actuate(state, steering, throttle)
        slope = gravity_along(grade)
        wheels = state.steering if self.lock_to_lock_s > 0 or self.delay_steps else target
        lf, lr = self.wheelbase - self.rear_to_centre, self.rear_to_centre
        m, inertia, b, c_shape = self.mass, self.yaw_inertia, self.tyre_b, self.tyre_c
        top, slow, span = self.top_speed, self.kinematic_below, \
            self.dynamic_above - self.kinematic_below
        grip_limit = self.friction * GRAVITY_MPS2
        x, y, yaw = state.x, state.y, state.yaw
        v = max(0.0, state.speed)
        vy = _clip(state.lateral_speed, -v, v)
        vx = math.sqrt(v * v - vy * vy)
        r = state.yaw_rate
        h = float(dt) / self.substeps
        atan, sin, cos, sqrt = math.atan, math.sin, math.cos, math.sqrt
        for _ in range(self.substeps):
            wheels = self.turn_wheels(wheels, target, h)
            delta = steering_to_angle(wheels)
            accel = _clip(self.acceleration(v, throttle), -grip_limit, grip_limit)
            # rolling without slip (the kinematic model) at the new ground speed
            beta, yaw_gain = self.rolling(wheels)
            v_roll = _clip(v + (accel - slope) * h, 0.0, top)
            vx_new, vy_new, r_new = v_roll * cos(beta), v_roll * sin(beta), v_roll * yaw_gain
            share = _clip((v - slow) / span, 0.0, 1.0)
            if share > 0.0:
                # what braking or driving leaves of each tyre's grip (friction circle)
                left = sqrt(max(0.0, 1.0 - (accel / grip_limit) ** 2)) * self.friction
                u = max(vx, slow)  # slip angles need forward motion
                front = left * self.front_load * sin(c_shape * atan(
                    b * (delta - math.atan2(vy + lf * r, u))))
                rear = -left * self.rear_load * sin(c_shape * atan(
                    b * math.atan2(vy - lr * r, u)))
                cos_d, sin_d = cos(delta), sin(delta)
                vx_dyn = max(0.0, vx + (accel - slope - front * sin_d / m + vy * r) * h)
                vy_dyn = vy + ((front * cos_d + rear) / m - vx * r) * h
                r_dyn = r + (lf * front * cos_d - lr * rear) / inertia * h
                vx_new += share * (vx_dyn - vx_new)
                vy_new += share * (vy_dyn - vy_new)
                r_new += share * (r_dyn - r_new)
            if vx_new * vx_new + vy_new * vy_new > top * top:  # the engine's limit
                vx_new = sqrt(max(0.0, top * top - vy_new * vy_new))
            r_mid = 0.5 * (r + r_new)
            yaw_mid = yaw + 0.5 * r_mid * h
            vx_mid, vy_mid = 0.5 * (vx + vx_new), 0.5 * (vy + vy_new)
            c, s = cos(yaw_mid), sin(yaw_mid)
            x += (vx_mid * c - vy_mid * s) * h
            y += (vx_mid * s + vy_mid * c) * h
            yaw += r_mid * h
            vx, vy, r = vx_new, vy_new, r_new
            v = math.hypot(vx, vy)
        yaw = math.atan2(math.sin(yaw), math.cos(yaw))
        return CarState(x, y, yaw, v, vy, r, wheels, pending)


CARS: dict[str, type[Car]] = {"dynamic": DynamicCar, "kinematic": Car}
DEFAULT_CAR = "dynamic"


def make_car(name: str = DEFAULT_CAR, **params: Any) -> Car:
    """The car model called `name` (`dynamic`: tyre-limited, the default; `kinematic`: never
    slides), built with `params` overriding the named constants above."""
    if name not in CARS:
        raise ConfigError(f"car: expected one of {sorted(CARS)}, got {name!r}")
    model = CARS[name]
    known = {p for cls in (model, Car) for p in inspect.signature(cls).parameters} - {"chassis"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"car={name}: unknown parameters {unknown}; expected {sorted(known)}")
    return model(**params)
