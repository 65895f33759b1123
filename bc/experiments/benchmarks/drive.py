"""Latency of the real drive server, beside the floor of the work it cannot avoid, for each
runtime (torch, ONNX Runtime).

Exports an untrained network (conf/model/<model>.yaml; weights do not change latency) as
TorchScript and ONNX, and per runtime starts ``scripts/drive.py model_path=... runtime=...``
on a free loopback port and drives ``frames`` telemetry messages through it in lockstep with
bc.sim's `UnityClient` (the client that speaks exactly like the Unity simulator) on
center-camera frames of the built-in simulator. The floor is JPEG decode + preprocessing +
forward pass in this process with the server's code and thread count, measured in blocks
alternating with the round trips (the machine may be shared, so both must see the same load);
the forward pass alone is timed too. The targets apply to the faster runtime (by round trip).
"""

from __future__ import annotations

import base64
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from bc.errors import ConfigError
from bc.inference.onnx_export import ONNX_FILE
from bc.core.settings import integer, optional, setting
from bc.inference import artifact
from bc.inference.artifact import TORCHSCRIPT_FILE
from bc.core import images
from bc.core.udacity import STEER_EVENT
from bc.core.udacity import UNITY_JPEG_QUALITY
from bc.drive.launch import drive_server
from bc.experiments.benchmarks.sim import expert_states
from bc.inference.predictor import default_num_threads
from bc.inference.predictor import serving_predictor
from bc.models import build_model
from bc.sim.camera import renderer_for
from bc.sim.track import load_track
from bc.sim.unity_client import AutonomousError
from bc.sim.unity_client import UnityClient
from bc.sim.unity_client import telemetry_message

DISTINCT_FRAMES = 32
WARMUP_FRAMES = 50
BLOCKS = 10
TARGET_P99_RATIO = 1.5
TARGET_REPLIES_PER_S = 1000.0
RUNTIMES = ("torch", "onnx")
THROTTLE_SENT = 0.2  # what the telemetry reports; the server's answer does not depend on it


def simulator_frames(count: int = DISTINCT_FRAMES, track: str = "lake") -> list[bytes]:
    """`count` center-camera JPEGs along an expert lap, encoded as the Unity client does."""

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


def forward_times(predictor: Any, inputs: list[Any], indices: range) -> list[float]:
    """Seconds for the forward pass alone on already preprocessed frames."""
    import torch

    times = []
    net = predictor.model.net
    with torch.inference_mode():
        for index in indices:
            batch = inputs[index % len(inputs)]
            started = time.perf_counter()
            net(batch)
            times.append(time.perf_counter() - started)
    return times


