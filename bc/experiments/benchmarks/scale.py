"""Scaling out on one machine, measured as a user runs it (docs/scaling.md):

  sweep     a 4-job `train.py -m` sweep with Hydra's basic launcher (one job after another)
            against `hydra/launcher=parallel` (joblib, `n_jobs` at once); target <= 0.65x
  ddp       one training on 1 CPU process (`trainer=cpu`) against `trainer=ddp_cpu` (gloo)
  evaluate  `evaluate.py` of the same tracks serially (`jobs=1`) against `jobs=N`

Every number is the wall time of the whole command (interpreter start, imports, MLflow, the
work), all measured in one run on one recording so the ratios compare like with like on a
shared machine. The commands and their logs land in the run folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bc.experiments.pipeline import run_step
from bc.core.settings import integer, setting

TARGET_SWEEP_RATIO = 0.65


@dataclass
class ScaleBenchmark:
    """Wall times of sweeps, DDP and evaluation, one process vs several."""

    out: str = "outputs/benchmark/scale"
    record_laps: float = 2.0
    sweep: list[str] = field(default_factory=lambda: ["optimizer.lr=1e-3,3e-4", "seed=0,1"])
    sweep_model: str = "nvidia"
    sweep_epochs: int = 2
    n_jobs: int = 2
    ddp_model: str = "nvidia"
    ddp_epochs: int = 2
    ddp_devices: int = 2
    tracks: list[str] = field(default_factory=lambda: ["lake", "mountain", "random:1", "random:2"])
    eval_laps: float = 1.0
    eval_jobs: list[int] = field(default_factory=lambda: [2, 4])
    num_workers: int = 0

    def __post_init__(self) -> None:
        for name in ("sweep_epochs", "n_jobs", "ddp_epochs", "ddp_devices"):
            setattr(self, name, setting(name, getattr(self, name), integer, lambda n: n >= 1,
                                        "an integer >= 1"))
        self.tracks = setting("tracks", self.tracks, list, bool, "a non-empty list of tracks")
        self.eval_jobs = setting("eval_jobs", self.eval_jobs, lambda jobs: [integer(j) for j in jobs],
                                 lambda jobs: all(j >= 2 for j in jobs), "a list of integers >= 2")
        self.work = Path(self.out).resolve()
        self.uri = f"sqlite:///{self.work / 'mlruns' / 'mlflow.db'}"

    def _step(self, title: str, script: str, overrides: list[str], log: str) -> float:
        tracked = [f"tracking_uri={self.uri}"] if script != "simulate.py" else []
        seconds = run_step(title, script, [*overrides, *tracked], self.work / "logs" / f"{log}.log")
        print(f"  {title}: {seconds:.1f} s", flush=True)
        return seconds

    def _training(self, data: Path, model: str, epochs: int) -> list[str]:
        return [f"model={model}", f"data.paths=[{data}]", f"data.cache_dir={self.work / 'cache'}",
                f"data.num_workers={self.num_workers}", f"trainer.max_epochs={epochs}",
                "callbacks.progress_bar.refresh_rate=0", "experiment_name=scale"]

    def run(self) -> dict[str, Any]:
        self.work.mkdir(parents=True, exist_ok=True)
        data = self.work / "data"
        if not (data / "driving_log.csv").exists():
            self._step(f"record {self.record_laps:g} laps of lake", "simulate.py", [
                "mode=record", "track=lake", f"laps={self.record_laps}", f"out={data}",
                "progress=false", f"hydra.run.dir={self.work / 'record'}"], "record")
        # A first training fills the frame cache, so no timed command pays for decoding.
        self._step("warm the frame cache", "train.py", [
            *self._training(data, "small", 1), "trainer.limit_train_batches=1",
            "trainer.limit_val_batches=1", f"hydra.run.dir={self.work / 'warm'}"], "warm")

        sweep = [*self._training(data, self.sweep_model, self.sweep_epochs), *self.sweep]
        basic = self._step("sweep, basic launcher", "train.py", [
            "-m", *sweep, f"hydra.sweep.dir={self.work / 'sweep_basic'}"], "sweep_basic")
        parallel = self._step(f"sweep, joblib launcher n_jobs={self.n_jobs}", "train.py", [
            "-m", "hydra/launcher=parallel", f"hydra.launcher.n_jobs={self.n_jobs}", *sweep,
            f"hydra.sweep.dir={self.work / 'sweep_parallel'}"], "sweep_parallel")

        training = self._training(data, self.ddp_model, self.ddp_epochs)
        single = self._step("training, 1 process", "train.py", [
            *training, "trainer=cpu", "run_name=scale-single",
            f"hydra.run.dir={self.work / 'single'}"], "train_single")
        ddp = self._step(f"training, DDP {self.ddp_devices} processes", "train.py", [
            *training, "trainer=ddp_cpu", f"trainer.devices={self.ddp_devices}",
            "run_name=scale-ddp", f"hydra.run.dir={self.work / 'ddp'}"], "train_ddp")

        evaluate = [f"run_id=scale-single", "experiment_name=scale",
                    f"track=[{','.join(self.tracks)}]", f"laps={self.eval_laps}", "video=false",
                    "progress=false"]
        serial = self._step(f"evaluate {len(self.tracks)} tracks, serially", "evaluate.py", [
            *evaluate, "jobs=1", f"out={self.work / 'eval1'}",
            f"hydra.run.dir={self.work / 'eval1'}"], "eval_jobs1")
        parallel_eval = {jobs: self._step(f"evaluate {len(self.tracks)} tracks, jobs={jobs}",
                                          "evaluate.py", [
            *evaluate, f"jobs={jobs}", f"out={self.work / f'eval{jobs}'}",
            f"hydra.run.dir={self.work / f'eval{jobs}'}"], f"eval_jobs{jobs}")
            for jobs in self.eval_jobs}

        results = {
            "sweep": {"jobs": 4, "model": self.sweep_model, "epochs": self.sweep_epochs,
                      "basic_s": basic, "parallel_s": parallel, "n_jobs": self.n_jobs,
                      "ratio": parallel / basic, "target_ratio": TARGET_SWEEP_RATIO},
            "ddp": {"model": self.ddp_model, "epochs": self.ddp_epochs, "one_process_s": single,
                    "ddp_s": ddp, "devices": self.ddp_devices, "ratio": ddp / single},
            "evaluate": {"tracks": self.tracks, "laps": self.eval_laps, "serial_s": serial,
                         **{f"jobs{jobs}_s": seconds for jobs, seconds in parallel_eval.items()},
                         **{f"jobs{jobs}_ratio": seconds / serial
                            for jobs, seconds in parallel_eval.items()}},
        }
        print(self.report(results), flush=True)
        (self.work / "scale.json").write_text(json.dumps(results, indent=2))
        return results

    @staticmethod
    def report(results: dict[str, Any]) -> str:
        sweep, ddp, evaluate = results["sweep"], results["ddp"], results["evaluate"]
        verdict = "met" if sweep["ratio"] <= sweep["target_ratio"] else "NOT met"
        lines = [
            "",
            "| what | one at a time | in parallel | ratio |",
            "|---|---|---|---|",
            f"| 4-job sweep, {sweep['model']} {sweep['epochs']} epochs: basic vs joblib "
            f"n_jobs={sweep['n_jobs']} | {sweep['basic_s']:.1f} s | {sweep['parallel_s']:.1f} s | "
            f"{sweep['ratio']:.2f}x (target <= {sweep['target_ratio']}: {verdict}) |",
            f"| training, {ddp['model']} {ddp['epochs']} epochs: 1 process vs DDP "
            f"{ddp['devices']} processes | {ddp['one_process_s']:.1f} s | {ddp['ddp_s']:.1f} s | "
            f"{ddp['ratio']:.2f}x |",
        ]
        for key, seconds in evaluate.items():
            if key.startswith("jobs") and key.endswith("_s"):
                jobs = key[4:-2]
                lines.append(f"| evaluate {len(evaluate['tracks'])} tracks x {evaluate['laps']:g} "
                             f"lap: jobs=1 vs jobs={jobs} | {evaluate['serial_s']:.1f} s | "
                             f"{seconds:.1f} s | {evaluate[f'jobs{jobs}_ratio']:.2f}x |")
        return "\n".join(lines)
