"""Driving benchmark with headroom: does a model trained on lake drive as fast and as safely as
the expert it imitates, there and where it has never been?

Per training seed the pipeline (`bc.experiments.pipeline.Pipeline`) records `track` (lake) with the noisy
expert at its own pace (dynamic car: the tyres slide past 0.9 g) and trains each method on
that recording only: `bc`, plain behavioral cloning (steering), and `bc_speed`, the same network
with the target-speed output (`model.outputs=[steering,speed]`), and the other METHODS. Each
trained model then drives every **cell** of the matrix (`eval_laps` laps from a standing start;
`evaluator=vector`, the default: all cells at once in lockstep through bc.evaluation;
`evaluator=socketio`: served by scripts/drive.py, realtime as Unity runs it):

  lake (the training lighting), lake reversed, lake under a lighting never trained on
  (`eval_seed`), the hard track (jungle) and random tracks (both under `eval_seed`);

at two **paces**:

  expert  the expert's pace: `bc_speed` follows its own predicted speed (speed_source=model);
          `bc`, which has no speed output, gets the one constant that matches the expert's
          pace on average: the expert's mean speed over a lap of the trained track;
  fixed   a fixed set speed of `set_speed` (30 mph, the car's top speed) for every model.

The expert (pure pursuit + a speed planned from curvature and friction, no camera) drives the
same cells; at its own pace it is the reference: its row is 100 % pace and 100 % autonomy.
Pace = the expert's time to the same progress / the model's time x 100 (= expert lap time /
lap time for a whole lap). Autonomy: NVIDIA's (6 s per intervention), bc/evaluation/metrics.py.
A cell ends after its laps or after `max_time_factor` x the expert's time.

The `dagger` preset (conf/benchmark/dagger.yaml) compares at an equal number of labelled
frames (`labels`): `bc` on the expert's first `labels` rows, `bc_select` on the same rows with the
checkpoint chosen by the closed-loop `eval/score` on the trained track (bc/evaluation/callback.py), and
`dagger` (scripts/dagger.py with `label_budget=labels`), at the expert's pace only; the table's
`held-out mean` column leaves out the trained track's own cell, and each of them minus plain BC
is reported paired by seed.

Reported per method, pace and cell: mean ± 95 % CI over the training seeds (Student's t, n-1
degrees of freedom) of autonomy, pace, interventions and mean |CTE|; the leaderboard (JSON, one
entry per method) and a markdown table are written after every seed to `<out>/leaderboard.*`
and, at the end, to `leaderboard` (a fixed path: the latest run's).

Length: the benchmark's methods, cells, statistics (CIs, paired differences) and its
leaderboard are one report; each part is short and read with the others.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from bc.errors import ConfigError
from bc.experiments.pipeline import Pipeline
from bc.core.settings import flag, integer, number, optional, setting
from bc.drive.launch import drive_server
from bc.evaluation.autonomous import AutonomousDrive
from bc.evaluation.autonomous import STALL_TIMEOUT_S
from bc.evaluation.episodes import Episodes, EpisodeSpec, default_vectorization
from bc.evaluation.expert import expert_drive
from bc.evaluation.metrics import compute_metrics, relative_pace
from bc.evaluation.policies import ModelPolicy
from bc.experiments.pipeline import run_step
from bc.inference.store import load_model
from bc.tracking import find_run
from bc.tracking import resolve_tracking_uri
from bc.sim.env import resolve_track, reversed_track
from bc.sim.expert import bound_profile

EXPERT, BC, BC_SPEED = "expert", "bc", "bc_speed"
BC_3CAM, BC_3CAM_AUG = "bc_3cam", "bc_3cam_aug"
BC_SELECT, DAGGER = "bc_select", "dagger"
METHODS = {  # leaderboard entries: name in the tables, what it is, train.py overrides
    EXPERT: ("expert", "pure pursuit + speed planned from curvature and friction, no camera",
             None),
    BC: ("BC", "plain behavioral cloning: the center camera's frames, no augmentation; the "
         "network predicts the steering", ("data.cameras=[center]", "augmentation=none")),
    BC_3CAM: ("BC 3 cameras", "the left and right cameras too, their labels corrected by "
              "data.steering_correction; no augmentation", ("augmentation=none",)),
    BC_3CAM_AUG: ("BC 3 cameras + aug", "three cameras and the default augmentation "
                  "(conf/augmentation/default.yaml)", ()),
    BC_SPEED: ("BC+speed", "three cameras, default augmentation and the target-speed output",
               ("model.outputs=[steering,speed]",)),
    BC_SELECT: ("BC, driving-score checkpoint", "three cameras and the default augmentation on "
                "the same recording, the checkpoint kept by eval/score on the trained track "
                "(bc/evaluation/callback.py), not val/loss", ()),
    DAGGER: ("DAgger", "three cameras and the default augmentation; the expert's demonstrations, "
             "then rounds where the model drives and the expert labels (bc/experiments/dagger.py), "
             "the same number of labelled frames in all", ()),
}
PACES = ("expert", "fixed")
CI_LEVEL = 0.95
MEAN_COLUMN = "mean"  # the cells' mean, per seed, then over seeds
HELD_OUT_COLUMN = "held-out mean"  # the same without the trained track's own cell
# (key, label, format) of what the tables show, in order; all are in the JSON
TABLES = (("autonomy", "Autonomy (%)", "{:.1f}"), ("pace_pct", "Pace vs expert (%)", "{:.1f}"),
          ("bound_pct", "Pace vs the physical bound (%)", "{:.1f}"),
          ("interventions", "Interventions", "{:.1f}"),
          ("mean_abs_cte", "Mean |CTE| (m)", "{:.2f}"))
CELL_KEYS = ("autonomy", "pace_pct", "bound_pct", "interventions", "mean_abs_cte", "lap_time_s",
             "mean_speed_mph", "progress_laps", "sim_time_s")
SEPARATION_KEYS = ("autonomy", "mean_abs_cte")  # what the pairwise separation is judged on
HEADROOM_POINTS = 10.0  # a cell has headroom when every method is this far below the expert
FULL = 100.0  # % autonomy / pace of the expert at its own pace
EVALUATED_BY = {  # how a cell is driven, as the table's legend says it
    "socketio": "through scripts/drive.py, realtime",
    "vector": "in lockstep (bc.evaluation: the cells at once, no inference latency charged)"}
EVALUATORS = tuple(EVALUATED_BY)
PHASES = ("record", "train", "eval")  # the wall-time split: timings keys start with these


@dataclass(frozen=True)
class Cell:
    """One column of the matrix: a track, driven one way, under one lighting."""

    name: str
    track: str
    reverse: bool = False
    lighting: int | None = None  # None: the training seed's own lighting

    def lighting_seed(self, seed: int) -> int:
        return seed if self.lighting is None else self.lighting


def mean_ci(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and the half-width of its 95 % confidence interval (Student's t over the values;
    None for fewer than two), the values kept; None values (no lap time) are left out."""
    from scipy import stats

    kept = [float(v) for v in values if v is not None]
    out: dict[str, Any] = {"mean": None, "ci95": None, "n": len(kept), "values": kept}
    if kept:
        out["mean"] = float(np.mean(kept))
    if len(kept) > 1:
        sem = float(np.std(kept, ddof=1)) / math.sqrt(len(kept))
        out["ci95"] = float(stats.t.ppf(0.5 + CI_LEVEL / 2, len(kept) - 1) * sem)
    return out


