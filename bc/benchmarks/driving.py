"""Driving-quality benchmark: does a model trained on one track's recordings actually drive?

It is the record -> train -> evaluate pipeline (`bc.pipeline.Pipeline`) over several training
seeds, driven on the trained track, a hard track and random tracks it never saw, plus a
summary: a markdown table of autonomy %, mean |CTE| and laps as mean +- std over the seeds,
with the expert's own |CTE| for reference, and the targets; written as .md and .json (with
every per-track number) after every seed, so an interrupted run keeps its partial results.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from bc.pipeline import Pipeline

TRAINED_AUTONOMY_TARGET = 100.0  # % on the trained track, for every seed
UNSEEN_AUTONOMY_TARGET = 95.0  # % on tracks never trained on (mean over seeds)
TRAINED_SPEED_TARGET_MPH = 20.0
LAP_TOLERANCE = 0.01  # progress_laps of a finished drive is a hair over the laps asked for
RANDOM_GROUP = "random"
METRIC_KEYS = ("autonomy", "mean_abs_cte", "laps_completed", "progress_laps", "interventions",
               "mean_speed_mph", "sim_time_s", "distance_m", "p95_abs_cte", "max_abs_cte")


def expert_reference(track: str, laps: float, speed_mph: float, seed: int = 0) -> dict[str, float]:
    """The expert (pure pursuit on the true centreline, no camera, no noise) driven like the
    model, through the same DrivingEnv: a floor for the mean |CTE| a network imitating it
    can reach."""
    from bc.sim.metrics import compute_metrics, expert_drive

    metrics = compute_metrics(expert_drive(track, laps, seed=seed, speed_mph=speed_mph))
    return {"mean_abs_cte": metrics["mean_abs_cte"], "max_abs_cte": metrics["max_abs_cte"]}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def _pm(value: tuple[float, float], fmt: str) -> str:
    return f"{fmt.format(value[0])} ± {fmt.format(value[1])}"


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@dataclass
class DrivingBenchmark(Pipeline):
    """The pipeline with a report: `<out>/driving.md|.json`, and `<report>.md|.json` too
    when `report` is set (the latest run's, at a fixed path)."""

    report: str | None = None

    @cached_property
    def reference(self) -> dict[str, dict[str, float]]:
        """The expert's own drive of every evaluated track, once per benchmark."""
        return {self._label(track): expert_reference(track, laps, self.set_speed, self.eval_seed)
                for names, laps in self.eval_groups() for track in names}

    def labels(self) -> list[str]:
        return [self._label(track) for names, _ in self.eval_groups() for track in names]

    def groups(self) -> list[tuple[str, list[str]]]:
        """Table rows: the trained track, the hard track, the random tracks, all unseen."""
        groups = [(f"{self.track} (trained)", [self._label(self.track)])]
        unseen = [self._label(track) for track in self.unseen_tracks()]
        if self.hard_track and unseen:
            groups.append((f"{unseen[0]} (unseen, hard)", unseen[:1]))
        randoms = unseen[1:] if self.hard_track else unseen
        if randoms:
            groups.append((f"{RANDOM_GROUP} x{len(randoms)} (unseen)", randoms))
        if self.hard_track and randoms:
            groups.append((f"all unseen ({len(unseen)} tracks)", unseen))
        return groups

    def summarize(self, results: Sequence[Mapping[str, Any]],
                  reference: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
        """Per track group: each seed's mean over the group's tracks, then mean +- std over
        seeds, beside the expert's mean |CTE| on the same tracks."""
        rows = []
        for title, labels in self.groups() + [(label, [label]) for label in self.labels()]:
            per_seed = {key: [float(np.mean([r["tracks"][t][key] for t in labels]))
                              for r in results] for key in METRIC_KEYS}
            rows.append({
                "group": title, "tracks": labels, "detail": len(labels) == 1 and title == labels[0],
                "target_laps": float(results[0]["tracks"][labels[0]]["target_laps"]),
                "per_seed": per_seed,
                **{key: _mean_std(values) for key, values in per_seed.items()},
                "expert_mean_abs_cte": float(np.mean([reference[t]["mean_abs_cte"]
                                                      for t in labels])),
            })
        return {"rows": rows, "seeds": [r["seed"] for r in results],
                "timings": [r["timings"] for r in results]}

    def check_targets(self, summary: Mapping[str, Any]) -> list[str]:
        """The targets, each marked met / MISSED with the margin."""
        rows = {row["group"]: row for row in summary["rows"] if not row["detail"]}
        trained = rows[f"{self.track} (trained)"]
        worst = min(trained["per_seed"]["autonomy"])
        fewest = min(trained["per_seed"]["progress_laps"])
        ok = (worst >= TRAINED_AUTONOMY_TARGET and fewest >= self.eval_laps - LAP_TOLERANCE
              and self.set_speed >= TRAINED_SPEED_TARGET_MPH)
        out = [f"target {self.track}: {TRAINED_AUTONOMY_TARGET:g} % autonomy for "
               f"{self.eval_laps:g} laps at >= {TRAINED_SPEED_TARGET_MPH:g} mph, every seed: "
               f"{'met' if ok else 'MISSED'} (worst seed {worst:.1f} %, fewest laps "
               f"{fewest:.2f}, set speed {self.set_speed:g} mph)"]
        for title, row in rows.items():
            if "unseen" in title:
                mean = row["autonomy"][0]
                verdict = "met" if mean >= UNSEEN_AUTONOMY_TARGET else (
                    f"MISSED by {UNSEEN_AUTONOMY_TARGET - mean:.1f} points")
                worst = min(row["per_seed"]["autonomy"])
                out.append(f"target {title}: >= {UNSEEN_AUTONOMY_TARGET:g} % autonomy: {verdict} "
                           f"(mean {mean:.1f} %, worst seed {worst:.1f} %)")
        return out

    def format_markdown(self, summary: Mapping[str, Any], wall_s: float) -> str:
        """The tables (groups, then every track) and the targets, as markdown."""
        head = ("| track | laps driven | set speed (mph) | autonomy (%) | mean abs CTE (m) "
                "| max abs CTE (m) | laps completed | interventions | mean speed (mph) "
                "| expert mean abs CTE (m) |")
        rule = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"

        def line(row: Mapping[str, Any]) -> str:
            return (f"| {row['group']} | {row['target_laps']:g} | {self.set_speed:g} "
                    f"| {_pm(row['autonomy'], '{:.1f}')} | {_pm(row['mean_abs_cte'], '{:.3f}')} "
                    f"| {_pm(row['max_abs_cte'], '{:.2f}')} "
                    f"| {_pm(row['laps_completed'], '{:.2f}')} "
                    f"| {_pm(row['interventions'], '{:.2f}')} "
                    f"| {_pm(row['mean_speed_mph'], '{:.1f}')} "
                    f"| {row['expert_mean_abs_cte']:.3f} |")

        seeds = summary["seeds"]
        groups = [row for row in summary["rows"] if not row["detail"]]
        detail = [row for row in summary["rows"] if row["detail"]]
        lines = [
            f"Trained on `{self.track}` only: {self.record_laps:g} laps of noisy-expert driving "
            f"at {self.speed_mph:g} mph per seed (simulate overrides: "
            f"{' '.join(self.record_overrides) or '(defaults)'}), model `{self.network}`, "
            f"{self.epochs} epochs (train overrides: "
            f"{' '.join(self.train_overrides) or '(defaults)'}). Closed loop through "
            f"scripts/drive.py at set speed {self.set_speed:g} mph "
            f"(slow_in_bends={str(self.slow_in_bends).lower()}), eval lighting seed "
            f"{self.eval_seed}. Mean ± std over {len(seeds)} training seeds {list(seeds)}; a "
            f"group's value per seed is the mean over its tracks. Expert: the recording's "
            f"pure-pursuit driver on the true centreline (no camera), for reference.",
            "", head, rule, *[line(row) for row in groups], "",
            "Per track:", "", head, rule, *[line(row) for row in detail], "",
            *[f"- {text}" for text in self.check_targets(summary)],
        ]
        steps = {key: [t[key] for t in summary["timings"]] for key in ("record_s", "train_s",
                                                                        "eval_s")}
        lines.append("- per seed (mean): " + ", ".join(
            f"{key[:-2]} {np.mean(values):.0f} s" for key, values in steps.items()))
        lines.append(f"- wall time: {wall_s / 60:.1f} min")
        return "\n".join(lines) + "\n"

    def write(self, results: list[dict[str, Any]], wall_s: float, final: bool) -> dict[str, Any]:
        """driving.md/.json in `out` (and at `report` when final); returns the payload."""
        summary = self.summarize(results, self.reference)
        markdown = self.format_markdown(summary, wall_s)
        settings = {key: (list(value) if isinstance(value, (list, tuple)) else value)
                    for key, value in asdict(self).items()}
        payload = {"settings": settings, "wall_s": wall_s, "seeds": results,
                   "expert_reference": self.reference, "summary": summary,
                   "targets": self.check_targets(summary), "markdown": markdown}
        targets = [Path(self.out) / "driving"] + ([Path(self.report)] if final and self.report
                                                  else [])
        for base in targets:
            base.parent.mkdir(parents=True, exist_ok=True)
            base.with_suffix(".md").write_text(markdown)
            base.with_suffix(".json").write_text(json.dumps(payload, indent=2,
                                                            default=_json_default))
        return payload

    def after_seed(self, results: list[dict[str, Any]], wall_s: float) -> None:
        self.write(results, wall_s, final=False)

    def finish(self, results: list[dict[str, Any]], wall_s: float) -> None:
        print("\n" + self.write(results, wall_s, final=True)["markdown"], flush=True)
