"""Closed-loop evaluation speed: steps/s of the episode loop (bc/evaluation/episodes.py) with
PilotNet, serial against vectorised, beside the floor; and what the `closed_loop` callback
costs next to a PilotNet training epoch.

* **serial**: one episode at a time, batch 1 (the in-process loop the callback, DAgger and
  the benchmarks ran before the vector API): render, JPEG encode, decode, preprocess,
  forward, the drive server's reply, per step;
* **sync N**: the N episodes in this process, one batched forward pass per step;
* **async N**: the N episodes in worker processes (two groups that alternate), batched;
* **floor**: each part of a step measured alone (env step with its render, JPEG encode +
  decode, preprocess, the forward pass per frame at batch N), summed, divided by the cores.

Targets (N = 16, JPEG on): async >= 2x serial, and <= 1.3x the floor. With `callback`, the
`closed_loop` callback's work on one lap of lake (`Scorer.score`, warm: its envs kept as in
training) against a PilotNet epoch (train + validation, the second epoch) on `record_laps`
laps of lake recorded by the expert; target <= 10 %.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from pytorch_lightning import Callback

from bc.core.settings import flag, integer, setting
from bc.core import images
from bc.core.preprocess import to_tensor
from bc.core.udacity import UNITY_JPEG_QUALITY
from bc.evaluation.episodes import EpisodeSpec
from bc.evaluation.episodes import Episodes
from bc.evaluation.policies import ModelPolicy
from bc.evaluation.recorder import Recorder
from bc.evaluation.score import Scorer
from bc.inference.artifact import LoadedModel
from bc.models import build_model

TARGET_SPEEDUP = 2.0
TARGET_FLOOR_RATIO = 1.3
TARGET_CALLBACK_SHARE = 0.10
TRACK_MIX = ("lake", "lake-reverse", "mountain", "random:1")


def cores() -> int:
    return len(os.sched_getaffinity(0))


class EpochTimer(Callback):
    """Writes each training epoch's wall time (train + validation) to `path` (JSON list)."""

    def __init__(self, path: str) -> None:
        self.path, self.times, self._started = Path(path), [], 0.0

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.times.append(time.perf_counter() - self._started)
        self.path.write_text(json.dumps(self.times))


