"""Simulator speed on one core: rendered camera frames/s and recorded samples/s.

A recorded sample is what the recorder does per row: expert + dynamics, three camera
renders, three JPEG encodes and file writes, one flushed CSV row.
"""

from __future__ import annotations

import csv
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bc.settings import integer, optional, setting
from bc.sim.car import Car, CarState
from bc.udacity import CAMERAS, IMAGE_DIR, IMAGE_SUFFIX

WARMUP_FRAMES = 20
START_SPEED_MPS = 8.0


def expert_states(track: Any, count: int) -> list[CarState]:
    """States along a clean expert drive, so frames show realistic views."""
    from bc.sim.expert import Expert

    car, expert = Car(), Expert(track)
    x, y, heading = track.pose_at(0.0)
    state = CarState(x, y, heading, START_SPEED_MPS)
    states = []
    for _ in range(count):
        states.append(state)
        state = car.step(state, *expert.act(state))
    return states


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


@dataclass
class SimBenchmark:
    """Camera frames/s of `frames` renders of `track`, then recorded samples/s (`samples`,
    None: frames / 5, at least 30)."""

    frames: int = 500
    track: str = "lake"
    samples: int | None = None

    def __post_init__(self) -> None:
        self.frames = setting("frames", self.frames, integer, lambda n: n >= 1, ">= 1")
        self.samples = setting("samples", self.samples, optional(integer),
                               lambda n: n is None or n >= 1, ">= 1 (or null)")

    def run(self) -> dict[str, Any]:
        """Measure, print and return the numbers."""
        from bc.sim.camera import Renderer
        from bc.sim.recorder import Recorder
        from bc.sim.track import load_track

        one_core()
        started = time.perf_counter()
        track = load_track(self.track)
        renderer = Renderer(track, seed=0)
        setup_s = time.perf_counter() - started
        states = expert_states(track, self.frames)
        for state in states[:WARMUP_FRAMES]:
            renderer.render(state)
        started = time.perf_counter()
        for index, state in enumerate(states):
            renderer.render(state, CAMERAS[index % len(CAMERAS)])
        fps = self.frames / (time.perf_counter() - started)

        samples = self.samples if self.samples is not None else max(30, self.frames // 5)
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            log = Recorder(laps=1, seed=0, max_rows=samples, progress=False).record(
                track, Path(tmp) / "rec", renderer=renderer)
            record_s = time.perf_counter() - started
            with open(log, newline="") as handle:
                rows = sum(1 for _ in csv.reader(handle))
            jpegs = (Path(tmp) / "rec" / IMAGE_DIR).glob(f"*{IMAGE_SUFFIX}")
            sizes = [path.stat().st_size for path in jpegs]
        result = {
            "track": self.track,
            "renderer_setup_s": round(setup_s, 3),
            "frames": self.frames,
            "camera_frames_per_s": round(fps, 1),
            "ms_per_frame": round(1000 / fps, 3),
            "recorded_samples": rows,
            "recorded_samples_per_s": round(rows / record_s, 1),
            "recorded_s": round(record_s, 2),
            "mean_jpeg_kb": round(float(np.mean(sizes)) / 1024, 1),
        }
        print(f"bc.sim benchmark, track {self.track}, one core (cv2/torch threads = 1)")
        print(f"  renderer setup (world painting, per track+seed): {setup_s:8.2f} s")
        print(f"  camera frames rendered:   {fps:8.1f} frames/s  "
              f"({1000 / fps:.2f} ms/frame, {self.frames} frames)")
        print(f"  recorded samples:         {rows / record_s:8.1f} samples/s "
              f"(3 cameras + JPEG + write + csv row; {rows} rows in {record_s:.2f} s)")
        return result
