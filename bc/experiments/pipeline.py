"""The main job, written once: record with the noisy expert -> train -> drive closed-loop.

Every step is the command a user would type (scripts/simulate.py, train.py, evaluate.py),
printed before it runs; all runs land in one MLflow experiment. Presets:
conf/demo.yaml (`make demo`: one seed, the trained track) and conf/benchmark/driving.yaml
(`scripts/benchmark.py driving`: three seeds, two methods trained on each recording, a matrix of
tracks and paces, a leaderboard; see `bc.experiments.benchmarks.driving`). Per training seed the files go
to `<out>/seed<n>/`: data/, frame_cache/, record/, train/ and eval/<track>/ (metrics.json,
trajectory.png, ...).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from bc.core.settings import flag, integer, number, optional, setting
from bc.drive.controller import SPEED_SOURCES
from bc.errors import BcError
from bc.evaluation.evaluate import TrackSpec
from bc.tracking import find_run
from bc.tracking import resolve_tracking_uri

LOG_TAIL_CHARS = 3000  # of a failed step's log, shown in the error


class StepError(BcError, RuntimeError):
    """A step of the pipeline failed; the message names the command (and its log's tail)."""


def run_step(title: str, script: str, overrides: Sequence[str], log: Path | None = None) -> float:
    """Run one of our CLIs as a user would (its output to the terminal, or to `log`); returns
    its wall time in seconds."""
    command = [sys.executable, "-m", f"bc.commands.{Path(script).stem}", *overrides]
    shown = f"$ python scripts/{script} {' '.join(shlex.quote(o) for o in overrides)}"
    started = time.monotonic()
    if log is None:
        print(f"\n=== {title} ===\n{shown}", flush=True)
        code = subprocess.call(command)
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as handle:
            handle.write(shown + "\n")
            handle.flush()
            code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT)
    elapsed = time.monotonic() - started
    if code != 0:
        where = ("output above" if log is None else
                 f"log {log}: {log.read_text(errors='replace')[-LOG_TAIL_CHARS:]}")
        raise StepError(f"step '{title}' failed with exit code {code}: {shown} ({where})")
    if log is None:
        print(f"--- {title}: {elapsed:.0f} s", flush=True)
    return elapsed