def cell_metrics(result: Any, expert: Any, bound: Any = None) -> dict[str, Any]:
    """What the leaderboard keeps of one drive (a DriveResult) against the expert's and the
    physical bound: `bound_pct` = the bound's time to the same progress from a standing start
    (`bound`: the cell's bc.sim.expert.bound_profile) / the drive's time x 100."""

    metrics = {**compute_metrics(result), "pace_pct": relative_pace(result, expert)}
    metrics["bound_pct"] = bound_pct(metrics["progress_laps"], metrics["sim_time_s"], bound)
    return {**{key: metrics[key] for key in CELL_KEYS}, "stop_reason": metrics["stop_reason"]}


def bound_pct(progress: float | None, elapsed: float | None, bound: Any) -> float | None:
    """The physical bound's time to `progress` laps from a standing start / `elapsed` x 100."""
    if bound is None or not progress or not elapsed:
        return None
    standing, flying = bound
    fraction = np.linspace(0.0, 1.0, len(standing))
    ideal = (float(np.interp(progress, fraction, standing)) if progress <= 1.0
             else float(standing[-1] + (progress - 1.0) * flying))
    return 100.0 * ideal / elapsed


def _cell(value: Mapping[str, Any] | None, fmt: str) -> str:
    if value is None or value["mean"] is None:
        return "-"
    text = fmt.format(value["mean"])
    half = fmt.replace("+", "").format(value["ci95"]) if value["ci95"] is not None else None
    return text if half is None else f"{text} ± {half}"


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@dataclass
class DrivingBenchmark(Pipeline):
    """The pipeline per training seed, one model per method, driven on every cell at every pace
    (module doc). `set_speed`: the fixed pace (mph); `eval_laps`: laps per cell; `hard_track`
    and `random_tracks`: held-out tracks; `reverse` / `unseen_lighting`: the lake cells."""

    eval_seed: int = 1000  # the unseen lighting: never a training seed
    set_speed: float = 30.0  # the fixed pace (mph)
    methods: Sequence[str] = (BC, BC_SPEED)
    paces: Sequence[str] = PACES
    labels: int | None = None  # labelled frames per method: the recording's rows, DAgger's budget
    dagger_overrides: Sequence[str] = ()  # conf/dagger.yaml keys (rounds, round_rows, beta, ...)
    select_laps: float = 1.0  # BC_SELECT: laps of the trained track driven after each epoch
    reverse: bool = True
    unseen_lighting: bool = True
    max_time_factor: float = 2.0
    leaderboard: str | None = None  # also written here (.json and .md) at the end
    evaluator: str = "vector"  # vector: bc.evaluation, lockstep; socketio: drive.py, realtime

    def __post_init__(self) -> None:
        super().__post_init__()
        trained = [name for name, (*_, overrides) in METHODS.items() if overrides is not None]
        self.methods = setting("methods", self.methods, list,
                               lambda names: names and set(names) <= set(trained),
                               f"a list of trained methods out of {trained}")
        self.paces = setting("paces", self.paces, list,
                             lambda names: names and set(names) <= set(PACES),
                             f"a list out of {list(PACES)}")
        self.labels = setting("labels", self.labels, optional(integer),
                              lambda value: value is None or value >= 1,
                              "a number of labelled frames >= 1 (or null: record_laps laps)")
        if DAGGER in self.methods and self.labels is None:
            raise ConfigError("labels: DAgger is compared at an equal number of labelled frames; "
                              "set labels=<frames>")
        if self.labels is not None:
            self.record_overrides = [*self.record_overrides, f"max_rows={self.labels}"]
        for name in ("reverse", "unseen_lighting"):
            setattr(self, name, flag(name, getattr(self, name)))
        self.max_time_factor = setting("max_time_factor", self.max_time_factor, number,
                                       lambda value: value > 1, "a number > 1")
        self.evaluator = setting("evaluator", self.evaluator, str,
                                 lambda value: value in EVALUATORS, f"one of {list(EVALUATORS)}")
        if self.eval_seed in self.seeds:
            raise ConfigError(f"eval_seed: expected a lighting never trained on, got "
                              f"{self.eval_seed}, one of the training seeds {self.seeds}")
        self._expert_drives: dict[tuple, Any] = {}  # (track, reverse, speed cap): DriveResult
        self.time_split: dict[str, float] = {}

    # -- the matrix ---------------------------------------------------------------------------
    def cells(self) -> list[Cell]:
        """The trained track (its training lighting), reversed, under the unseen lighting, then
        the held-out tracks (under the unseen lighting)."""
        label = self._label(self.track)
        cells = [Cell(label, self.track)]
        if self.reverse:
            cells.append(Cell(f"{label}-reverse", self.track, reverse=True))
        if self.unseen_lighting:
            cells.append(Cell(f"{label}-lighting-{self.eval_seed}", self.track,
                              lighting=self.eval_seed))
        held_out = ([self.hard_track] if self.hard_track else []) + [
            f"random:{n}" for n in self.random_tracks]
        return cells + [Cell(self._label(track), track, lighting=self.eval_seed)
                        for track in held_out]

    def rows(self) -> list[tuple[str, str]]:
        """(method, pace) of every table row: the expert first."""
        return [(method, pace) for method in (EXPERT, *self.methods) for pace in self.paces]

    def row_title(self, method: str, pace: str) -> str:
        if pace == "fixed":
            return f"{METHODS[method][0]} @ {self.set_speed:g} mph"
        own = {EXPERT: "own pace", BC_SPEED: "own predicted speed"}
        mean = f"expert's mean speed {self.expert_mean_mph:.1f} mph"
        return f"{METHODS[method][0]} @ {own.get(method, mean)}"

    def server_overrides(self, method: str, pace: str) -> list[str]:
        """scripts/drive.py's speed settings for a method at a pace (module doc)."""
        if method == BC_SPEED and pace == "expert":
            return ["speed_source=model"]
        speed = self.set_speed if pace == "fixed" else self.expert_mean_mph
        return ["speed_source=set_speed", f"set_speed={speed:g}"]

    # -- the expert ---------------------------------------------------------------------------
    def expert_drive(self, cell: Cell, speed_mph: float | None) -> Any:
        """The expert's drive of a cell (the lighting does not change what it sees), cached."""

        key = (cell.track, cell.reverse, speed_mph)
        if key not in self._expert_drives:
            self._expert_drives[key] = expert_drive(cell.track, self.eval_laps, seed=0,
                                                    reverse=cell.reverse, speed_mph=speed_mph)
        return self._expert_drives[key]

    def bound(self, cell: Cell) -> tuple[np.ndarray, float]:
        """The physical lap-time bound's profile of a cell's road and direction
        (bc.sim.expert.bound_profile), cached."""

        bounds = self.__dict__.setdefault("_bounds", {})
        key = (cell.track, cell.reverse)
        if key not in bounds:
            track = resolve_track(cell.track)
            bounds[key] = bound_profile(reversed_track(track) if cell.reverse else track)
        return bounds[key]

    @cached_property
    def expert_mean_mph(self) -> float:
        """The expert's mean speed over its drive of the trained track (plain BC's pace)."""
        return round(float(np.mean(self.expert_drive(self.cells()[0], None).speed_mph)), 1)

    @cached_property
    def expert_results(self) -> dict[str, dict[str, dict[str, Any]]]:
        """{pace: {cell: metrics}} of the expert: at its own pace, and capped at set_speed."""
        speeds = {"expert": None, "fixed": self.set_speed}
        return {pace: {cell.name: cell_metrics(self.expert_drive(cell, speeds[pace]),
                                               self.expert_drive(cell, None),
                                               self.bound(cell))
                       for cell in self.cells()} for pace in self.paces}

    # -- one seed -----------------------------------------------------------------------------
    def drive_cells(self, seed: int, run_id: str, method: str, pace: str,
                    folder: Path) -> dict[str, dict[str, Any]]:
        """Serve `run_id` with scripts/drive.py at the pace's speed settings and drive every cell
        against it (evaluator "vector": every cell at once in-process, bc.evaluation); returns
        the metrics per cell (also in `<folder>/<cell>.json`)."""
        if self.evaluator == "vector":
            return self.drive_cells_vectorised(seed, run_id, method, pace, folder)

        overrides = [f"run_id={run_id}", f"tracking_uri={resolve_tracking_uri(self.tracking_uri)}",
                     *self.server_overrides(method, pace)]
        print(f"[seed {seed}] {self.row_title(method, pace)}: python scripts/drive.py "
              f"{' '.join(shlex.quote(o) for o in overrides)}", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        results = {}
        with drive_server(overrides, folder) as server:
            for cell in self.cells():
                expert = self.expert_drive(cell, None)
                drive = AutonomousDrive(
                    laps=self.eval_laps, port=server["port"], seed=cell.lighting_seed(seed),
                    reverse=cell.reverse, max_steps=math.ceil(self.max_time_factor * expert.steps))
                metrics = cell_metrics(drive.drive(cell.track), expert, self.bound(cell))
                (folder / f"{cell.name}.json").write_text(json.dumps(metrics, indent=2) + "\n")
                print(f"[seed {seed}]   {cell.name:<22} autonomy {metrics['autonomy']:5.1f} %  "
                      f"pace {metrics['pace_pct']:5.1f} %  interventions "
                      f"{metrics['interventions']}  |cte| {metrics['mean_abs_cte']:.3f} m",
                      flush=True)
                results[cell.name] = metrics
        return results

    def drive_cells_vectorised(self, seed: int, run_id: str, method: str, pace: str,
                               folder: Path) -> dict[str, dict[str, Any]]:
        """Every cell at once through the episode loop (bc/evaluation/episodes.py), the model
        batched with drive.py's speed settings of the pace; lockstep (no latency charged)."""

        settings = dict(item.split("=", 1) for item in self.server_overrides(method, pace))
        policy = ModelPolicy(load_model(run_id, self.tracking_uri),
                             float(settings.get("set_speed", 20.0)), settings["speed_source"])
        cells = self.cells()
        experts = [self.expert_drive(cell, None) for cell in cells]
        specs = [EpisodeSpec(cell.track, laps=self.eval_laps, reverse=cell.reverse,
                             lighting=cell.lighting_seed(seed), stall_timeout_s=STALL_TIMEOUT_S,
                             max_steps=math.ceil(self.max_time_factor * expert.steps))
                 for cell, expert in zip(cells, experts)]
        print(f"[seed {seed}] {self.row_title(method, pace)}: {len(specs)} cells at once "
              f"({' '.join(f'{key}={value}' for key, value in settings.items())})",
              flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        with Episodes(specs, vectorization=default_vectorization(len(specs))) as episodes:
            drives = episodes.run(policy)
        results = {}
        for cell, drive, expert in zip(cells, drives, experts):
            metrics = cell_metrics(drive, expert, self.bound(cell))
            (folder / f"{cell.name}.json").write_text(json.dumps(metrics, indent=2) + "\n")
            results[cell.name] = metrics
        return results

    def run_seed(self, seed: int, work: Path, stamp: str) -> dict[str, Any]:
        """Record, train every method on that one recording, drive every (pace, cell)."""
        seed_dir = work / f"seed{seed}"
        timings: dict[str, float] = {}
        data, timings["record_s"] = self.record(seed, seed_dir)
        runs = {}
        for method in self.methods:
            name = f"{self.experiment_name}-{stamp}-seed{seed}-{method}"
            if method == DAGGER:
                runs[method], timings["train_dagger_s"] = self.dagger(seed, seed_dir, name)
                continue
            overrides = [*METHODS[method][2], *(self.select_overrides(seed)
                                                if method == BC_SELECT else ())]
            runs[method], timings[f"train_{method}_s"] = self.train(
                seed, seed_dir, data, name, overrides, step=f"train_{method}")
        if not self.keep_data:
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(seed_dir / "frame_cache", ignore_errors=True)
        cells: dict[str, dict[str, Any]] = {}
        for method in self.methods:
            started = time.monotonic()
            cells[method] = {pace: self.drive_cells(seed, runs[method], method, pace,
                                                    seed_dir / "eval" / f"{method}-{pace}")
                             for pace in self.paces}
            timings[f"eval_{method}_s"] = time.monotonic() - started
        return {"seed": seed, "runs": runs, "timings": timings, "cells": cells,
                "folder": str(seed_dir)}

    def learner_speed(self) -> float:
        """The set speed a steering-only model drives at while it trains (DAgger's rollouts,
        the driving score): the first pace's."""
        return self.expert_mean_mph if self.paces[0] == "expert" else self.set_speed

    def select_overrides(self, seed: int) -> list[str]:
        """train.py overrides of BC_SELECT: drive the trained track after every epoch and keep
        the checkpoint with the best eval/score (bc/evaluation/callback.py)."""
        return ["callbacks.closed_loop.every_n_epochs=1",
                f"callbacks.closed_loop.tracks=[{{track: {self.track}, laps: {self.select_laps}, "
                f"lighting: {seed}}}]",
                f"callbacks.closed_loop.set_speed={self.learner_speed():g}",
                "callbacks.model_checkpoint.monitor=eval/score",
                "callbacks.model_checkpoint.mode=max"]

    def dagger(self, seed: int, seed_dir: Path, run_name: str) -> tuple[str, float]:
        """scripts/dagger.py with the same network, epochs and label budget; returns the parent
        run (which holds the final model) and the wall time."""

        quiet = ["callbacks.progress_bar.refresh_rate=0"] if self.step_logs else []
        uri = [f"tracking_uri={self.tracking_uri}"] if self.tracking_uri else []
        elapsed = run_step(f"seed {seed}: DAgger, {self.labels} labelled frames", "dagger.py", [
            *self.train_overrides, f"model={self.network}", f"track={self.track}",
            f"seed={seed}", f"label_budget={self.labels}", f"trainer.max_epochs={self.epochs}",
            f"set_speed={self.learner_speed():g}", f"out={seed_dir / 'dagger'}",
            f"data.cache_dir={seed_dir / 'frame_cache_dagger'}",
            f"eval_tracks=[{{track: {self.track}, laps: {self.select_laps}, lighting: {seed}}}]",
            f"experiment_name={self.experiment_name}", f"run_name={run_name}",
            *self.dagger_overrides, *quiet, *uri], self._log(seed_dir, "dagger"))
        return find_run(run_name, self.experiment_name, tracking_uri=self.tracking_uri), elapsed

    # -- the leaderboard ----------------------------------------------------------------------
    def summarize(self, results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """{method: {pace: {cell or MEAN_COLUMN: {metric: mean_ci}}}}; the expert's drives do
        not depend on a training seed: its values are one drive each (n = 1)."""
        names = [cell.name for cell in self.cells()]
        summary: dict[str, Any] = {}
        for method, pace in self.rows():
            per_seed = ([self.expert_results[pace]] if method == EXPERT else
                        [result["cells"][method][pace] for result in results])
            table = {name: {key: mean_ci([drive[name][key] for drive in per_seed])
                            for key in CELL_KEYS} for name in names}
            table[MEAN_COLUMN] = {key: mean_ci([_mean([drive[name][key] for name in names])
                                                for drive in per_seed]) for key in CELL_KEYS}
            table[HELD_OUT_COLUMN] = {key: mean_ci([_mean([drive[name][key]
                                                           for name in names[1:]])
                                                    for drive in per_seed]) for key in CELL_KEYS}
            summary.setdefault(method, {})[pace] = table
        return summary

    def comparison(self, results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """BC + speed at its own predicted speed minus the same models at the fixed set speed,
        paired by training seed: mean ± 95 % CI of the difference, per cell and over cells;
        and under "vs_bc", each of BC_SELECT and DAGGER minus plain BC at the first pace."""
        names = [cell.name for cell in self.cells()]
        out: dict[str, Any] = {"pairs": self.pairs(results)}
        if BC in self.methods:
            pace = self.paces[0]
            out["vs_bc"] = {method: {key: self.paired(results, method, BC, pace, key)
                                     for key in ("autonomy", "pace_pct", "mean_abs_cte")}
                            for method in (BC_SELECT, DAGGER) if method in self.methods}
        if BC_SPEED not in self.methods or set(self.paces) != set(PACES):
            return out
        for key in ("autonomy", "pace_pct"):
            own = [result["cells"][BC_SPEED]["expert"] for result in results]
            fixed = [result["cells"][BC_SPEED]["fixed"] for result in results]
            diffs = {name: mean_ci([a[name][key] - b[name][key] for a, b in zip(own, fixed)])
                     for name in names}
            diffs[MEAN_COLUMN] = mean_ci([_mean([a[n][key] for n in names])
                                          - _mean([b[n][key] for n in names])
                                          for a, b in zip(own, fixed)])
            out[key] = diffs
        return out

    def paired(self, results: Sequence[Mapping[str, Any]], method: str, other: str, pace: str,
               key: str) -> dict[str, Any]:
        """`method` minus `other` at `pace`, paired by training seed: mean_ci per cell, over the
        cells (MEAN_COLUMN) and over the held-out cells (HELD_OUT_COLUMN)."""
        names = [cell.name for cell in self.cells()]
        pairs = [(result["cells"][method][pace], result["cells"][other][pace])
                 for result in results]
        diffs = {name: mean_ci([a[name][key] - b[name][key] for a, b in pairs]) for name in names}
        for column, kept in ((MEAN_COLUMN, names), (HELD_OUT_COLUMN, names[1:])):
            diffs[column] = mean_ci([_mean([a[n][key] for n in kept]) - _mean([b[n][key]
                                                                             for n in kept])
                                     for a, b in pairs])
        return diffs

    def pairs(self, results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Every pair of methods at the first pace: the paired difference (first minus second,
        by seed) per cell for SEPARATION_KEYS, and the cells where it is separated: its 95 %
        interval leaves out zero."""
        pace = self.paces[0]
        names = [cell.name for cell in self.cells()]
        out = []
        for i, first in enumerate(self.methods):
            for second in self.methods[i + 1:]:
                diffs = {key: self.paired(results, first, second, pace, key)
                         for key in SEPARATION_KEYS}
                separated = {key: [name for name in names if _separated(diffs[key][name])]
                             for key in SEPARATION_KEYS}
                out.append({"methods": [first, second], "pace": pace, "differences": diffs,
                            "separated_cells": separated})
        return out

    def criteria(self, summary: Mapping[str, Any], comparison: Mapping[str, Any]
                 ) -> dict[str, Any]:
        """Does the benchmark rank methods (at the first pace)? The expert at 100 % on every
        cell; a cell where every method is HEADROOM_POINTS autonomy points below it; at least
        two pairs of methods separated (95 % intervals) on autonomy on at least one cell."""
        pace = self.paces[0]
        names = [cell.name for cell in self.cells()]
        expert = summary[EXPERT][pace]
        expert_full = all(expert[name]["autonomy"]["mean"] >= FULL - 1e-9 for name in names)
        headroom_cells = [name for name in names if all(
            summary[method][pace][name]["autonomy"]["mean"] is not None
            and summary[method][pace][name]["autonomy"]["mean"]
            <= expert[name]["autonomy"]["mean"] - HEADROOM_POINTS for method in self.methods)]
        separated = [pair["methods"] for pair in comparison.get("pairs", [])
                     if pair["separated_cells"]["autonomy"]]
        return {"pace": pace, "expert_full": expert_full, "headroom_cells": headroom_cells,
                "separated_pairs": separated,
                "ranks": bool(expert_full and headroom_cells and len(separated) >= 2)}

    def headroom(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """The cells where plain BC (else the first method) falls below the expert's 100 %
        autonomy or pace (mean over seeds), at each pace."""
        method = BC if BC in self.methods else self.methods[0]
        below = {pace: [name for name, row in summary[method][pace].items()
                        if name not in (MEAN_COLUMN, HELD_OUT_COLUMN)
                        and (row["autonomy"]["mean"] < FULL - 1e-9
                             or row["pace_pct"]["mean"] < FULL - 1e-9)]
                 for pace in self.paces}
        return {"method": method, "cells_below_expert": below,
                "hard_enough": any(below.values())}

    def format_markdown(self, summary: Mapping[str, Any], comparison: Mapping[str, Any],
                        headroom: Mapping[str, Any], seeds: Sequence[int], wall_s: float,
                        criteria: Mapping[str, Any] | None = None) -> str:
        """The tables (one per metric; a row per method and pace, a column per cell) and the
        verdicts, as markdown."""
        names = [cell.name for cell in self.cells()] + [MEAN_COLUMN, HELD_OUT_COLUMN]
        amount = (f"{self.labels} labelled frames" if self.labels is not None
                  else f"{self.record_laps:g} laps")
        lines = [
            f"Trained on `{self.track}` only: {amount} of the noisy expert at "
            f"{'its own pace' if self.speed_mph is None else f'{self.speed_mph:g} mph'} per "
            f"training seed, `{self.network}` for {self.epochs} epochs (train overrides: "
            f"{' '.join(self.train_overrides) or '(defaults)'}). Each cell: {self.eval_laps:g} "
            f"lap(s) from a standing start {EVALUATED_BY[self.evaluator]}; unseen lighting "
            f"and held-out tracks under lighting seed {self.eval_seed}. Mean ± 95 % CI "
            f"(Student's t) over {len(seeds)} training seeds {list(seeds)}; the expert is one "
            f"drive per cell (no training seed). Pace = expert's time / model's time x 100.", "",
            *[f"- {METHODS[name][0]}: {METHODS[name][1]}" for name in (EXPERT, *self.methods)],
            ""]
        for key, title, fmt in TABLES:
            lines += [f"**{title}**", "", "| method @ pace | " + " | ".join(names) + " |",
                      "|---|" + "---:|" * len(names)]
            for method, pace in self.rows():
                row = summary[method][pace]
                lines.append(f"| {self.row_title(method, pace)} | "
                             + " | ".join(_cell(row[name][key], fmt) for name in names) + " |")
            lines.append("")
        for method, diffs in comparison.get("vs_bc", {}).items():
            parts = [f"{_cell(diffs[key][HELD_OUT_COLUMN], fmt)} {unit}" for key, unit, fmt in (
                ("autonomy", "autonomy points", "{:+.1f}"), ("pace_pct", "pace points", "{:+.1f}"),
                ("mean_abs_cte", "m mean |CTE|", "{:+.3f}"))]
            lines.append(f"- {METHODS[method][0]} minus BC (paired by seed, {HELD_OUT_COLUMN} "
                         f"over {len(names) - 3} held-out cells, {self.paces[0]} pace): "
                         + "; ".join(parts))
        if "autonomy" in comparison:
            parts = []
            for key, unit in (("autonomy", "autonomy points"), ("pace_pct", "pace points")):
                diff = comparison[key][MEAN_COLUMN]
                parts.append(f"{_cell(diff, '{:+.1f}')} {unit}")
            hard = self.hard_track and self._label(self.hard_track)
            if hard:
                parts.append(f"on {hard}: {_cell(comparison['autonomy'][hard], '{:+.1f}')} "
                             f"autonomy, {_cell(comparison['pace_pct'][hard], '{:+.1f}')} pace")
            lines.append(f"- {METHODS[BC_SPEED][0]} at its own predicted speed minus the same "
                         f"models at {self.set_speed:g} mph (paired by seed, mean over cells): "
                         + "; ".join(parts))
        for pair in comparison.get("pairs", []):
            first, second = pair["methods"]
            cells = pair["separated_cells"]
            if not any(cells.values()):
                continue
            parts = [f"{_cell(pair['differences'][key][name], fmt)} {unit} on {name}"
                     for key, unit, fmt in (("autonomy", "autonomy points", "{:+.1f}"),
                                            ("mean_abs_cte", "m mean |CTE|", "{:+.3f}"))
                     for name in cells[key]]
            lines.append(f"- {METHODS[first][0]} minus {METHODS[second][0]} (paired by seed, "
                         f"95 % interval leaves out 0): " + "; ".join(parts))
        if criteria is not None:
            lines.append(
                f"- ranking criterion ({criteria['pace']} pace): expert at 100 % on every cell: "
                f"{'yes' if criteria['expert_full'] else 'NO'}; cells where every method is "
                f"≥ {HEADROOM_POINTS:g} autonomy points below it: "
                f"{', '.join(criteria['headroom_cells']) or 'none'}; pairs of methods separated "
                f"on autonomy: {len(criteria['separated_pairs'])} (≥ 2 needed) -> "
                f"{'the benchmark ranks methods' if criteria['ranks'] else 'NOT MET'}")
        title = METHODS[headroom["method"]][0]
        for pace in self.paces:
            below = headroom["cells_below_expert"][pace]
            lines.append(f"- headroom, {title} at the {pace} pace: below the expert on "
                         f"{len(below)} of {len(names) - 2} cells"
                         + (f" ({', '.join(below)})" if below else ""))
        if not headroom["hard_enough"]:
            lines.append(f"- NOT HARD ENOUGH: {title} matches the expert on every cell")
        lines.append(f"- wall time: {wall_s / 60:.1f} min ({self.evaluator} evaluation); "
                     + ", ".join(f"{phase} {seconds / 60:.1f} min"
                                 for phase, seconds in self.time_split.items()))
        return "\n".join(lines) + "\n"

    @staticmethod
    def split_times(results: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Seconds spent recording, training and evaluating, over the seeds so far."""
        return {phase: sum(seconds for result in results
                           for key, seconds in result["timings"].items()
                           if key.startswith(phase)) for phase in PHASES}

    def payload(self, results: Sequence[Mapping[str, Any]], wall_s: float) -> dict[str, Any]:
        """The leaderboard: one entry per method, ranked by its mean autonomy over the cells at
        the first pace (the expert's by default: how each method is meant to drive), then by its
        pace there."""
        self.time_split = self.split_times(results)
        summary = self.summarize(results)
        comparison = self.comparison(results)
        headroom = self.headroom(summary)
        criteria = self.criteria(summary, comparison)
        seeds = [result["seed"] for result in results]
        entries = []
        for method in (EXPERT, *self.methods):
            score = {pace: {key: summary[method][pace][MEAN_COLUMN][key]["mean"]
                            for key in ("autonomy", "pace_pct")} for pace in self.paces}
            entries.append({
                "method": method, "title": METHODS[method][0],
                "description": METHODS[method][1],
                "train_overrides": list(METHODS[method][2] or ()),
                "paces": {pace: {"title": self.row_title(method, pace),
                                 "drive_server": (None if method == EXPERT else
                                                  self.server_overrides(method, pace))}
                          for pace in self.paces},
                "score": score,  # the mean column's means
                "runs": [result["runs"][method] for result in results] if method != EXPERT else [],
                "cells": summary[method]})
        first = self.paces[0]
        entries.sort(key=lambda entry: (-entry["score"][first]["autonomy"],
                                        -entry["score"][first]["pace_pct"]))
        for rank, entry in enumerate(entries, 1):
            entry["rank"] = rank
        settings = {key: (list(value) if isinstance(value, (list, tuple)) else value)
                    for key, value in asdict(self).items()}
        return {
            "benchmark": "driving", "created": datetime.now(timezone.utc).isoformat(),
            "command": "python scripts/benchmark.py " + " ".join(
                shlex.quote(arg) for arg in sys.argv[1:]),
            "wall_s": wall_s, "time_split_s": self.time_split, "seeds": seeds,
            "settings": settings,
            "cells": [asdict(cell) for cell in self.cells()],
            "paces": {"expert": "the expert's pace (module doc of bc/experiments/benchmarks/driving.py)",
                      "fixed": f"set speed {self.set_speed:g} mph"},
            "expert_mean_mph": self.expert_mean_mph,
            "entries": entries, "comparison": comparison, "headroom": headroom,
            "criteria": criteria, "per_seed": list(results),
            "markdown": self.format_markdown(summary, comparison, headroom, seeds, wall_s,
                                             criteria),
        }

    def write(self, results: Sequence[Mapping[str, Any]], wall_s: float,
              final: bool) -> dict[str, Any]:
        """<out>/leaderboard.json|.md (and `leaderboard` when final); returns the payload."""
        payload = self.payload(results, wall_s)
        paths = [Path(self.out) / "leaderboard.json"]
        if final and self.leaderboard:
            paths.append(Path(self.leaderboard))
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_suffix(".json").write_text(json.dumps(payload, indent=2,
                                                            default=_json_default) + "\n")
            path.with_suffix(".md").write_text(payload["markdown"])
        payload["paths"] = [str(path.with_suffix(".json").resolve()) for path in paths]
        return payload

    def after_seed(self, results: list[dict[str, Any]], wall_s: float) -> None:
        self.write(results, wall_s, final=False)

    def finish(self, results: list[dict[str, Any]], wall_s: float) -> None:
        payload = self.write(results, wall_s, final=True)
        print("\n" + payload["markdown"] + "\nleaderboard: " + ", ".join(payload["paths"]),
              flush=True)


def _separated(diff: Mapping[str, Any]) -> bool:
    """A paired difference whose 95 % interval leaves out zero."""
    return (diff["mean"] is not None and diff["ci95"] is not None
            and abs(diff["mean"]) > diff["ci95"])


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None
