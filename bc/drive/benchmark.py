"""Latency of the real drive server, beside the floor of the work it cannot avoid.

    python -m bc.drive.benchmark [--frames 1000] [--model nvidia] [--num-threads N]

Exports an untrained network (``conf/model/<model>.yaml``; weights do not change latency),
starts ``scripts/drive.py model_path=...`` in a subprocess on a free loopback port, and drives
``frames`` telemetry messages through it in lockstep with a client that behaves like the
Unity simulator (raw websocket, ``EIO=4`` URL, no ``40``, string payloads, 320x160 JPEGs).
The floor is JPEG decode + preprocessing + forward pass in this process with the server's
code and thread count, measured in blocks alternating with the round trips (the machine may
be shared, so both must see the same load).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bc.drive.launch import drive_server
from bc.drive.predictor import Predictor

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_CONFIGS = REPO_ROOT / "conf" / "model"
REPLY_TIMEOUT_S = 10.0
DISTINCT_FRAMES = 32
WARMUP_FRAMES = 50
BLOCKS = 10
TARGET_P99_RATIO = 1.5
TARGET_REPLIES_PER_S = 200.0
FRAME_WIDTH, FRAME_HEIGHT = 320, 160
JPEG_QUALITY = 90  # typical simulator frames are 10-20 KB


def synthetic_jpegs(count: int = DISTINCT_FRAMES, seed: int = 0) -> list[bytes]:
    """``count`` road-like 320x160 RGB scenes encoded as JPEG (RGB order, like the sim)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        rgb = np.zeros((FRAME_HEIGHT, FRAME_WIDTH, 3), np.uint8)
        horizon = FRAME_HEIGHT * 2 // 5
        rgb[:horizon], rgb[horizon:] = (120, 170, 235), (70, 140, 50)
        shift = int(rng.integers(-80, 80))
        road = np.array([[140 + shift // 3, horizon], [180 + shift // 3, horizon],
                         [FRAME_WIDTH - 10 + shift, FRAME_HEIGHT], [10 + shift, FRAME_HEIGHT]],
                        np.int32)
        cv2.fillPoly(rgb, [road], (110, 105, 100))
        rgb = np.clip(rgb + rng.integers(-12, 12, rgb.shape), 0, 255).astype(np.uint8)
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        assert ok
        frames.append(data.tobytes())
    return frames


def export_model(model: str, folder: Path) -> Path:
    """An untrained ``model`` (name of a conf/model yaml) exported with ``save_model``."""
    import yaml

    from bc import tracking

    config_path = MODEL_CONFIGS / f"{model}.yaml"
    if not config_path.is_file():
        known = sorted(p.stem for p in MODEL_CONFIGS.glob("*.yaml"))
        raise ValueError(f"model: no {config_path}; expected one of {known}")
    config = yaml.safe_load(config_path.read_text())
    net = tracking.build_model(config).eval()
    return tracking.save_model(net, config, folder) / tracking.TORCHSCRIPT_FILE


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1000.0
    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99)),
            "mean_ms": float(values.mean())}


def load_predictor(model_path: Path, num_threads: int | None) -> Predictor:
    """The server's own decode + preprocess + forward path, in this process."""
    from bc import tracking
    from bc.drive.predictor import configure_torch

    configure_torch(num_threads)
    predictor = Predictor(tracking.load_exported(model_path))
    predictor.warm_up()
    return predictor


def floor_times(predictor: Predictor, jpegs: list[bytes], indices: range) -> list[float]:
    """Seconds for JPEG decode + preprocess + forward of each frame, one at a time."""
    times = []
    for index in indices:
        jpeg = jpegs[index % len(jpegs)]
        start = time.perf_counter()
        predictor.predict_jpeg(jpeg)
        times.append(time.perf_counter() - start)
    return times


def _wait_reply(ws: Any) -> str:
    """Next steer/manual frame; answers engine pings like the Unity client."""
    while True:
        frame = ws.recv()
        if frame == "2":
            ws.send("3")
        elif frame.startswith(('42["steer"', '42["manual"')):
            return frame


class _Pinger:
    """The Unity client's own engine ping every ``pingInterval``: python-engineio 3.x drops a
    client that has not pinged for pingInterval + 5 s."""

    def __init__(self, ws: Any, handshake: str) -> None:
        self.ws = ws
        self.interval = json.loads(handshake[1:])["pingInterval"] / 1000.0
        self.last = time.monotonic()

    def maybe_ping(self) -> None:
        if time.monotonic() - self.last >= self.interval:
            self.ws.send("2")  # the "3" answer is skipped by _wait_reply
            self.last = time.monotonic()


