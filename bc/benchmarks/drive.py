"""Latency of the real drive server, beside the floor of the work it cannot avoid.

Exports an untrained network (conf/model/<model>.yaml; weights do not change latency),
starts ``scripts/drive.py model_path=...`` on a free loopback port, and drives ``frames``
telemetry messages through it in lockstep with bc.sim's `UnityClient` (the client that
speaks exactly like the Unity simulator) on center-camera frames of the built-in simulator.
The floor is JPEG decode + preprocessing + forward pass in this process with the server's
code and thread count, measured in blocks alternating with the round trips (the machine may
be shared, so both must see the same load).
"""

from __future__ import annotations

import base64
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from bc.settings import integer, optional, setting

DISTINCT_FRAMES = 32
WARMUP_FRAMES = 50
BLOCKS = 10
TARGET_P99_RATIO = 1.5
TARGET_REPLIES_PER_S = 200.0
THROTTLE_SENT = 0.2  # what the telemetry reports; the server's answer does not depend on it


def simulator_frames(count: int = DISTINCT_FRAMES, track: str = "lake") -> list[bytes]:
    """`count` center-camera JPEGs along an expert lap, encoded as the Unity client does."""
    from bc import images
    from bc.benchmarks.sim import expert_states
    from bc.sim.camera import renderer_for
    from bc.sim.track import load_track
    from bc.udacity import UNITY_JPEG_QUALITY

    geometry = load_track(track)
    renderer = renderer_for(geometry, seed=0)
    states = expert_states(geometry, count * 10)[::10]  # ~0.7 s apart
    return [images.encode_jpeg(renderer.render(state), UNITY_JPEG_QUALITY) for state in states]


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1000.0
    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99)),
            "mean_ms": float(values.mean())}


def floor_times(predictor: Any, jpegs: list[bytes], indices: range) -> list[float]:
    """Seconds for JPEG decode + preprocess + forward of each frame, one at a time."""
    times = []
    for index in indices:
        jpeg = jpegs[index % len(jpegs)]
        started = time.perf_counter()
        predictor.predict_jpeg(jpeg)
        times.append(time.perf_counter() - started)
    return times


def round_trips(client: Any, messages: list[str], indices: range) -> list[float]:
    """Seconds from sending each telemetry to receiving its ``steer``."""
    from bc.sim.autonomous import AutonomousError
    from bc.udacity import STEER_EVENT

    times = []
    for index in indices:
        started = time.perf_counter()
        reply = client.exchange(messages[index % len(messages)], index)
        times.append(time.perf_counter() - started)
        if reply.event != STEER_EVENT:
            raise AutonomousError(f"telemetry {index}: expected '{STEER_EVENT}', got "
                                  f"'{reply.event}' (the server refused the frame)")
    return times


