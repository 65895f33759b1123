"""Simulator speed on one core: rendered camera frames/s, DrivingEnv steps/s and recorded
samples/s.

Rates are per CPU second of this (single-threaded) process, the honest "one core" figure on a
shared machine where other processes take the core away for a while; the wall-clock rate
follows in brackets.

An env step is what every closed loop pays per control step: the car's dynamics, the
centreline lookup (progress, off-road rule) and the center camera render. A recorded sample
is what the recorder does per row: expert + env step with three camera renders, three JPEG
encodes and file writes, one flushed CSV row.
"""

from __future__ import annotations

import csv
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bc.core.settings import integer, optional, setting
from bc.sim.car import CarState
from bc.core.udacity import CAMERAS, IMAGE_DIR, IMAGE_SUFFIX
from bc.evaluation.recorder import Recorder
from bc.sim.camera import renderer_for
from bc.sim.env import DrivingEnv
from bc.sim.expert import Expert
from bc.sim.track import load_track

WARMUP_FRAMES = 20
START_SPEED_MPH = 18.0
TARGET_FRAMES_PER_S = 500.0
TARGET_STEPS_PER_S = 2500.0
TARGET_SAMPLES_PER_S = 350.0


def expert_drive_steps(track: Any, count: int,
                       car: str | None = None) -> tuple[list[CarState], list[tuple[float, float]]]:
    """States and actions of `count` steps of the clean expert in the DrivingEnv (no camera),
    so frames show realistic views and env steps replay a realistic drive."""

    env = DrivingEnv(track, car=car, laps=None, start_speed_mph=START_SPEED_MPH,
                     obs_type="state")
    expert = Expert(env.track, car=env.car, dt=env.dt)
    env.reset()
    states, actions = [], []
    for _ in range(count):
        states.append(env.state)
        actions.append(expert.act(env.state))
        env.step(actions[-1])
    return states, actions


def expert_states(track: Any, count: int) -> list[CarState]:
    """States along a clean expert drive."""
    return expert_drive_steps(track, count)[0]


def one_core() -> None:
    """Pin OpenCV and torch to one thread (the renderer's numpy work is single-threaded):
    the numbers are per core, honestly."""
    import cv2

    cv2.setNumThreads(1)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def _verdict(value: float, target: float) -> str:
    return f"target >= {target:g}: {'met' if value >= target else 'NOT met'}"


class _Stopwatch:
    """CPU and wall seconds of a `with` block."""

    def __enter__(self) -> "_Stopwatch":
        self.cpu, self.wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu = time.process_time() - self.cpu
        self.wall = time.perf_counter() - self.wall

    def rates(self, count: int) -> tuple[float, float]:
        """count per CPU second, count per wall second."""
        return count / max(self.cpu, 1e-9), count / max(self.wall, 1e-9)


@dataclass
class SimBenchmark:
    """Camera frames/s of `frames` renders of `track`, DrivingEnv steps/s of as many steps
    (center camera), then recorded samples/s (`samples`, None: frames / 5, at least 30)."""

    frames: int = 500
    track: str = "lake"
    samples: int | None = None
    car: str | None = None  # the car model stepped (None: the default)

    def __post_init__(self) -> None:
        self.frames = setting("frames", self.frames, integer, lambda n: n >= 1, ">= 1")
        self.samples = setting("samples", self.samples, optional(integer),
                               lambda n: n is None or n >= 1, ">= 1 (or null)")

    def run(self) -> dict[str, Any]:
        """Measure, print and return the numbers."""

        one_core()
        started = time.perf_counter()
        track = load_track(self.track)
        renderer = renderer_for(track, seed=0)  # the env and the recorder reuse it
        setup_s = time.perf_counter() - started
        states, actions = expert_drive_steps(track, self.frames, self.car)
        for state in states[:WARMUP_FRAMES]:
            renderer.render(state)
        with _Stopwatch() as rendering:
            for index, state in enumerate(states):
                renderer.render(state, CAMERAS[index % len(CAMERAS)])
        fps, fps_wall = rendering.rates(self.frames)

        env = DrivingEnv(track, car=self.car, laps=None, start_speed_mph=START_SPEED_MPH)
        env.reset()
        with _Stopwatch() as stepping:
            for action in actions:
                env.step(action)
        steps_per_s, steps_wall = stepping.rates(len(actions))

        samples = self.samples if self.samples is not None else max(30, self.frames // 5)
        with tempfile.TemporaryDirectory() as tmp:
            with _Stopwatch() as recording:
                log = Recorder(laps=1, seed=0, max_rows=samples, car=self.car,
                               progress=False).record(track, Path(tmp) / "rec")
            with open(log, newline="") as handle:
                rows = sum(1 for _ in csv.reader(handle))
            jpegs = (Path(tmp) / "rec" / IMAGE_DIR).glob(f"*{IMAGE_SUFFIX}")
            sizes = [path.stat().st_size for path in jpegs]
        samples_per_s, samples_wall = recording.rates(rows)
        result = {
            "track": self.track,
            "car": env.car.name,
            "renderer_setup_s": round(setup_s, 3),
            "frames": self.frames,
            "camera_frames_per_s": round(fps, 1),
            "camera_frames_per_wall_s": round(fps_wall, 1),
            "ms_per_frame": round(1000 / fps, 3),
            "env_steps_per_s": round(steps_per_s, 1),
            "env_steps_per_wall_s": round(steps_wall, 1),
            "ms_per_env_step": round(1000 / steps_per_s, 3),
            "recorded_samples": rows,
            "recorded_samples_per_s": round(samples_per_s, 1),
            "recorded_samples_per_wall_s": round(samples_wall, 1),
            "recorded_s": round(recording.wall, 2),
            "mean_jpeg_kb": round(float(np.mean(sizes)) / 1024, 1),
        }
        print(f"bc.sim benchmark, track {self.track}, car {env.car.name}, one core "
              f"(cv2/torch threads = 1)")
        print(f"  renderer setup (world painting, per track+seed): {setup_s:8.2f} s")
        print(f"  camera frames rendered:   {fps:8.1f} frames/s  [wall {fps_wall:.0f}] "
              f"({1000 / fps:.2f} ms/frame, {self.frames} frames; "
              f"{_verdict(fps, TARGET_FRAMES_PER_S)})")
        print(f"  env.step:                 {steps_per_s:8.1f} steps/s   [wall {steps_wall:.0f}] "
              f"(dynamics + centreline + center camera, {1000 / steps_per_s:.2f} ms/step; "
              f"{_verdict(steps_per_s, TARGET_STEPS_PER_S)})")
        print(f"  recorded samples:         {samples_per_s:8.1f} samples/s [wall "
              f"{samples_wall:.0f}] (3 cameras + JPEG + write + csv row; {rows} rows in "
              f"{recording.wall:.2f} s; {_verdict(samples_per_s, TARGET_SAMPLES_PER_S)})")
        return result