class LockstepClient:
    """A lean Unity-like client: raw websocket to the EIO=4 URL, never ``40``, string
    payloads, pings every ``pingInterval``, one telemetry in flight."""

    def __init__(self, port: int, jpegs: list[bytes]) -> None:
        import websocket

        self.messages = ["42" + json.dumps(["telemetry", {
            "steering_angle": "0.0000", "throttle": "0.2000", "speed": f"{8 + i % 3:.4f}",
            "image": base64.b64encode(jpeg).decode("ascii")}], separators=(",", ":"))
            for i, jpeg in enumerate(jpegs)]
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket",
            timeout=REPLY_TIMEOUT_S)
        handshake = self.ws.recv()
        if not handshake.startswith("0"):
            raise RuntimeError(f"expected an Engine.IO open packet, got {handshake!r}")
        self.pinger = _Pinger(self.ws, handshake)
        _wait_reply(self.ws)  # steer 0/0 on connect

    def round_trips(self, indices: range) -> list[float]:
        """Seconds from sending each telemetry to receiving its ``steer``."""
        times = []
        for index in indices:
            self.pinger.maybe_ping()
            start = time.perf_counter()
            self.ws.send(self.messages[index % len(self.messages)])
            reply = _wait_reply(self.ws)
            times.append(time.perf_counter() - start)
            if not reply.startswith('42["steer"'):
                raise RuntimeError(f"frame {index}: expected steer, got {reply[:80]}")
        return times

    def close(self) -> None:
        self.ws.close()


def run_benchmark(frames: int = 1000, model: str = "nvidia",
                  num_threads: int | None = None) -> dict[str, Any]:
    """Round-trip latency and throughput of the real server vs the floor, same machine, same run.

    Floor and round trips alternate in ``BLOCKS`` blocks, so both see the same background
    load on a shared machine (the server idles while the floor runs and vice versa).
    """
    from bc.drive.predictor import default_num_threads

    if frames < 1:
        raise ValueError(f"frames: expected >= 1, got {frames}")
    threads = num_threads or default_num_threads()
    jpegs = synthetic_jpegs()
    load_before = os.getloadavg()[0]
    floor, round_trip = [], []
    with tempfile.TemporaryDirectory(prefix="bc-bench-") as tmp:
        workdir = Path(tmp)
        model_path = export_model(model, workdir / "model")
        predictor = load_predictor(model_path, threads)
        overrides = [f"model_path={model_path}", f"num_threads={threads}"]
        with drive_server(overrides, workdir) as server:
            client = LockstepClient(server["port"], jpegs)
            try:
                client.round_trips(range(WARMUP_FRAMES))
                floor_times(predictor, jpegs, range(WARMUP_FRAMES))
                bounds = np.linspace(0, frames, BLOCKS + 1).astype(int)
                for start, stop in zip(bounds[:-1], bounds[1:]):
                    floor += floor_times(predictor, jpegs, range(start, stop))
                    round_trip += client.round_trips(range(start, stop))
            finally:
                client.close()
            startup_s = server["startup_s"]
    round_trip_stats = {**percentiles_ms(round_trip), "replies_per_s": frames / sum(round_trip)}
    floor_stats = percentiles_ms(floor)
    return {
        "model": model, "frames": frames, "torch_threads": threads, "cpu_count": os.cpu_count(),
        "jpeg_bytes_mean": float(np.mean([len(j) for j in jpegs])),
        "load_avg_1min_before": load_before, "load_avg_1min_after": os.getloadavg()[0],
        "server_startup_s": startup_s, "round_trip": round_trip_stats, "floor": floor_stats,
        "p99_ratio": round_trip_stats["p99_ms"] / floor_stats["p99_ms"],
        "meets_p99_target": round_trip_stats["p99_ms"] <= TARGET_P99_RATIO * floor_stats["p99_ms"],
        "meets_throughput_target": round_trip_stats["replies_per_s"] >= TARGET_REPLIES_PER_S,
    }


def format_report(result: dict[str, Any]) -> str:
    rt, floor = result["round_trip"], result["floor"]
    return "\n".join([
        f"drive server benchmark: {result['model']} model, {result['frames']} frames, "
        f"{result['torch_threads']} torch thread(s), {result['cpu_count']} CPU(s), "
        f"JPEG {result['jpeg_bytes_mean'] / 1000:.1f} KB",
        f"  load average (1 min): {result['load_avg_1min_before']:.2f} before, "
        f"{result['load_avg_1min_after']:.2f} after",
        f"  server startup (process start -> 'serving' line): {result['server_startup_s']:.2f} s",
        f"  round trip (Unity-like websocket, lockstep): p50 {rt['p50_ms']:.2f} ms, "
        f"p99 {rt['p99_ms']:.2f} ms, {rt['replies_per_s']:.0f} replies/s",
        f"  floor (JPEG decode + preprocess + forward):  p50 {floor['p50_ms']:.2f} ms, "
        f"p99 {floor['p99_ms']:.2f} ms  (interleaved with the round trips)",
        f"  p99 round trip / p99 floor: {result['p99_ratio']:.2f} "
        f"(target <= {TARGET_P99_RATIO}: {'met' if result['meets_p99_target'] else 'NOT met'}); "
        f"replies/s target >= {TARGET_REPLIES_PER_S:.0f}: "
        f"{'met' if result['meets_throughput_target'] else 'NOT met'}",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--model", default="nvidia", help="a conf/model/<name>.yaml")
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print the result as JSON too")
    args = parser.parse_args(argv)
    result = run_benchmark(args.frames, args.model, args.num_threads)
    print(format_report(result))
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