@dataclass
class DriveBenchmark:
    """`frames` round trips through scripts/drive.py serving an untrained `model` (the
    conf/model group's config), `num_threads` torch threads (None: the server's default)."""

    model: Mapping[str, Any]
    frames: int = 1000
    num_threads: int | None = None

    def __post_init__(self) -> None:
        self.frames = setting("frames", self.frames, integer, lambda n: n >= 1, ">= 1")
        self.num_threads = setting("num_threads", self.num_threads, optional(integer),
                                   lambda n: n is None or n >= 1, ">= 1 (or null)")

    def export(self, folder: Path) -> Path:
        """The untrained model as a TorchScript file, as training exports it."""
        from bc import tracking
        from bc.models import build_model

        net = build_model(self.model).eval()
        return tracking.save_model(net, self.model, folder) / tracking.TORCHSCRIPT_FILE

    def run(self) -> dict[str, Any]:
        """Round-trip latency and throughput of the real server vs the floor, printed and
        returned. Floor and round trips alternate in BLOCKS blocks, so both see the same
        background load (the server idles while the floor runs and vice versa)."""
        from bc import tracking
        from bc.drive.launch import drive_server
        from bc.drive.predictor import default_num_threads, serving_predictor
        from bc.sim.autonomous import UnityClient, telemetry_message

        threads = self.num_threads or default_num_threads()
        jpegs = simulator_frames()
        messages = [telemetry_message(0.0, THROTTLE_SENT, 8 + index % 3,
                                      base64.b64encode(jpeg).decode("ascii"))
                    for index, jpeg in enumerate(jpegs)]
        load_before = os.getloadavg()[0]
        floor, round_trip = [], []
        with tempfile.TemporaryDirectory(prefix="bc-bench-") as tmp:
            workdir = Path(tmp)
            model_path = self.export(workdir / "model")
            predictor = serving_predictor(tracking.load_exported(model_path), threads)
            overrides = [f"model_path={model_path}", f"num_threads={threads}"]
            with drive_server(overrides, workdir) as server, \
                    UnityClient("127.0.0.1", server["port"]) as client:
                round_trips(client, messages, range(WARMUP_FRAMES))
                floor_times(predictor, jpegs, range(WARMUP_FRAMES))
                bounds = np.linspace(0, self.frames, BLOCKS + 1).astype(int)
                for start, stop in zip(bounds[:-1], bounds[1:]):
                    floor += floor_times(predictor, jpegs, range(start, stop))
                    round_trip += round_trips(client, messages, range(start, stop))
                startup_s = server["startup_s"]
        round_trip_stats = {**percentiles_ms(round_trip),
                            "replies_per_s": self.frames / sum(round_trip)}
        floor_stats = percentiles_ms(floor)
        result = {
            "model": self.model["_target_"].rsplit(".", 1)[-1], "frames": self.frames,
            "torch_threads": threads, "cpu_count": os.cpu_count(),
            "jpeg_bytes_mean": float(np.mean([len(jpeg) for jpeg in jpegs])),
            "load_avg_1min_before": load_before, "load_avg_1min_after": os.getloadavg()[0],
            "server_startup_s": startup_s, "round_trip": round_trip_stats, "floor": floor_stats,
            "p99_ratio": round_trip_stats["p99_ms"] / floor_stats["p99_ms"],
            "meets_p99_target":
                round_trip_stats["p99_ms"] <= TARGET_P99_RATIO * floor_stats["p99_ms"],
            "meets_throughput_target": round_trip_stats["replies_per_s"] >= TARGET_REPLIES_PER_S,
        }
        print(format_report(result))
        return result


def format_report(result: Mapping[str, Any]) -> str:
    rt, floor = result["round_trip"], result["floor"]
    return "\n".join([
        f"drive server benchmark: {result['model']} model, {result['frames']} frames, "
        f"{result['torch_threads']} torch thread(s), {result['cpu_count']} CPU(s), "
        f"JPEG {result['jpeg_bytes_mean'] / 1000:.1f} KB (bc.sim center camera)",
        f"  load average (1 min): {result['load_avg_1min_before']:.2f} before, "
        f"{result['load_avg_1min_after']:.2f} after",
        f"  server startup (process start -> 'serving' line): {result['server_startup_s']:.2f} s",
        f"  round trip (bc.sim UnityClient, lockstep): p50 {rt['p50_ms']:.2f} ms, "
        f"p99 {rt['p99_ms']:.2f} ms, {rt['replies_per_s']:.0f} replies/s",
        f"  floor (JPEG decode + preprocess + forward): p50 {floor['p50_ms']:.2f} ms, "
        f"p99 {floor['p99_ms']:.2f} ms  (interleaved with the round trips)",
        f"  p99 round trip / p99 floor: {result['p99_ratio']:.2f} "
        f"(target <= {TARGET_P99_RATIO}: {'met' if result['meets_p99_target'] else 'NOT met'}); "
        f"replies/s target >= {TARGET_REPLIES_PER_S:.0f}: "
        f"{'met' if result['meets_throughput_target'] else 'NOT met'}",
    ])