def round_trips(client: Any, messages: list[str], indices: range) -> list[float]:
    """Seconds from sending each telemetry to receiving its ``steer``."""

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
    conf/model group's config) with each of `runtimes` (torch, onnx), `num_threads` intra-op
    threads (None: the server's default)."""

    model: Mapping[str, Any]
    frames: int = 1000
    num_threads: int | None = None
    runtimes: Sequence[str] = RUNTIMES

    def __post_init__(self) -> None:
        self.frames = setting("frames", self.frames, integer, lambda n: n >= 1, ">= 1")
        self.num_threads = setting("num_threads", self.num_threads, optional(integer),
                                   lambda n: n is None or n >= 1, ">= 1 (or null)")
        runtimes = [self.runtimes] if isinstance(self.runtimes, str) else list(self.runtimes)
        if not runtimes or any(runtime not in RUNTIMES for runtime in runtimes):
            raise ConfigError(f"runtimes: expected a list of {', '.join(RUNTIMES)}, got {self.runtimes!r}")
        self.runtimes = tuple(dict.fromkeys(runtimes))

    def export(self, folder: Path) -> Path:
        """The untrained model saved as training saves it (TorchScript and ONNX files)."""

        net = build_model(self.model).eval()
        return artifact.save_model(net, self.model, folder)

    def measure(self, runtime: str, model_path: Path, jpegs: list[bytes], messages: list[str],
                threads: int, workdir: Path) -> dict[str, Any]:
        """Forward, floor and round trip of one runtime (module doc)."""

        predictor = serving_predictor(artifact.load_exported(model_path), threads)
        inputs = [predictor.model_input(predictor.decode(jpeg)) for jpeg in jpegs]
        forward, floor, round_trip = [], [], []
        overrides = [f"model_path={model_path}", f"runtime={runtime}", f"num_threads={threads}"]
        with drive_server(overrides, workdir, f"drive_server-{runtime}.log") as server, \
                UnityClient("127.0.0.1", server["port"]) as client:
            round_trips(client, messages, range(WARMUP_FRAMES))
            floor_times(predictor, jpegs, range(WARMUP_FRAMES))
            bounds = np.linspace(0, self.frames, BLOCKS + 1).astype(int)
            for start, stop in zip(bounds[:-1], bounds[1:]):
                forward += forward_times(predictor, inputs, range(start, stop))
                floor += floor_times(predictor, jpegs, range(start, stop))
                round_trip += round_trips(client, messages, range(start, stop))
            startup_s = server["startup_s"]
        round_trip_stats = {**percentiles_ms(round_trip), "replies_per_s": self.frames / sum(round_trip)}
        floor_stats = percentiles_ms(floor)
        return {"runtime": runtime, "server_startup_s": startup_s, "forward": percentiles_ms(forward),
                "floor": floor_stats, "round_trip": round_trip_stats,
                "p99_ratio": round_trip_stats["p99_ms"] / floor_stats["p99_ms"]}

    def run(self) -> dict[str, Any]:
        """Forward, floor and round trip per runtime, printed and returned; the targets are
        judged on the runtime with the most replies/s."""

        threads = self.num_threads or default_num_threads()
        jpegs = simulator_frames()
        messages = [telemetry_message(0.0, THROTTLE_SENT, 8 + index % 3,
                                      base64.b64encode(jpeg).decode("ascii"))
                    for index, jpeg in enumerate(jpegs)]
        load_before = os.getloadavg()[0]
        with tempfile.TemporaryDirectory(prefix="bc-bench-") as tmp:
            workdir = Path(tmp)
            folder = self.export(workdir / "model")
            files = {"torch": folder / TORCHSCRIPT_FILE, "onnx": folder / ONNX_FILE}
            measured = {runtime: self.measure(runtime, files[runtime], jpegs, messages, threads, workdir)
                        for runtime in self.runtimes}
        fastest = max(measured.values(), key=lambda item: item["round_trip"]["replies_per_s"])
        result = {
            "model": self.model["_target_"].rsplit(".", 1)[-1], "frames": self.frames,
            "threads": threads, "cpu_count": os.cpu_count(),
            "jpeg_bytes_mean": float(np.mean([len(jpeg) for jpeg in jpegs])),
            "load_avg_1min_before": load_before, "load_avg_1min_after": os.getloadavg()[0],
            "runtimes": measured, "fastest": fastest["runtime"],
            "round_trip": fastest["round_trip"], "floor": fastest["floor"], "p99_ratio": fastest["p99_ratio"],
            "meets_p99_target": fastest["p99_ratio"] <= TARGET_P99_RATIO,
            "meets_throughput_target": fastest["round_trip"]["replies_per_s"] >= TARGET_REPLIES_PER_S,
        }
        print(format_report(result))
        return result


def format_report(result: Mapping[str, Any]) -> str:
    lines = [
        f"drive server benchmark: {result['model']} model, {result['frames']} frames per runtime, "
        f"{result['threads']} intra-op thread(s), {result['cpu_count']} CPU(s), "
        f"JPEG {result['jpeg_bytes_mean'] / 1000:.1f} KB (bc.sim center camera)",
        f"  load average (1 min): {result['load_avg_1min_before']:.2f} before, "
        f"{result['load_avg_1min_after']:.2f} after",
    ]
    for runtime, measured in result["runtimes"].items():
        forward, floor, rt = measured["forward"], measured["floor"], measured["round_trip"]
        lines += [
            f"  {runtime}: server startup {measured['server_startup_s']:.2f} s",
            f"    forward pass:                               p50 {forward['p50_ms']:.3f} ms, "
            f"p99 {forward['p99_ms']:.3f} ms",
            f"    floor (JPEG decode + preprocess + forward): p50 {floor['p50_ms']:.3f} ms, "
            f"p99 {floor['p99_ms']:.3f} ms",
            f"    round trip (UnityClient, lockstep):         p50 {rt['p50_ms']:.3f} ms, "
            f"p99 {rt['p99_ms']:.3f} ms, {rt['replies_per_s']:.0f} replies/s "
            f"(p99 / floor p99 {measured['p99_ratio']:.2f})",
        ]
    lines.append(
        f"  faster runtime: {result['fastest']}; p99 round trip / p99 floor {result['p99_ratio']:.2f} "
        f"(target <= {TARGET_P99_RATIO}: {'met' if result['meets_p99_target'] else 'NOT met'}); "
        f"replies/s {result['round_trip']['replies_per_s']:.0f} (target >= {TARGET_REPLIES_PER_S:.0f}: "
        f"{'met' if result['meets_throughput_target'] else 'NOT met'})")
    return "\n".join(lines)