@dataclass
class Pipeline:
    """Record `track` with the noisy expert, train `network` on that recording only, and drive
    it closed-loop on `track` (`eval_laps` laps) and on unseen tracks (`other_laps` each), once
    per training seed. Settings as in conf/demo.yaml; checked here."""

    out: str
    seeds: Sequence[int] = (0,)
    track: str = "lake"  # the only track trained on
    record_laps: float = 2.0
    speed_mph: float | None = 20.0  # the expert's cruise speed while recording; None: its own
    record_overrides: Sequence[str] = ()  # more conf/simulate.yaml overrides
    network: str = "nvidia"  # conf/model/<network>.yaml
    epochs: int = 3
    train_overrides: Sequence[str] = ()  # more conf/train.yaml overrides / presets
    experiment_name: str = "demo"
    tracking_uri: str | None = None
    set_speed: float = 20.0  # the drive server's target speed (mph)
    speed_source: str = "set_speed"  # as drive.py: set_speed | bends | model
    eval_seed: int = 1  # lighting / shadows while driving (not a training seed)
    eval_laps: float = 3.0
    hard_track: str | None = None  # an unseen track, e.g. mountain
    random_tracks: Sequence[int] = ()  # random:<n>, procedural tracks never trained on
    other_laps: float = 1.0  # laps on the hard track and on each random track
    video: bool = True
    keep_data: bool = True  # false: delete each seed's recording and frame cache after training
    step_logs: bool = False  # true: each step's output in <out>/seed<n>/<step>.log

    def __post_init__(self) -> None:
        self.seeds = setting("seeds", self.seeds, lambda seeds: [integer(s) for s in seeds],
                             bool, "a list of training seeds (integers)")
        self.random_tracks = setting("random_tracks", self.random_tracks,
                                     lambda seeds: [integer(s) for s in seeds], lambda _: True,
                                     "a list of random track seeds (integers)")
        self.speed_mph = setting("speed_mph", self.speed_mph, optional(number),
                                 lambda v: v is None or v > 0,
                                 "a number > 0 (or null: the expert's own pace)")
        for name in ("record_laps", "eval_laps", "set_speed"):
            setattr(self, name, setting(name, getattr(self, name), number, lambda v: v > 0,
                                        "a number > 0"))
        self.other_laps = setting("other_laps", self.other_laps, number, lambda v: v >= 0,
                                  "a number >= 0 (0: no unseen tracks)")
        self.epochs = setting("epochs", self.epochs, integer, lambda v: v >= 1, "an integer >= 1")
        self.eval_seed = setting("eval_seed", self.eval_seed, integer, lambda _: True,
                                 "an integer")
        self.speed_source = setting("speed_source", self.speed_source, str,
                                    lambda source: source in SPEED_SOURCES,
                                    f"one of {', '.join(SPEED_SOURCES)}")
        for name in ("video", "keep_data", "step_logs"):
            setattr(self, name, flag(name, getattr(self, name)))

    # -- what is driven -----------------------------------------------------------------------
    def unseen_tracks(self) -> list[str]:
        """The hard track and the random tracks (none when `other_laps` is 0)."""
        if self.other_laps <= 0:
            return []
        return ([self.hard_track] if self.hard_track else []) + [
            f"random:{n}" for n in self.random_tracks]

    def eval_groups(self) -> list[tuple[list[str], float]]:
        """(tracks, laps) per evaluate.py call: the trained track, then the unseen ones."""
        groups = [([self.track], float(self.eval_laps))]
        if self.unseen_tracks():
            groups.append((self.unseen_tracks(), float(self.other_laps)))
        return groups

    # -- the steps ----------------------------------------------------------------------------
    def _log(self, seed_dir: Path, name: str) -> Path | None:
        return seed_dir / f"{name}.log" if self.step_logs else None

    def _uri(self) -> list[str]:
        return [f"tracking_uri={self.tracking_uri}"] if self.tracking_uri else []

    def record(self, seed: int, seed_dir: Path) -> tuple[Path, float]:
        """A fresh recording of `track` for this seed (noise and lighting follow the seed)."""
        data = seed_dir / "data" / self.track
        if data.exists():  # the recorder appends: never mix in a previous attempt's rows
            shutil.rmtree(data)
        speed = "null" if self.speed_mph is None else self.speed_mph
        elapsed = run_step(f"seed {seed}: record {self.record_laps:g} laps of {self.track} with "
                           f"the noisy expert", "simulate.py", [
            "mode=record", f"track={self.track}", f"laps={self.record_laps}",
            f"speed_mph={speed}", f"seed={seed}", f"out={data}",
            f"progress={str(not self.step_logs).lower()}", f"hydra.run.dir={seed_dir / 'record'}",
            *self.record_overrides], self._log(seed_dir, "record"))
        return data, elapsed

    def train(self, seed: int, seed_dir: Path, data: Path, run_name: str,
              overrides: Sequence[str] = (), step: str = "train") -> tuple[str, float]:
        """Train on `data` only (plus `overrides`, in `<seed_dir>/<step>/`); returns the MLflow
        run id."""

        quiet = ["callbacks.progress_bar.refresh_rate=0"] if self.step_logs else []
        extra = f" ({' '.join(overrides)})" if overrides else ""
        elapsed = run_step(f"seed {seed}: train {self.network} for {self.epochs} epochs{extra}",
                           "train.py", [
            *self.train_overrides, f"model={self.network}", *overrides, f"data.paths=[{data}]",
            f"data.cache_dir={seed_dir / 'frame_cache'}", f"trainer.max_epochs={self.epochs}",
            f"experiment_name={self.experiment_name}", f"run_name={run_name}", f"seed={seed}",
            f"hydra.run.dir={seed_dir / step}", *quiet, *self._uri()],
            self._log(seed_dir, step))
        return find_run(run_name, self.experiment_name, tracking_uri=self.tracking_uri), elapsed

    def evaluate(self, seed: int, seed_dir: Path, run_id: str) -> tuple[dict[str, Any], float]:
        """Drive every track closed-loop; returns the metrics per track label."""

        out, tracks, elapsed = seed_dir / "eval", {}, 0.0
        for index, (names, laps) in enumerate(self.eval_groups()):
            elapsed += run_step(f"seed {seed}: drive {', '.join(names)} closed-loop ({laps:g} laps "
                                f"at {self.set_speed:g} mph): drive server + simulator over "
                                f"Socket.IO", "evaluate.py", [
                f"run_id={run_id}", f"track=[{','.join(names)}]", f"laps={laps}",
                f"set_speed={self.set_speed}", f"speed_source={self.speed_source}",
                f"seed={self.eval_seed}", f"out={out}", f"video={str(self.video).lower()}",
                f"progress={str(not self.step_logs).lower()}", f"hydra.run.dir={out}",
                *self._uri()], self._log(seed_dir, f"evaluate{index}"))
            for name in names:
                label = TrackSpec.parse(name).label
                tracks[label] = {**json.loads((out / label / "metrics.json").read_text()),
                                 "target_laps": laps}
        return tracks, elapsed

    def run_seed(self, seed: int, work: Path, stamp: str) -> dict[str, Any]:
        """Record, train and evaluate for one training seed."""
        seed_dir = work / f"seed{seed}"
        timings: dict[str, float] = {}
        data, timings["record_s"] = self.record(seed, seed_dir)
        run_id, timings["train_s"] = self.train(seed, seed_dir, data, f"{self.experiment_name}-"
                                                                      f"{stamp}-seed{seed}")
        if not self.keep_data:
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(seed_dir / "frame_cache", ignore_errors=True)
        tracks, timings["eval_s"] = self.evaluate(seed, seed_dir, run_id)
        for label, metrics in tracks.items():
            print(f"[seed {seed}]   {label:<10} autonomy {metrics['autonomy']:5.1f} %  "
                  f"|cte| {metrics['mean_abs_cte']:.3f} m  laps {metrics['laps_completed']}"
                  f"/{metrics['target_laps']:g}  interventions {metrics['interventions']}",
                  flush=True)
        return {"seed": seed, "run_id": run_id, "timings": timings, "tracks": tracks,
                "folder": str(seed_dir), "recording": str(data) if self.keep_data else None}

    def run(self) -> list[dict[str, Any]]:
        """Every seed in turn; `after_seed` sees the results so far. Returns them."""
        work = Path(self.out).resolve()
        work.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        started = time.monotonic()
        print(f"pipeline: seeds {list(self.seeds)}, outputs in {work}", flush=True)
        results: list[dict[str, Any]] = []
        for seed in self.seeds:
            results.append(self.run_seed(seed, work, stamp))
            self.after_seed(results, time.monotonic() - started)
        self.finish(results, time.monotonic() - started)
        return results

    def after_seed(self, results: list[dict[str, Any]], wall_s: float) -> None:
        """Called after every seed (a benchmark writes its partial report here)."""

    def finish(self, results: list[dict[str, Any]], wall_s: float) -> None:
        """Say where everything went."""

        uri = resolve_tracking_uri(self.tracking_uri)
        lines = [f"\n=== finished in {wall_s:.0f} s ==="]
        for result in results:
            eval_dir = Path(result["folder"]) / "eval" / self._label(self.track)
            lines += [f"  seed {result['seed']}",
                      f"    recording        {result['recording'] or '(deleted: keep_data=false)'}",
                      f"    MLflow run       {result['run_id']} (experiment "
                      f"'{self.experiment_name}')",
                      f"    metrics          {eval_dir / 'metrics.json'}",
                      f"    trajectory plot  {eval_dir / 'trajectory.png'}"]
            if self.video:
                lines.append(f"    drive video      {eval_dir / 'center.mp4'}")
        lines += [f"  browse runs        .venv/bin/mlflow ui --backend-store-uri {uri}",
                  f"  drive it again     .venv/bin/python scripts/drive.py "
                  f"run_id={results[-1]['run_id']}"]
        print("\n".join(lines), flush=True)

    @staticmethod
    def _label(track: str) -> str:

        return TrackSpec.parse(track).label