@dataclass
class ClosedLoopBenchmark:
    """Module doc. `model`: the conf/model config driving (untrained: weights do not change
    the cost per step); `episodes`: N; `steps`: per episode; `serial_episodes`: how many of
    them the serial loop drives (its rate does not depend on N)."""

    model: Mapping[str, Any] = field(default_factory=dict)
    episodes: int = 16
    steps: int = 150
    serial_episodes: int = 4
    jpeg: bool = True
    callback: bool = True
    record_laps: float = 2.0
    out: str | None = None

    def __post_init__(self) -> None:
        for name in ("episodes", "steps", "serial_episodes"):
            setattr(self, name, setting(name, getattr(self, name), integer,
                                        lambda value: value >= 1, ">= 1"))
        self.jpeg, self.callback = flag("jpeg", self.jpeg), flag("callback", self.callback)

    def specs(self) -> list[Any]:
        """N episodes of `steps` steps: a mix of tracks, directions, lightings, start points."""

        specs = []
        for index in range(self.episodes):
            name = TRACK_MIX[index % len(TRACK_MIX)]
            track, reverse = name.removesuffix("-reverse"), name.endswith("-reverse")
            specs.append(EpisodeSpec(track, laps=None, reverse=reverse, lighting=index,
                                     start_s=37.0 * index, start_speed_mph=15.0,
                                     max_steps=self.steps))
        return specs

    def loaded_model(self) -> Any:

        import torch

        torch.manual_seed(0)
        net = build_model(dict(self.model)).eval()
        return LoadedModel(net=net, spec=net.preprocess_spec, source="untrained",
                           outputs=tuple(net.outputs))

    def rate(self, specs: Sequence[Any], policy: Any, vectorization: str,
             jpeg: bool) -> dict[str, float]:
        """Steps/s of driving `specs` (the envs built and warmed first, not timed)."""

        with Episodes(specs, jpeg=jpeg, vectorization=vectorization) as episodes:
            episodes.run(policy)  # renderers, worker processes, first forward passes
            started = time.perf_counter()
            results = episodes.run(policy)
            wall = time.perf_counter() - started
        steps = sum(result.steps for result in results)
        return {"steps": steps, "wall_s": wall, "steps_per_s": steps / wall}

    def serial_rate(self, specs: Sequence[Any], policy: Any) -> dict[str, float]:
        total = {"steps": 0, "wall_s": 0.0}
        for spec in specs[:self.serial_episodes]:
            part = self.rate([spec], policy, "sync", self.jpeg)
            total["steps"] += part["steps"]
            total["wall_s"] += part["wall_s"]
        return {**total, "steps_per_s": total["steps"] / total["wall_s"]}

    def floor(self, specs: Sequence[Any], policy: Any) -> dict[str, float]:
        """Per step, ms: each part alone (module doc), over `steps` steps of the first spec."""

        import torch

        env = specs[0].make(jpeg=False)
        observation, _ = env.reset()
        frames, started = [], time.perf_counter()
        for _ in range(self.steps):
            observation, *_ = env.step((0.0, 0.3))
            frames.append(observation)
        env_ms = (time.perf_counter() - started) * 1000 / self.steps
        started = time.perf_counter()
        jpegs = [images.encode_jpeg(frame, UNITY_JPEG_QUALITY) for frame in frames]
        decoded = [images.decode_jpeg(jpeg) for jpeg in jpegs]
        jpeg_ms = (time.perf_counter() - started) * 1000 / self.steps if self.jpeg else 0.0
        spec = policy.predictor.model.spec
        started = time.perf_counter()
        inputs = [spec(frame) for frame in decoded]
        preprocess_ms = (time.perf_counter() - started) * 1000 / self.steps
        batches = [to_tensor(np.stack(inputs[i:i + self.episodes]))
                   for i in range(0, len(inputs) - self.episodes + 1, self.episodes)]
        net = policy.predictor.model.net
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        with torch.inference_mode():
            net(batches[0])
            started = time.perf_counter()
            for batch in batches:
                net(batch)
        torch.set_num_threads(threads)
        forward_ms = (time.perf_counter() - started) * 1000 / (len(batches) * self.episodes)
        total = env_ms + jpeg_ms + preprocess_ms + forward_ms
        return {"env_step_ms": env_ms, "jpeg_ms": jpeg_ms, "preprocess_ms": preprocess_ms,
                "forward_ms_per_frame": forward_ms, "cpu_ms_per_step": total,
                "cores": cores(), "floor_ms_per_step": total / cores(),
                "floor_steps_per_s": 1000.0 * cores() / total}

    def callback_cost(self, policy: Any, work: Path) -> dict[str, float]:
        """The callback's Scorer on one lap of lake vs a PilotNet epoch on record_laps laps."""

        scorer = Scorer([{"track": "lake", "laps": 1.0}])
        scorer.score(policy)  # the first epoch builds the envs and the expert's reference
        started = time.perf_counter()
        scorer.score(policy)
        score_s = time.perf_counter() - started
        steps = scorer.last[0].steps
        scorer.close()
        data = work / "lake"
        Recorder(laps=self.record_laps, speed_mph=None, progress=False).record("lake", data)
        timer = work / "epochs.json"
        command = [sys.executable, "-m", "bc.commands.train", "model=nvidia",
                   f"data.paths=[{data}]", "trainer.max_epochs=2", f"output_dir={work / 'train'}",
                   f"tracking_uri=sqlite:///{work / 'mlflow.db'}", "callbacks.insight_plots=null",
                   "callbacks.early_stopping=null", "callbacks.progress_bar.refresh_rate=0",
                   f"data.cache_dir={work / 'cache'}",
                   f"+callbacks.epoch_timer._target_={__name__}.EpochTimer",
                   f"+callbacks.epoch_timer.path={timer}"]
        subprocess.run(command, check=True, cwd=work, stdout=subprocess.DEVNULL)
        epoch_s = json.loads(timer.read_text())[-1]
        rows = sum(1 for _ in open(data / "driving_log.csv"))
        return {"score_s": score_s, "score_steps": steps, "epoch_s": epoch_s,
                "recorded_rows": rows, "share": score_s / epoch_s}

    def run(self) -> dict[str, Any]:

        policy = ModelPolicy(self.loaded_model(), 20.0)
        specs = self.specs()
        load = os.getloadavg()[0]
        print(f"closed loop: {self.model.get('_target_', '?').rsplit('.', 1)[-1]}, "
              f"N={self.episodes} episodes x {self.steps} steps, JPEG "
              f"{'on' if self.jpeg else 'off'}, {cores()} cores (load {load:.1f})", flush=True)
        result: dict[str, Any] = {"episodes": self.episodes, "steps": self.steps,
                                  "jpeg": self.jpeg, "load_before": load}
        result["floor"] = floor = self.floor(specs, policy)
        print(f"  floor: env step {floor['env_step_ms']:.2f} + JPEG {floor['jpeg_ms']:.2f} + "
              f"preprocess {floor['preprocess_ms']:.2f} + forward {floor['forward_ms_per_frame']:.2f}"
              f" = {floor['cpu_ms_per_step']:.2f} ms per step / {floor['cores']} cores = "
              f"{floor['floor_steps_per_s']:.0f} steps/s", flush=True)
        result["serial"] = serial = self.serial_rate(specs, policy)
        print(f"  serial (N=1, batch 1):  {serial['steps_per_s']:7.0f} steps/s", flush=True)
        for name in ("sync", "async"):
            result[name] = part = self.rate(specs, policy, name, self.jpeg)
            print(f"  {name:<5} (N={self.episodes}, batched): {part['steps_per_s']:7.0f} steps/s  "
                  f"{part['steps_per_s'] / serial['steps_per_s']:.2f}x serial, floor / it = "
                  f"{floor['floor_steps_per_s'] / part['steps_per_s']:.2f}", flush=True)
        best = result["async"]["steps_per_s"]
        result["speedup"] = best / serial["steps_per_s"]
        result["floor_ratio"] = floor["floor_steps_per_s"] / best
        print(f"  target: async >= {TARGET_SPEEDUP:g}x serial: {result['speedup']:.2f}x "
              f"({'met' if result['speedup'] >= TARGET_SPEEDUP else 'NOT met'}); within "
              f"{TARGET_FLOOR_RATIO:g}x the floor: {result['floor_ratio']:.2f}x "
              f"({'met' if result['floor_ratio'] <= TARGET_FLOOR_RATIO else 'NOT met'})",
              flush=True)
        if self.callback:
            with tempfile.TemporaryDirectory() as tmp:
                result["callback"] = cost = self.callback_cost(policy, Path(tmp))
            print(f"  closed_loop callback, 1 lap of lake ({cost['score_steps']} steps): "
                  f"{cost['score_s']:.2f} s; PilotNet epoch on {self.record_laps:g} laps "
                  f"({cost['recorded_rows']} rows): {cost['epoch_s']:.1f} s; share "
                  f"{100 * cost['share']:.1f} % (target <= {100 * TARGET_CALLBACK_SHARE:g} %: "
                  f"{'met' if cost['share'] <= TARGET_CALLBACK_SHARE else 'NOT met'})", flush=True)
        if self.out:
            Path(self.out).mkdir(parents=True, exist_ok=True)
            (Path(self.out) / "closed_loop.json").write_text(json.dumps(result, indent=2) + "\n")
        return result
