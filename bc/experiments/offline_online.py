"""Offline vs online: does the validation loss say which checkpoint drives best?

For the runs of a sweep (or of an experiment) trained with the closed-loop callback
(`callbacks.closed_loop.every_n_epochs=1`, bc/evaluation/callback.py), every epoch that logged both
metrics is one point: its offline metric (`val/loss`) against its closed-loop score
(`eval/score`). `OfflineOnline.run` plots them (one colour per run, the epoch each metric would
select ringed), computes Spearman's rank correlation over all points and within each run, and
logs the plot, the points (CSV) and the correlation to a new MLflow run `offline-vs-online` in
the same experiment (Codevilla et al. 2018 found offline losses to rank driving models poorly).

    python scripts/offline_online.py experiment_name=bc sweep=multirun/2026-12-01/10-00-00
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from bc import tracking
from bc.errors import BcError, ConfigError

RUN_NAME = "offline-vs-online"
TAG_SWEEP = "sweep"  # bc.training.mlflow_run tags every job of a sweep with the sweep's folder


class NotEnoughPoints(BcError, ValueError):
    """Too few epochs with both metrics for a correlation; the message says where to get them."""


@dataclass
class Point:
    run_id: str
    run_name: str
    step: int
    offline: float
    online: float


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (None when either side is constant or under 3 points)."""
    from scipy import stats

    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    rho = float(stats.spearmanr(xs, ys).statistic)
    return rho if math.isfinite(rho) else None


