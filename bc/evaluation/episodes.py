"""The one episode loop: N `bc/Drive-v0` episodes stepped together through Gymnasium's vector
API, a policy choosing every car's action, a callback seeing every step.

Everything that drives the built-in simulator runs here: the closed-loop score and its
callback (bc/evaluation/callback.py), DAgger's rollouts (bc/experiments/dagger.py), the expert's recording
(bc/evaluation/recorder.py) and reference drive (bc/evaluation/expert.py), autonomous mode against a
drive server (bc/evaluation/autonomous.py) and the benchmarks. A single episode is N = 1.

* **What ends an episode** is the env's, written once (bc/sim/env.py): `terminated` when the
  laps are done (or the car left the road with off_road="terminate"), `truncated` at the
  episode's `max_steps` (Gymnasium's TimeLimit) or after `stall_timeout_s` standing still.
  `stop_reason` in the result: laps | max_steps | stalled.
* **Interventions** are the env's too (the safety driver puts the car back); the loop tells
  the policy (`Policy.intervened`) so that an expert forgets its stale speed integral.
* **Autoreset** is Gymnasium's NEXT_STEP mode: the step after a slot's episode ended resets
  that env (its action ignored) and its observation starts the slot's next episode
  (`repeats`: episodes per slot; a start drawn from the env's seed differs each time).
* **The wire**: with `jpeg=True` (the default) each env encodes its center camera as the
  Unity simulator does (JPEG at quality 75, in the worker process) into `info["jpeg"]`, and a
  model policy decodes it as drive.py does: the frames a model sees are the frames it would
  see served. `jpeg=False` skips the round trip (faster; the model then sees the renderer's
  exact pixels, without the JPEG artefacts it was trained on).
* **Lockstep**: every reply advances the car one `dt`, whatever the inference costs. With
  `vectorization="async"` the envs step in worker processes (`AsyncVectorEnv`), split in two
  groups that alternate, so that one group renders while the policy runs on the other's
  frames: both cores work.

    specs = [EpisodeSpec("lake", laps=1), EpisodeSpec("mountain", laps=1, reverse=True)]
    with Episodes(specs, vectorization="async") as episodes:
        results = episodes.run(ModelPolicy(model))   # one DriveResult per episode
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Mapping, Protocol, Sequence

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv
from gymnasium.vector.utils import batch_space

from bc.core import images
from bc.errors import ConfigError
from bc.evaluation.metrics import DriveResult
from bc.sim import ENV_ID
from bc.sim.env import MAX_EPISODE_STEPS, STATE_FIELDS, resolve_track, reversed_track
from bc.sim.track import Track
from bc.core.udacity import SAMPLE_PERIOD_S, UNITY_JPEG_QUALITY

STALL_TIMEOUT_S = 10.0  # simulated seconds standing still before an evaluation episode gives up
VECTORIZATIONS = ("sync", "async")
GROUPS = 2  # async: env groups that alternate (one renders while the policy runs on the other)
ASYNC_MIN_CORES = 4  # default_vectorization: worker processes from this many cores on
WORKER_CONTEXT = "forkserver"  # safe next to torch's threads, cheaper than spawn

# on_step(slot, info of the state acted on, executed action): before the env steps
StepCallback = Callable[[int, Mapping[str, Any], np.ndarray], None]


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode: `laps` of `track` (a shipped name, YAML path or `random:<n>`; driven the
    other way with `reverse`) under lighting `lighting`, with `car`, from `start_s` m at
    `start_speed_mph`, stopped at `max_steps` steps or after `stall_timeout_s` standing still
    (None: never). `cameras`: the frames `info["frames"]` carries (recording); `obs_type`:
    "state" for drivers that need no camera (the expert)."""

    track: str | Track = "lake"
    laps: float | None = 1.0
    reverse: bool = False
    lighting: int = 0
    car: str | None = None
    start_s: float = 0.0
    start_speed_mph: float = 0.0
    max_steps: int = MAX_EPISODE_STEPS
    stall_timeout_s: float | None = STALL_TIMEOUT_S
    cameras: tuple[str, ...] = ()
    obs_type: str = "rgb"
    dt: float = SAMPLE_PERIOD_S

    @cached_property
    def road(self) -> Track:
        """The road as driven (reversed with `reverse`): what the metrics measure along."""
        world = resolve_track(self.track, self.lighting)
        return reversed_track(world) if self.reverse else world

    def make(self, jpeg: bool = False) -> gymnasium.Env:
        """The env of this episode (Gymnasium's TimeLimit at `max_steps`), encoding its center
        camera into info["jpeg"] when `jpeg`."""
        env = gymnasium.make(
            ENV_ID, max_episode_steps=int(self.max_steps), disable_env_checker=True,
            track=self.track, lighting_seed=self.lighting, reverse=self.reverse,
            cameras=tuple(self.cameras), car=self.car, dt=self.dt, laps=self.laps,
            start_s=self.start_s, start_speed_mph=self.start_speed_mph,
            obs_type=self.obs_type, stall_timeout_s=self.stall_timeout_s)
        return UnityJpeg(env) if jpeg else env


