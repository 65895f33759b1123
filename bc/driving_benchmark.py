"""Driving-quality benchmark: does a model trained on lake recordings only actually drive?

For each training seed: record the lake track with the noisy expert (that seed's noise and
lighting), train on that recording only, then drive the model closed-loop - scripts/drive.py
serving it, bc.sim driving over Socket.IO - on lake, on the hard track and on random tracks it
never saw. Prints a markdown table of autonomy %, mean |CTE| and laps as mean +- std over the
seeds, with the set speed, and writes it (plus every per-track number) as .md and .json.
Every step is the CLI a user would type (scripts/simulate.py, train.py, evaluate.py); each
step's output goes to a log file in the run folder.

    python -m bc.driving_benchmark                 # settings: conf/benchmark/driving.yaml
    python -m bc.driving_benchmark seeds=[0] record_laps=1 epochs=1 other_laps=0.5
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from bc.errors import BcError

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
LAKE_AUTONOMY_TARGET = 100.0  # % on the trained track, for every seed
UNSEEN_AUTONOMY_TARGET = 95.0  # % on tracks never trained on (mean over seeds)
LAKE_SPEED_TARGET_MPH = 20.0
LAP_TOLERANCE = 0.01  # progress_laps of a finished drive is a hair over the laps asked for
LOG_TAIL_CHARS = 3000  # of a failed step's log, shown in the error
RANDOM_GROUP = "random"
METRIC_KEYS = ("autonomy", "mean_abs_cte", "laps_completed", "progress_laps", "interventions",
               "mean_speed_mph", "sim_time_s", "distance_m", "p95_abs_cte", "max_abs_cte")


class BenchmarkError(BcError, RuntimeError):
    """A step of the benchmark failed; the message holds the command and its log's tail."""