@dataclass
class OfflineOnline:
    """Settings as in conf/offline_online.yaml (module doc)."""

    experiment_name: str = "bc"
    sweep: str | None = None  # a sweep's folder (tag `sweep`); None: every run of the experiment
    offline_metric: str = "val/loss"
    online_metric: str = "eval/score"
    offline_mode: str = "min"  # which offline value selects a checkpoint
    online_mode: str = "max"
    tracking_uri: str | None = None
    out: str = "outputs/offline_online"

    def __post_init__(self) -> None:
        for name in ("offline_mode", "online_mode"):
            if getattr(self, name) not in ("min", "max"):
                raise ConfigError(f"{name}: expected min or max, got {getattr(self, name)!r}")

    def runs(self) -> list[Any]:
        client = tracking.client(self.tracking_uri)
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            raise ConfigError(f"experiment_name: no MLflow experiment {self.experiment_name!r} "
                              f"in {tracking.resolve_tracking_uri(self.tracking_uri)}")
        query = f"tags.`{TAG_SWEEP}` = '{Path(self.sweep).resolve()}'" if self.sweep else ""
        return [run for run in client.search_runs([experiment.experiment_id], query)
                if run.data.tags.get("mlflow.runName") != RUN_NAME]

    def points(self) -> list[Point]:
        """Every (run, step) that logged both metrics."""
        client = tracking.client(self.tracking_uri)
        found: list[Point] = []
        for run in self.runs():
            if self.online_metric not in run.data.metrics:
                continue
            offline = {m.step: m.value for m in client.get_metric_history(run.info.run_id,
                                                                           self.offline_metric)}
            for metric in client.get_metric_history(run.info.run_id, self.online_metric):
                if metric.step in offline:
                    found.append(Point(run.info.run_id, run.info.run_name, metric.step,
                                       offline[metric.step], metric.value))
        return found

    def run(self) -> dict[str, Any]:
        """Plot, correlate and log (module doc); returns the summary."""
        points = self.points()
        if len(points) < 3:
            raise NotEnoughPoints(
                f"{len(points)} epoch(s) of experiment {self.experiment_name!r}"
                f"{f' sweep {self.sweep}' if self.sweep else ''} logged both "
                f"{self.offline_metric} and {self.online_metric}; train with "
                f"callbacks.closed_loop.every_n_epochs=1 (at least 3 epochs in all)")
        by_run: dict[str, list[Point]] = {}
        for point in points:
            by_run.setdefault(point.run_id, []).append(point)
        rho = spearman([p.offline for p in points], [p.online for p in points])
        per_run = {run_id: spearman([p.offline for p in items], [p.online for p in items])
                   for run_id, items in by_run.items()}
        chosen = {run_id: self.selections(items) for run_id, items in by_run.items()}
        summary = {"points": len(points), "runs": len(by_run), "spearman": rho,
                   "spearman_per_run": per_run,
                   "selection_agrees": sum(a.step == b.step for a, b in chosen.values()),
                   "online_lost_by_offline_selection": [b.online - a.online
                                                        for a, b in chosen.values()]}
        out = Path(self.out)
        out.mkdir(parents=True, exist_ok=True)
        plot = self.plot(by_run, chosen, rho, out / "offline_vs_online.png")
        table = self.write_points(points, out / "offline_vs_online.csv")
        summary["run_id"] = self.log(summary, [plot, table])
        summary["files"] = [str(plot), str(table)]
        print(f"{len(points)} epochs of {len(by_run)} run(s): Spearman rank correlation of "
              f"{self.offline_metric} and {self.online_metric} = "
              f"{'n/a' if rho is None else f'{rho:+.2f}'}; the {self.offline_metric} choice is "
              f"the {self.online_metric} choice in {summary['selection_agrees']} of {len(by_run)} "
              f"run(s); plot {plot}, logged to MLflow run {summary['run_id']}", flush=True)
        return summary

    def selections(self, items: Sequence[Point]) -> tuple[Point, Point]:
        """(the point the offline metric selects, the one the online metric selects)."""
        pick = {"min": min, "max": max}
        return (pick[self.offline_mode](items, key=lambda p: p.offline),
                pick[self.online_mode](items, key=lambda p: p.online))

    def plot(self, by_run: dict[str, list[Point]], chosen: dict[str, tuple[Point, Point]],
             rho: float | None, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(7, 5))
        for run_id, items in by_run.items():
            dots = axes.scatter([p.offline for p in items], [p.online for p in items],
                                label=items[0].run_name, alpha=0.8)
            offline_pick, online_pick = chosen[run_id]
            axes.scatter([offline_pick.offline], [offline_pick.online], s=160, facecolors="none",
                         edgecolors=dots.get_facecolor()[0], linewidths=1.5, marker="s")
            axes.scatter([online_pick.offline], [online_pick.online], s=220, facecolors="none",
                         edgecolors=dots.get_facecolor()[0], linewidths=1.5, marker="o")
        axes.set_xlabel(f"{self.offline_metric} (offline)")
        axes.set_ylabel(f"{self.online_metric} (closed loop)")
        axes.set_title(f"per epoch; Spearman rho = {'n/a' if rho is None else f'{rho:+.2f}'} "
                       f"(square: {self.offline_metric} choice, circle: "
                       f"{self.online_metric} choice)", fontsize=9)
        if len(by_run) <= 12:
            axes.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return path

    @staticmethod
    def write_points(points: Sequence[Point], path: Path) -> Path:
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["run_id", "run_name", "step", "offline", "online"])
            for p in points:
                writer.writerow([p.run_id, p.run_name, p.step, p.offline, p.online])
        return path

    def log(self, summary: dict[str, Any], files: Sequence[Path]) -> str:
        """A new run in the experiment holding the plot, the points and the correlation."""
        client = tracking.client(self.tracking_uri)
        experiment = client.get_experiment_by_name(self.experiment_name).experiment_id
        tags = {TAG_SWEEP: str(Path(self.sweep).resolve())} if self.sweep else {}
        run = client.create_run(experiment, run_name=RUN_NAME, tags=tags)
        run_id = run.info.run_id
        for key, value in (("offline_metric", self.offline_metric),
                           ("online_metric", self.online_metric)):
            client.log_param(run_id, key, value)
        if summary["spearman"] is not None:
            client.log_metric(run_id, "spearman", summary["spearman"])
        client.log_metric(run_id, "points", summary["points"])
        client.log_metric(run_id, "selection_agrees", summary["selection_agrees"])
        for path in files:
            client.log_artifact(run_id, str(path))
        client.set_terminated(run_id, "FINISHED")
        return run_id