class UnityJpeg(gymnasium.Wrapper):
    """Adds info["jpeg"]: the center camera as the Unity simulator sends it (quality 75)."""

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        observation, info = self.env.reset(**kwargs)
        info["jpeg"] = images.encode_jpeg(observation, UNITY_JPEG_QUALITY)
        return observation, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        info["jpeg"] = images.encode_jpeg(observation, UNITY_JPEG_QUALITY)
        return observation, reward, terminated, truncated, info


def _make_env(spec: EpisodeSpec, jpeg: bool) -> gymnasium.Env:
    return spec.make(jpeg)


class Policy(Protocol):
    """What drives the cars of the loop; `slot` numbers the episode's place in the batch."""

    def reset(self, slot: int, spec: EpisodeSpec) -> None:
        """A new episode starts in `slot` (a new car: controllers forget their state)."""

    def intervened(self, slot: int) -> None:
        """The safety driver just put the car of `slot` back on the road."""

    def act(self, slots: Sequence[int], observations: np.ndarray,
            infos: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """(len(slots), 2) actions [steering, throttle] for these cars' observations."""


def split_infos(infos: Mapping[str, Any], count: int) -> list[dict[str, Any]]:
    """A vector env's infos (Gymnasium's arrays with `_key` masks) back to one dict per env."""
    out: list[dict[str, Any]] = [{} for _ in range(count)]
    for key, value in infos.items():
        if key.startswith("_"):
            continue
        mask = infos.get(f"_{key}")
        parts = split_infos(value, count) if isinstance(value, dict) else None
        for index in range(count):
            if mask is not None and not mask[index]:
                continue
            item = parts[index] if parts is not None else value[index]
            out[index][key] = item.item() if isinstance(item, np.generic) else item
    return out


@dataclass
class _Slot:
    spec: EpisodeSpec
    infos: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    done: int = 0  # episodes finished
    resetting: bool = False  # the next step is the autoreset one
    finished: bool = False  # all its episodes done: its steps are not driven any more


class Episodes:
    """The envs of `specs` (one slot each) as Gymnasium vector envs: "sync" in this process,
    "async" in worker processes (module doc). Reusable: `run` resets them each time; a
    context manager (close() ends the workers)."""

    def __init__(self, specs: Sequence[EpisodeSpec], *, jpeg: bool = True,
                 vectorization: str = "sync", context: str | None = WORKER_CONTEXT) -> None:
        self.specs = list(specs)
        if not self.specs:
            raise ConfigError("episodes: expected at least one episode to drive")
        if vectorization not in VECTORIZATIONS:
            raise ConfigError(f"vectorization: expected one of {list(VECTORIZATIONS)}, got "
                              f"{vectorization!r}")
        self.jpeg, self.vectorization = bool(jpeg), vectorization
        kinds = {spec.obs_type for spec in self.specs}
        if len(kinds) > 1:
            raise ConfigError(f"episodes: one obs_type for all, got {sorted(kinds)}")
        mode: Any = "same"
        if kinds == {"state"}:  # its bounds are the track's: one unbounded box for any mix
            single = spaces.Box(-np.inf, np.inf, (len(STATE_FIELDS),), np.float32)
            mode = (batch_space(single, len(self.specs)), single)
        fns = [functools.partial(_make_env, spec, self.jpeg) for spec in self.specs]
        count = len(fns)
        if vectorization == "async":
            if context == "forkserver":  # workers fork from a server that imported the sim once
                multiprocessing.get_context(context).set_forkserver_preload([__name__])
            groups = min(GROUPS, count)
            bounds = [round(index * count / groups) for index in range(groups + 1)]
            self.groups = [AsyncVectorEnv(fns[first:last], context=context,
                                          autoreset_mode=AutoresetMode.NEXT_STEP,
                                          observation_mode=_part(mode, last - first))
                           for first, last in zip(bounds, bounds[1:])]
        else:
            bounds = [0, count]
            self.groups = [_InProcess(SyncVectorEnv(fns, autoreset_mode=AutoresetMode.NEXT_STEP,
                                                    observation_mode=mode))]
        self.offsets = bounds[:-1]

    def __enter__(self) -> "Episodes":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for group in self.groups:
            group.close()
        self.groups = []

    def run(self, policy: Policy, *, repeats: int = 1, on_step: StepCallback | None = None,
            seed: int | None = None) -> list[DriveResult]:
        """Drive `repeats` episodes in every slot with `policy` (reset here, seeded `seed` +
        slot when given); `on_step` sees each state acted on. Returns the DriveResults slot by
        slot (a slot's episodes in order)."""
        slots = [_Slot(spec) for spec in self.specs]
        results: list[list[DriveResult]] = [[] for _ in slots]
        active = []
        for group, offset in zip(self.groups, self.offsets):
            seeds = None if seed is None else [seed + offset + i for i in range(group.num_envs)]
            group.reset_async(seed=seeds)
        for group, offset in zip(self.groups, self.offsets):
            observations, infos = group.reset_wait()
            for index, info in enumerate(split_infos(infos, group.num_envs)):
                slot = slots[offset + index]
                slot.info = info
                policy.reset(offset + index, slot.spec)
            self._act(group, offset, slots, observations, policy, on_step)
            active.append((group, offset))
        while active:
            for group, offset in list(active):
                observations, _, terminated, truncated, infos = group.step_wait()
                for index, info in enumerate(split_infos(infos, group.num_envs)):
                    slot, number = slots[offset + index], offset + index
                    if slot.finished:
                        continue
                    slot.info = info
                    if slot.resetting:  # Gymnasium's autoreset: a new episode starts here
                        slot.resetting = False
                        policy.reset(number, slot.spec)
                        continue
                    slot.infos.append(info)
                    if info["off_road"]:
                        policy.intervened(number)
                    if terminated[index] or truncated[index]:
                        results[number].append(self._result(slot, bool(terminated[index])))
                        slot.infos, slot.done = [], slot.done + 1
                        slot.resetting = True
                        slot.finished = slot.done >= repeats
                if all(slots[offset + i].finished for i in range(group.num_envs)):
                    active.remove((group, offset))
                else:
                    self._act(group, offset, slots, observations, policy, on_step)
        return [result for per_slot in results for result in per_slot]

    @staticmethod
    def _act(group: Any, offset: int, slots: Sequence[_Slot], observations: np.ndarray,
             policy: Policy, on_step: StepCallback | None) -> None:
        """Start the group's next step: the policy's actions for its driving slots (zeros for
        the others, whose action the env ignores or nobody records)."""
        actions = np.zeros((group.num_envs, 2), np.float32)
        driving = [index for index in range(group.num_envs)
                   if not (slots[offset + index].finished or slots[offset + index].resetting)]
        if driving:
            chosen = np.asarray(policy.act([offset + i for i in driving], observations[driving],
                                           [slots[offset + i].info for i in driving]),
                                dtype=np.float64)
            for row, index in enumerate(driving):
                if on_step is not None:
                    on_step(offset + index, slots[offset + index].info, chosen[row])
            actions = actions.astype(np.float64)
            actions[driving] = chosen
        group.step_async(actions)

    @staticmethod
    def _result(slot: _Slot, terminated: bool) -> DriveResult:
        last = slot.infos[-1]
        if terminated:
            reason = "laps"
        elif len(slot.infos) >= slot.spec.max_steps:
            reason = "max_steps"
        elif last.get("stalled"):
            reason = "stalled"
        else:
            reason = "max_steps"
        return DriveResult.from_steps(slot.spec.road, slot.spec.dt, slot.infos,
                                      slot.spec.laps or 0.0, stop_reason=reason)


def _part(mode: Any, count: int) -> Any:
    return mode if isinstance(mode, str) else (batch_space(mode[1], count), mode[1])


class _InProcess:
    """A SyncVectorEnv with AsyncVectorEnv's split calls, so that one loop drives both."""

    def __init__(self, envs: SyncVectorEnv) -> None:
        self.envs, self.num_envs, self._pending = envs, envs.num_envs, None

    def reset_async(self, seed: Any = None) -> None:
        self._pending = seed

    def reset_wait(self) -> tuple[Any, dict[str, Any]]:
        return self.envs.reset(seed=self._pending)

    def step_async(self, actions: np.ndarray) -> None:
        self._pending = actions

    def step_wait(self) -> tuple[Any, ...]:
        return self.envs.step(self._pending)

    def close(self) -> None:
        self.envs.close()


def drive(specs: Sequence[EpisodeSpec], policy: Policy, *, jpeg: bool = True,
          vectorization: str = "sync", repeats: int = 1, on_step: StepCallback | None = None,
          seed: int | None = None) -> list[DriveResult]:
    """`Episodes(specs, ...).run(policy, ...)` once, the envs closed after."""
    with Episodes(specs, jpeg=jpeg, vectorization=vectorization) as episodes:
        return episodes.run(policy, repeats=repeats, on_step=on_step, seed=seed)


def default_vectorization(count: int) -> str:
    """"async" for several episodes on a machine with ASYNC_MIN_CORES cores or more, else
    "sync": on 2 busy shared cores one process stepping all the envs measured faster than
    worker processes, whose lockstep waits for the slowest (docs/evaluation.md)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = multiprocessing.cpu_count()
    return "async" if count > 1 and cores >= ASYNC_MIN_CORES else "sync"
