"""Simulator speed on one core: rendered camera frames/s and recorded samples/s.

    python -m bc.sim.benchmark [--frames 500] [--track lake]

A recorded sample is what the recorder does per row: expert + dynamics, three camera
renders, three JPEG encodes and file writes, one flushed CSV row.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported: one core, honestly

import argparse  # noqa: E402
import csv  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from bc.sim.camera import Renderer  # noqa: E402
from bc.udacity import CAMERAS  # noqa: E402
from bc.sim.car import Car, CarState  # noqa: E402
from bc.sim.expert import Expert  # noqa: E402
from bc.sim.recorder import Recorder  # noqa: E402
from bc.sim.track import load_track  # noqa: E402

WARMUP_FRAMES = 20


def _poses(track, n: int) -> list[CarState]:
    """States along a clean expert drive, so frames show realistic views."""
    car, expert = Car(), Expert(track)
    x, y, h = track.pose_at(0.0)
    state = CarState(x, y, h, 8.0)
    out = []
    for _ in range(n):
        out.append(state)
        state = car.step(state, *expert.act(state))
    return out


def run_benchmark(frames: int = 500, track: str = "lake", samples: int | None = None) -> dict:
    """Measure and print camera frames/s and recorded samples/s on one core."""
    cv2.setNumThreads(1)
    try:
        import torch  # noqa: F401  (only to pin its threads if something imported it)

        torch.set_num_threads(1)
    except ImportError:
        pass
    t0 = time.perf_counter()
    trk = load_track(track)
    renderer = Renderer(trk, seed=0)
    setup_s = time.perf_counter() - t0
    states = _poses(trk, frames)
    for st in states[:WARMUP_FRAMES]:
        renderer.render(st)
    t0 = time.perf_counter()
    for i, st in enumerate(states):
        renderer.render(st, CAMERAS[i % 3])
    render_s = time.perf_counter() - t0
    fps = frames / render_s

    n_samples = samples if samples is not None else max(30, frames // 5)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        log = Recorder(laps=1, seed=0, max_rows=n_samples, progress=False).record(
            trk, Path(tmp) / "rec", renderer=renderer)
        record_s = time.perf_counter() - t0
        with open(log, newline="") as fh:
            rows = sum(1 for _ in csv.reader(fh))
        sizes = [p.stat().st_size for p in (Path(tmp) / "rec" / "IMG").glob("*.jpg")]
        jpeg_kb = float(np.mean(sizes)) / 1024
    result = {
        "track": track,
        "renderer_setup_s": round(setup_s, 3),
        "frames": frames,
        "camera_frames_per_s": round(fps, 1),
        "ms_per_frame": round(1000 / fps, 3),
        "recorded_samples": rows,
        "recorded_samples_per_s": round(rows / record_s, 1),
        "recorded_s": round(record_s, 2),
        "mean_jpeg_kb": round(jpeg_kb, 1),
    }
    print(f"bc.sim benchmark, track {track}, one core (cv2/torch/BLAS threads = 1)")
    print(f"  renderer setup (world painting, per track+seed): {setup_s:8.2f} s")
    print(f"  camera frames rendered:   {fps:8.1f} frames/s  "
          f"({1000 / fps:.2f} ms/frame, {frames} frames)")
    print(f"  recorded samples:         {rows / record_s:8.1f} samples/s "
          f"(3 cameras + JPEG + write + csv row; {rows} rows in {record_s:.2f} s)")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--track", default="lake")
    parser.add_argument("--samples", type=int, default=None,
                        help="recorded samples (default frames/5)")
    args = parser.parse_args()
    run_benchmark(args.frames, args.track, args.samples)


if __name__ == "__main__":
    main()