@dataclass
class BenchmarkSettings:
    """Everything the benchmark does; defaults as in conf/benchmark/driving.yaml."""

    seeds: Sequence[int] = (0, 1, 2)
    track: str = "lake"
    record_laps: float = 3
    speed_mph: float = 20.0
    record_overrides: Sequence[str] = ()
    network: str = "nvidia"  # conf/model/<network>.yaml
    epochs: int = 5
    train_overrides: Sequence[str] = ("experiment=lake_driver",)
    experiment_name: str = "driving_benchmark"
    tracking_uri: str | None = None
    set_speed: float = 20.0
    slow_in_bends: bool = False
    eval_seed: int = 1000
    lake_laps: float = 3
    hard_track: str | None = "mountain"
    random_tracks: Sequence[int] = (1, 2, 3, 4, 5)
    other_laps: float = 1
    video: bool = False
    out: str = "outputs/benchmark/driving/latest"
    report: str | None = "outputs/benchmark/driving"
    keep_data: bool = False

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "BenchmarkSettings":
        """Settings from a (Hydra) mapping; unknown keys are an error naming them."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known - {"hydra"})
        if unknown:
            raise ValueError(f"benchmark: unknown settings {unknown}; expected {sorted(known)}")
        return cls(**{k: v for k, v in values.items() if k in known})


def _run_step(name: str, script: str, overrides: Sequence[str], log_path: Path) -> float:
    """Run one of our CLIs with its output in `log_path`; returns its wall time (s)."""
    command = [sys.executable, str(SCRIPTS / script), *overrides]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    elapsed = time.monotonic() - started
    if code != 0:
        tail = log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        raise BenchmarkError(f"{name} failed (exit {code}); log {log_path}:\n{tail}")
    return elapsed


def _find_run(experiment: str, run_name: str, tracking_uri: str | None) -> str:
    """The MLflow run id of the training run named `run_name`."""
    from bc import tracking

    client = tracking.client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    runs = [] if found is None else client.search_runs(
        [found.experiment_id], filter_string=f"tags.mlflow.runName = '{run_name}'")
    if not runs:
        raise BenchmarkError(f"training logged no MLflow run named {run_name!r} in {experiment!r}")
    return runs[0].info.run_id


def _eval_groups(s: BenchmarkSettings) -> list[tuple[list[str], float]]:
    """(tracks, laps) per evaluate.py call: the trained track, then the unseen ones."""
    groups: list[tuple[list[str], float]] = [([s.track], float(s.lake_laps))]
    others = ([s.hard_track] if s.hard_track else []) + [f"random:{n}" for n in s.random_tracks]
    if others and s.other_laps > 0:
        groups.append((others, float(s.other_laps)))
    return groups


def _label(track: str) -> str:
    from bc.evaluate import TrackSpec

    return TrackSpec.parse(track).label


def run_seed(seed: int, s: BenchmarkSettings, work: Path, stamp: str,
             say: Callable[[str], None] = print) -> dict[str, Any]:
    """Record, train and evaluate for one training seed; returns its per-track metrics."""
    seed_dir = work / f"seed{seed}"
    data = seed_dir / "data" / s.track
    cache = seed_dir / "frame_cache"
    if data.exists():  # the recorder appends: never mix in a previous attempt's rows
        shutil.rmtree(data)
    timings: dict[str, float] = {}
    say(f"[seed {seed}] record {s.record_laps} laps of {s.track} at {s.speed_mph} mph")
    timings["record_s"] = _run_step("record", "simulate.py", [
        "mode=record", f"track={s.track}", f"laps={s.record_laps}", f"speed_mph={s.speed_mph}",
        f"seed={seed}", f"out={data}", "progress=false", f"hydra.run.dir={seed_dir / 'record'}",
        *s.record_overrides], seed_dir / "record.log")
    run_name = f"bench-{stamp}-seed{seed}"
    uri = [f"tracking_uri={s.tracking_uri}"] if s.tracking_uri else []
    say(f"[seed {seed}] train {s.network} for {s.epochs} epochs ({' '.join(s.train_overrides)})")
    timings["train_s"] = _run_step("train", "train.py", [
        *s.train_overrides, f"model={s.network}", f"data.paths=[{data}]", f"data.cache_dir={cache}",
        f"trainer.max_epochs={s.epochs}", f"experiment_name={s.experiment_name}",
        f"run_name={run_name}", f"seed={seed}", "callbacks.progress_bar.refresh_rate=0",
        f"hydra.run.dir={seed_dir / 'train'}", *uri], seed_dir / "train.log")
    if not s.keep_data:
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    run_id = _find_run(s.experiment_name, run_name, s.tracking_uri)
    tracks: dict[str, dict[str, Any]] = {}
    timings["eval_s"] = 0.0
    for index, (names, laps) in enumerate(_eval_groups(s)):
        say(f"[seed {seed}] drive {', '.join(names)} ({laps:g} laps each, {s.set_speed} mph)")
        out = seed_dir / "eval"
        timings["eval_s"] += _run_step("evaluate", "evaluate.py", [
            f"run_id={run_id}", f"track=[{','.join(names)}]", f"laps={laps}",
            f"set_speed={s.set_speed}", f"slow_in_bends={str(bool(s.slow_in_bends)).lower()}",
            f"seed={s.eval_seed}", f"out={out}", f"video={str(bool(s.video)).lower()}",
            "progress=false", f"hydra.run.dir={out}", *uri], seed_dir / f"evaluate{index}.log")
        for name in names:
            metrics = json.loads((out / _label(name) / "metrics.json").read_text())
            metrics["target_laps"] = laps
            tracks[_label(name)] = metrics
    for name, metrics in tracks.items():
        say(f"[seed {seed}]   {name:<10} autonomy {metrics['autonomy']:5.1f} %  "
            f"|cte| {metrics['mean_abs_cte']:.3f} m  laps {metrics['laps_completed']}"
            f"/{metrics['target_laps']:g}  interventions {metrics['interventions']}")
    return {"seed": seed, "run_id": run_id, "timings": timings, "tracks": tracks}


def expert_reference(track: str, laps: float, speed_mph: float, seed: int = 0) -> dict[str, float]:
    """The expert (pure pursuit on the true centreline, no camera, no noise) driven like the
    model: a floor for the mean |CTE| a network imitating it can reach."""
    from bc.evaluate import TrackSpec
    from bc.sim.car import Car, CarState
    from bc.sim.expert import Expert
    from bc.sim.track import load_track

    spec = TrackSpec.parse(track)
    geometry = load_track(spec.spec, seed=spec.seed if spec.spec == "random" else seed)
    car = Car()
    expert = Expert(geometry, speed_mph=speed_mph, car=car)
    x, y, heading = geometry.pose_at(0.0)
    state = CarState(x, y, heading, 0.0)
    previous, travelled, errors = geometry.locate(x, y).s, 0.0, []
    while travelled < laps * geometry.length:
        state = car.step(state, *expert.act(state))
        here = geometry.locate(state.x, state.y)
        half = geometry.length / 2
        travelled += (here.s - previous + half) % geometry.length - half
        previous = here.s
        errors.append(abs(here.cte))
    return {"mean_abs_cte": float(np.mean(errors)), "max_abs_cte": float(np.max(errors))}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def group_tracks(s: BenchmarkSettings) -> list[tuple[str, list[str]]]:
    """Table rows: the trained track, the hard track, the random tracks, all unseen tracks."""
    groups = [(f"{s.track} (trained)", [_label(s.track)])]
    if s.other_laps > 0:
        unseen = []
        if s.hard_track:
            groups.append((f"{_label(s.hard_track)} (unseen, hard)", [_label(s.hard_track)]))
            unseen.append(_label(s.hard_track))
        if s.random_tracks:
            randoms = [_label(f"random:{n}") for n in s.random_tracks]
            groups.append((f"{RANDOM_GROUP} x{len(randoms)} (unseen)", randoms))
            unseen += randoms
        if s.hard_track and s.random_tracks:
            groups.append((f"all unseen ({len(unseen)} tracks)", unseen))
    return groups


def summarize(seed_results: Sequence[Mapping[str, Any]], s: BenchmarkSettings,
              reference: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, Any]:
    """Per track group: each seed's mean over the group's tracks, then mean +- std over seeds
    (plus the expert's mean |CTE| on the same tracks when `reference` is given)."""
    rows = []
    for title, labels in group_tracks(s) + [(label, [label]) for label in _all_labels(s)]:
        per_seed = {key: [float(np.mean([r["tracks"][t][key] for t in labels]))
                          for r in seed_results] for key in METRIC_KEYS}
        rows.append({
            "group": title, "tracks": labels, "detail": len(labels) == 1 and title == labels[0],
            "target_laps": float(seed_results[0]["tracks"][labels[0]]["target_laps"]),
            "per_seed": per_seed,
            **{key: _mean_std(values) for key, values in per_seed.items()},
            "expert_mean_abs_cte": (float(np.mean([reference[t]["mean_abs_cte"] for t in labels]))
                                    if reference else None),
        })
    return {"rows": rows, "seeds": [r["seed"] for r in seed_results],
            "timings": [r["timings"] for r in seed_results]}


def _all_labels(s: BenchmarkSettings) -> list[str]:
    return [_label(t) for names, _ in _eval_groups(s) for t in names]


def _pm(value: tuple[float, float], fmt: str) -> str:
    return f"{fmt.format(value[0])} ± {fmt.format(value[1])}"


def format_markdown(summary: Mapping[str, Any], s: BenchmarkSettings,
                    wall_s: float | None = None) -> str:
    """The benchmark's tables (groups, then every track) and the targets, as markdown."""
    seeds = summary["seeds"]
    head = ("| track | laps driven | set speed (mph) | autonomy (%) | mean abs CTE (m) "
            "| max abs CTE (m) | laps completed | interventions | mean speed (mph) "
            "| expert mean abs CTE (m) |")
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"

    def line(row: Mapping[str, Any]) -> str:
        expert = row.get("expert_mean_abs_cte")
        return (f"| {row['group']} | {row['target_laps']:g} | {s.set_speed:g} "
                f"| {_pm(row['autonomy'], '{:.1f}')} | {_pm(row['mean_abs_cte'], '{:.3f}')} "
                f"| {_pm(row['max_abs_cte'], '{:.2f}')} "
                f"| {_pm(row['laps_completed'], '{:.2f}')} | {_pm(row['interventions'], '{:.2f}')} "
                f"| {_pm(row['mean_speed_mph'], '{:.1f}')} "
                f"| {'-' if expert is None else format(expert, '.3f')} |")

    groups = [row for row in summary["rows"] if not row["detail"]]
    detail = [row for row in summary["rows"] if row["detail"]]
    overrides = " ".join(s.train_overrides) or "(defaults)"
    record = " ".join(s.record_overrides) or "(defaults)"
    lines = [
        f"Trained on `{s.track}` only: {s.record_laps:g} laps of noisy-expert driving at "
        f"{s.speed_mph:g} mph per seed (simulate overrides: {record}), model `{s.network}`, "
        f"{s.epochs} epochs (train overrides: {overrides}). Closed loop through scripts/drive.py "
        f"at set speed {s.set_speed:g} mph (slow_in_bends={str(bool(s.slow_in_bends)).lower()}), "
        f"eval lighting seed {s.eval_seed}. Mean ± std over {len(seeds)} training seeds "
        f"{list(seeds)}; a group's value per seed is the mean over its tracks. Expert: the "
        f"recording's pure-pursuit driver on the true centreline (no camera), for reference.",
        "", head, rule, *[line(row) for row in groups], "",
        "Per track:", "", head, rule, *[line(row) for row in detail], "",
    ]
    lines += [f"- {text}" for text in check_targets(summary, s)]
    steps = {key: [t[key] for t in summary.get("timings", [])]
             for key in ("record_s", "train_s", "eval_s")}
    if steps["train_s"]:
        lines.append("- per seed (mean): " + ", ".join(
            f"{key[:-2]} {np.mean(values):.0f} s" for key, values in steps.items()))
    if wall_s is not None:
        lines.append(f"- wall time: {wall_s / 60:.1f} min")
    return "\n".join(lines) + "\n"


def check_targets(summary: Mapping[str, Any], s: BenchmarkSettings) -> list[str]:
    """The issue's targets, each marked met / MISSED with the margin."""
    rows = {row["group"]: row for row in summary["rows"] if not row["detail"]}
    out = []
    lake = rows[f"{s.track} (trained)"]
    worst = min(lake["per_seed"]["autonomy"])
    fewest = min(lake["per_seed"]["progress_laps"])
    ok = (worst >= LAKE_AUTONOMY_TARGET and fewest >= s.lake_laps - LAP_TOLERANCE
          and s.set_speed >= LAKE_SPEED_TARGET_MPH)
    out.append(f"target {s.track}: {LAKE_AUTONOMY_TARGET:g} % autonomy for {s.lake_laps:g} laps at "
               f">= 20 mph, every seed: {'met' if ok else 'MISSED'} (worst seed {worst:.1f} %, "
               f"fewest laps {fewest:.2f}, set speed {s.set_speed:g} mph)")
    for title, row in rows.items():
        if "unseen" in title:
            mean = row["autonomy"][0]
            worst = min(row["per_seed"]["autonomy"])
            verdict = "met" if mean >= UNSEEN_AUTONOMY_TARGET else (
                f"MISSED by {UNSEEN_AUTONOMY_TARGET - mean:.1f} points")
            out.append(f"target {title}: >= {UNSEEN_AUTONOMY_TARGET:g} % autonomy: {verdict} "
                       f"(mean {mean:.1f} %, worst seed {worst:.1f} %)")
    return out


def run_benchmark(settings: BenchmarkSettings | Mapping[str, Any] | None = None,
                  say: Callable[[str], None] = print, **overrides: Any) -> dict[str, Any]:
    """Run the whole benchmark; returns {settings, seeds: per-seed results, summary, markdown}
    and writes driving.md / driving.json to `out` (and to `report`.md/.json when set)."""
    if settings is None:
        settings = BenchmarkSettings()
    elif isinstance(settings, Mapping):
        settings = BenchmarkSettings.from_mapping(settings)
    for key, value in overrides.items():
        setattr(settings, key, value)
    s = settings
    if not s.seeds:
        raise ValueError("benchmark: seeds must list at least one training seed")
    work = Path(s.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    started = time.monotonic()
    say(f"driving benchmark: seeds {list(s.seeds)}, outputs in {work}")
    reference = {_label(t): expert_reference(t, laps, s.set_speed, s.eval_seed)
                 for names, laps in _eval_groups(s) for t in names}
    results = []
    for seed in s.seeds:
        results.append(run_seed(int(seed), s, work, stamp, say))
        # after every seed, so an interrupted run still leaves its partial results
        _write(work, s, results, None, time.monotonic() - started, reference)
    wall = time.monotonic() - started
    report = _write(work, s, results, s.report, wall, reference)
    say("\n" + report["markdown"])
    return report


def _settings_dict(s: BenchmarkSettings) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, (list, tuple)) else v)
            for k, v in s.__dict__.items()}


def _write(work: Path, s: BenchmarkSettings, results: list[dict[str, Any]],
           report: str | None, wall: float,
           reference: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, Any]:
    summary = summarize(results, s, reference)
    markdown = format_markdown(summary, s, wall)
    payload = {"settings": _settings_dict(s), "wall_s": wall, "seeds": results,
               "expert_reference": reference,
               "summary": summary, "targets": check_targets(summary, s), "markdown": markdown}
    targets = [work / "driving"] + ([Path(report)] if report else [])
    for base in targets:
        base.parent.mkdir(parents=True, exist_ok=True)
        base.with_suffix(".md").write_text(markdown)
        base.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=_json_default))
    return payload


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def main() -> None:
    """`python -m bc.driving_benchmark [overrides]`: settings in conf/benchmark/driving.yaml."""
    import hydra
    from omegaconf import OmegaConf

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="benchmark/driving")
    def _main(cfg: Any) -> None:
        values = OmegaConf.to_container(cfg, resolve=True)
        try:
            run_benchmark(BenchmarkSettings.from_mapping(values))
        except (BenchmarkError, ValueError) as error:
            sys.exit(f"driving benchmark: {error}")

    _main()


if __name__ == "__main__":
    main()
