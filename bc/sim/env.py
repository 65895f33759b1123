"""DrivingEnv: the simulator's one step, as a Gymnasium environment (in the style of CarRacing).

`step(action)` applies `action = [steering, throttle]` (both in [-1, 1], Unity's conventions:
+ steering turns right, negative throttle brakes), advances the car one `dt`, renders the
center camera and measures where the car is. Everything that loops over the simulator
(training-mode recording, autonomous mode against a drive server, the expert's reference
drive, the benchmarks) loops over this class, so the rules below are written once:

* **progress**: arc length along the centreline, in the driving direction, summed step by
  step (crossing the start line keeps counting); `progress` in laps, `lap` whole laps done;
* **off-road**: the car's centre is further from the centreline than half the road width
  there (a narrow bridge is narrower; a dirt branch is off the road: it is not road);
* **grades**: gravity along the road's slope under the car acts on it (bc.sim.car);
* **intervention** (`off_road="intervene"`, the default, as in NVIDIA's simulator test): a
  safety driver puts the car back on the nearest centreline point, heading along the track,
  *keeping its speed*, and the episode goes on; with `off_road="terminate"` the episode ends.

Reward (for RL libraries): metres of progress along the centreline this step, minus
`off_road_penalty` (default 60 m: NVIDIA's autonomy charges 6 s per intervention, ~60 m at
the expert's pace) in the step the car leaves the road.
`terminated`: `laps` laps done, or the car left the road with `off_road="terminate"`.
`truncated`: the car stood still (speed < STILL_MPS) for `stall_timeout_s` simulated seconds
in a row (`info["stalled"]`), or the registered time limit: `gymnasium.make("bc/Drive-v0")`
truncates at MAX_EPISODE_STEPS steps (`max_episode_steps=N` sets another).

Randomness comes from `reset(seed=, options=)`: a start drawn along the track
(`options={"start_s": "random"}`) from the seed, and the lighting: the constructor's
`lighting_seed`, or with `lighting_seed=None` the reset's seed (0 without one), or
`options={"lighting": n}`.

`info` (a new dict each call): x, y, yaw (rad), speed (m/s), cte (signed m, + = left of the
driving direction, of the car where it is now), s (m along the centreline), progress (laps),
distance (odometer, m), lap, time (s), steps, steering / throttle (executed, clipped),
off_road (the car left the road in this step), off_road_xy / off_road_cte (where it left;
None otherwise), interventions (so far), stalled, state (the CarState, for an expert driving
from outside the env), and `frames` {camera: RGB} when `cameras` are asked.

    import gymnasium, bc.sim
    env = gymnasium.make("bc/Drive-v0", track="lake", cameras=("center", "left", "right"))
    frame, info = env.reset(seed=0)
    frame, reward, terminated, truncated, info = env.step([0.0, 0.5])
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Sequence

import gymnasium
import numpy as np
from gymnasium import spaces

from bc.core.settings import number, optional, setting
from bc.sim.car import DEFAULT_CAR, MPS_PER_MPH, Car, CarState, make_car
from bc.sim.track import Track, TrackPoint, load_track, random_track
from bc.core.udacity import CAMERAS, FRAME_HEIGHT, FRAME_WIDTH, SAMPLE_PERIOD_S, SAMPLE_RATE_HZ
from bc.sim.camera import renderer_for

OFF_ROAD_PENALTY_M = 60.0  # reward lost when the car leaves the road (6 s at ~10 m/s)
OFF_ROAD_MODES = ("intervene", "terminate")
OBS_TYPES = ("rgb", "state")  # the center camera frame, or STATE_FIELDS (no rendering at all)
STATE_FIELDS = ("x", "y", "yaw", "speed", "cte", "heading_error")  # m, m, rad, m/s, m, rad
MAX_SPEED_OBS_MPS = 100.0  # bound of `speed` in the state observation space
STILL_MPS = 1e-3  # below this the car counts as standing still (the stall rule)
MAX_EPISODE_STEPS = 27000  # bc/Drive-v0's registered time limit: 30 simulated minutes
RESET_OPTIONS = ("start_s", "speed_mph", "lighting")
RANDOM_TRACK = re.compile(r"random(?:[:-](\d+))?")  # random | random:<seed> | random-<seed>


def resolve_track(track: Track | str | Path, seed: int = 0) -> Track:
    """A Track from a Track, a shipped name, a YAML path, `random:<n>` or `random` (shape from
    `seed`)."""
    if isinstance(track, Track):
        return track
    match = RANDOM_TRACK.fullmatch(str(track).strip())
    if match and match.group(1) is not None:
        return random_track(int(match.group(1)))
    return load_track(str(track), seed=seed)


def reversed_track(track: Track) -> Track:
    """The same road driven the other way: same start point, arc length in the new direction
    (segments and heights follow)."""
    return track.reversed()


def car_model(name: str | None) -> Car:
    """The car model called `name` (bc.sim.car.CARS); None: the default, DEFAULT_CAR."""
    return make_car(DEFAULT_CAR if name is None else name)


def wrap_arc(ds: float, length: float) -> float:
    """Arc-length difference folded into [-length/2, length/2) (crossing the start line)."""
    return (ds + 0.5 * length) % length - 0.5 * length


class DrivingEnv(gymnasium.Env):
    """The built-in simulator as a Gymnasium env; the module docstring has the rules.

    `track`: a Track, shipped name, YAML path or `random:<n>`; `lighting_seed`: lighting and
    shadows (and the shape of a plain `random` track); `reverse`: drive the road the other way;
    `cameras`: which frames `info["frames"]` carries; `car`: the car model's name; `laps`:
    the episode's goal (None: endless); `start_s` / `start_speed_mph`: where and how fast the
    car starts (reset options `start_s` (m, or "random") and `speed_mph` override them);
    `obs_type`: "rgb" (the center camera) or "state" (STATE_FIELDS, nothing rendered);
    `stall_timeout_s`: truncate after standing still this long (None: never).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": SAMPLE_RATE_HZ}

    def __init__(
        self,
        track: Track | str | Path = "lake",
        lighting_seed: int | None = 0,
        *,
        reverse: bool = False,
        cameras: Sequence[str] = (),
        car: str | None = None,
        dt: float = SAMPLE_PERIOD_S,
        laps: float | None = 1.0,
        off_road: str = "intervene",
        off_road_penalty: float = OFF_ROAD_PENALTY_M,
        start_s: float | str = 0.0,
        start_speed_mph: float = 0.0,
        obs_type: str = "rgb",
        stall_timeout_s: float | None = None,
        render_mode: str | None = None,
    ) -> None:
        self.dt = setting("dt", dt, number, lambda value: value > 0, "a step > 0 s")
        self.laps = setting("laps", laps, optional(number),
                            lambda value: value is None or value > 0,
                            "a number of laps > 0 (or null: endless)")
        self.off_road = setting("off_road", off_road, str, lambda mode: mode in OFF_ROAD_MODES,
                                f"one of {OFF_ROAD_MODES}")
        self.obs_type = setting("obs_type", obs_type, str, lambda kind: kind in OBS_TYPES,
                                f"one of {OBS_TYPES}")
        self.cameras = setting("cameras", cameras, tuple,
                               lambda names: set(names) <= set(CAMERAS), f"a subset of {CAMERAS}")
        self.off_road_penalty = setting("off_road_penalty", off_road_penalty, number,
                                        lambda value: value >= 0, ">= 0")
        self.start_s = start_s if start_s == "random" else setting(
            "start_s", start_s, number, lambda value: True, 'a number (m) or "random"')
        self.start_speed_mph = setting("start_speed_mph", start_speed_mph, number,
                                       lambda value: value >= 0, ">= 0")
        self.stall_timeout_s = setting("stall_timeout_s", stall_timeout_s, optional(number),
                                       lambda value: value is None or value > 0,
                                       "a time > 0 s (or null: never)")
        self.stall_steps = (None if self.stall_timeout_s is None
                            else max(1, math.ceil(self.stall_timeout_s / self.dt)))
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode: expected None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.lighting_from_seed = lighting_seed is None
        self.lighting_seed = 0 if lighting_seed is None else int(lighting_seed)
        self.world = resolve_track(track, self.lighting_seed)  # what the cameras see
        self.reverse = bool(reverse)
        self.track = reversed_track(self.world) if self.reverse else self.world  # driven
        self.car = car_model(car)
        self._renderer: Any = None

        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        if self.obs_type == "rgb":
            self.observation_space = spaces.Box(0, 255, (FRAME_HEIGHT, FRAME_WIDTH, 3), np.uint8)
        else:
            xmin, ymin, xmax, ymax = self.track.bounds
            width = self.track.width
            self.observation_space = spaces.Box(
                np.array([xmin, ymin, -math.pi, 0.0, -width, -math.pi], np.float32),
                np.array([xmax, ymax, math.pi, MAX_SPEED_OBS_MPS, width, math.pi], np.float32))
        self.state = CarState()
        self._here: TrackPoint | None = None

    # -- the one set of rules -----------------------------------------------------------------
    def is_off_road(self, cte: float, s: float | None = None) -> bool:
        """THE off-road rule: the car's centre is further than half the road width (at arc
        length `s`; None: the track's nominal width) from the centreline."""
        half = 0.5 * self.track.width if s is None else self.track.half_width_at(s)
        return abs(cte) > half

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Put the car at the start (options: `start_s` m or "random", `speed_mph`,
        `lighting`; module doc)."""
        super().reset(seed=seed)
        options = dict(options or {})
        start_s = options.pop("start_s", self.start_s)
        speed_mph = options.pop("speed_mph", self.start_speed_mph)
        lighting = options.pop("lighting", None)
        if options:
            raise ValueError(f"reset options: unknown {sorted(options)}; expected "
                             f"{', '.join(RESET_OPTIONS)}")
        if lighting is None and self.lighting_from_seed and seed is not None:
            lighting = seed
        if lighting is not None and int(lighting) != self.lighting_seed:
            self.lighting_seed, self._renderer = int(lighting), None
        if start_s == "random":
            start_s = float(self.np_random.uniform(0.0, self.track.length))
        x, y, heading = self.track.pose_at(float(start_s))
        self.state = CarState(x, y, heading, max(0.0, float(speed_mph)) * MPS_PER_MPH)
        self._here = self.track.locate(x, y)
        self._progress_m = self._distance_m = 0.0
        self._steps = self.interventions = self._still_steps = 0
        self._controls = (0.0, 0.0)
        return self._observe(None)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Advance one `dt` with `action = [steering, throttle]` (clipped to [-1, 1])."""
        steering, throttle = (min(1.0, max(-1.0, float(value))) for value in action)
        before = self.state
        grade = 0.0
        if self.track.has_elevation:  # the slope under the car, along its heading
            here = self._here
            grade = self.track.grade_at(here.s) * math.cos(before.yaw - here.heading)
        self.state = self.car.step(before, steering, throttle, self.dt, grade=grade)
        self._controls = (steering, throttle)
        self._steps += 1
        self._distance_m += 0.5 * (before.speed + self.state.speed) * self.dt
        here = self.track.locate(self.state.x, self.state.y)
        progress = wrap_arc(here.s - self._here.s, self.track.length)
        self._progress_m += progress
        self._here = here
        reward, terminated, left = progress, False, None
        if self.is_off_road(here.cte, here.s):
            reward -= self.off_road_penalty
            left = (self.state.x, self.state.y, here.cte)
            if self.off_road == "terminate":
                terminated = True
            else:  # the safety driver: back on the centreline, along the track, same speed
                self.interventions += 1
                self.state = CarState(here.x, here.y, here.heading, self.state.speed)
                self._here = here._replace(cte=0.0)
        if self.laps is not None and self._progress_m >= self.laps * self.track.length:
            terminated = True
        self._still_steps = self._still_steps + 1 if self.state.speed < STILL_MPS else 0
        observation, info = self._observe(left)
        return observation, float(reward), terminated, info["stalled"], info

    # -- what the caller sees -----------------------------------------------------------------
    @property
    def renderer(self) -> Any:
        """The camera renderer of this world and lighting (built on first use, then shared)."""
        if self._renderer is None:

            self._renderer = renderer_for(self.world, self.lighting_seed)
        return self._renderer

    def render(self) -> np.ndarray | None:
        """The center camera frame of the current state (render_mode "rgb_array")."""
        if self.render_mode != "rgb_array":
            return None
        return self.renderer.render(self.state)

    def _observe(self, left: tuple[float, float, float] | None) -> tuple[np.ndarray, dict]:
        frames = {camera: self.renderer.render(self.state, camera) for camera in self.cameras}
        if self.obs_type == "rgb":
            observation = frames.get(CAMERAS[0])
            if observation is None:
                observation = self.renderer.render(self.state)
        else:
            observation = self._state_vector()
        info = self._info(left)
        if self.cameras:
            info["frames"] = frames
        return observation, info

    def _state_vector(self) -> np.ndarray:
        state, here = self.state, self._here
        heading_error = math.remainder(state.yaw - here.heading, math.tau)
        vector = np.array([state.x, state.y, state.yaw, state.speed, here.cte, heading_error],
                          np.float32)
        return np.clip(vector, self.observation_space.low, self.observation_space.high)

    def _info(self, left: tuple[float, float, float] | None) -> dict[str, Any]:
        state, length = self.state, self.track.length
        progress = self._progress_m / length
        return {
            "x": state.x, "y": state.y, "yaw": state.yaw, "speed": state.speed,
            "cte": self._here.cte, "s": self._here.s, "progress": progress,
            "distance": self._distance_m, "lap": max(0, math.floor(progress + 1e-9)),
            "time": self._steps * self.dt, "steps": self._steps,
            "steering": self._controls[0], "throttle": self._controls[1],
            "off_road": left is not None,
            "off_road_xy": None if left is None else (left[0], left[1]),
            "off_road_cte": None if left is None else left[2],
            "interventions": self.interventions,
            "stalled": self.stall_steps is not None and self._still_steps >= self.stall_steps,
            "state": state,
        }
