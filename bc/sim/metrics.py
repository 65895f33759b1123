"""Closed-loop driving metrics of an autonomous run: a table for people, JSON for files, and
MLflow metrics (``eval/<track>/<name>``) on the run whose model drove.

Autonomy follows NVIDIA's "End to End Learning for Self-Driving Cars": every intervention
costs 6 s of human driving, autonomy = (1 - interventions * 6 s / elapsed s) * 100.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

INTERVENTION_COST_S = 6.0  # NVIDIA's assumed human time per intervention
CTE_PERCENTILE = 95
METRIC_PREFIX = "eval"

# (key, label, format) in table order; the keys are the metric names logged to MLflow.
TABLE_ROWS: tuple[tuple[str, str, str], ...] = (
    ("laps_completed", "laps completed", "{:d}"),
    ("progress_laps", "progress (laps)", "{:.3f}"),
    ("distance_m", "distance (m)", "{:.1f}"),
    ("sim_time_s", "simulated time (s)", "{:.1f}"),
    ("interventions", "interventions", "{:d}"),
    ("autonomy", "autonomy (%)", "{:.1f}"),
    ("mean_abs_cte", "mean |cte| (m)", "{:.3f}"),
    ("p95_abs_cte", "p95 |cte| (m)", "{:.3f}"),
    ("max_abs_cte", "max |cte| (m)", "{:.3f}"),
    ("mean_speed_mph", "mean speed (mph)", "{:.2f}"),
    ("mean_abs_steering_change", "mean |steering change| / step", "{:.4f}"),
    ("steps", "physics steps", "{:d}"),
    ("frames", "telemetry frames", "{:d}"),
    ("manual_replies", "manual replies", "{:d}"),
    ("round_trip_ms_p50", "round trip p50 (ms)", "{:.2f}"),
    ("round_trip_ms_p99", "round trip p99 (ms)", "{:.2f}"),
    ("frames_per_s", "frames / s (wall)", "{:.1f}"),
)


def autonomy_pct(interventions: int, elapsed_s: float) -> float:
    """NVIDIA's autonomy: (1 - interventions * 6 s / elapsed s) * 100, clipped at 0."""
    if elapsed_s <= 0:
        return 100.0 if interventions == 0 else 0.0
    return max(0.0, (1.0 - interventions * INTERVENTION_COST_S / elapsed_s) * 100.0)


def compute_metrics(result: Any) -> dict[str, Any]:
    """All metrics of a DriveResult as plain Python numbers (JSON- and MLflow-ready)."""
    steps = int(len(result.t))
    if steps == 0:
        raise ValueError("compute_metrics: the drive recorded no steps (max_steps=0?)")
    abs_cte = np.abs(np.asarray(result.cte, dtype=np.float64))
    elapsed = float(result.t[-1])
    interventions = int(len(result.intervention_steps))
    progress = float(result.s[-1]) / float(result.track.length)
    round_trip_ms = np.asarray(result.round_trip_s, dtype=np.float64) * 1000.0
    steering = np.asarray(result.steering, dtype=np.float64)
    return {
        "track": str(result.track.name),
        "laps_completed": int(math.floor(max(0.0, progress) + 1e-9)),
        "progress_laps": progress,
        "distance_m": float(result.odometer[-1]),
        "sim_time_s": elapsed,
        "interventions": interventions,
        "autonomy": autonomy_pct(interventions, elapsed),
        "mean_abs_cte": float(abs_cte.mean()),
        "p95_abs_cte": float(np.percentile(abs_cte, CTE_PERCENTILE)),
        "max_abs_cte": float(abs_cte.max()),
        "mean_speed_mph": float(np.mean(result.speed_mph)),
        "mean_abs_steering_change": float(np.abs(np.diff(steering)).mean()) if steps > 1 else 0.0,
        "steps": steps,
        "frames": int(result.frames),
        "manual_replies": int(result.manual_replies),
        "round_trip_ms_p50": float(np.percentile(round_trip_ms, 50)) if len(round_trip_ms) else 0.0,
        "round_trip_ms_p99": float(np.percentile(round_trip_ms, 99)) if len(round_trip_ms) else 0.0,
        "frames_per_s": float(result.frames / result.wall_s) if result.wall_s > 0 else 0.0,
        "realtime": bool(result.realtime),
        "stop_reason": str(result.stop_reason),
    }


def format_table(metrics: Mapping[str, Any], title: str = "autonomous drive") -> str:
    """A two-column plain-text table of the metrics, for the terminal."""
    lines = [(label, fmt.format(metrics[key])) for key, label, fmt in TABLE_ROWS if key in metrics]
    extra = [(k, str(v)) for k, v in metrics.items() if k in ("track", "stop_reason", "realtime")]
    lines = extra + lines
    width_l = max(len(label) for label, _ in lines)
    width_v = max(len(value) for _, value in lines)
    rule = "-" * (width_l + width_v + 3)
    body = [f"{label:<{width_l}} | {value:>{width_v}}" for label, value in lines]
    return "\n".join([title, rule, *body, rule])


def write_json(metrics: Mapping[str, Any], path: str | Path) -> Path:
    """Write the metrics as pretty JSON (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(metrics), indent=2, sort_keys=False) + "\n")
    return path


def metric_label(track_name: str) -> str:
    """A track name usable inside an MLflow metric key (a path becomes its stem)."""
    name = str(track_name)
    if name.endswith((".yaml", ".yml")):
        name = Path(name).stem
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "track"


def log_to_mlflow(run_id: str, track_name: str, metrics: Mapping[str, Any],
                  artifacts: Iterable[str | Path] = (),
                  tracking_uri: str | None = None) -> list[str]:
    """Log the numeric metrics as ``eval/<track>/<key>`` and the files under ``eval/<track>/``
    in an existing run (finished training runs included); returns the metric keys logged."""
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    from bc.tracking import TrackingError, client

    mlflow_client = client(tracking_uri)
    try:
        mlflow_client.get_run(run_id)
    except MlflowException as error:
        raise TrackingError(
            f"cannot log evaluation metrics: MLflow run {run_id!r} not found ({error})") from None
    prefix = f"{METRIC_PREFIX}/{metric_label(track_name)}"
    now = int(time.time() * 1000)
    entries = [
        Metric(f"{prefix}/{key}", float(value), now, 0)
        for key, value in metrics.items()
        if isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
        and math.isfinite(value)
    ]
    mlflow_client.log_batch(run_id, metrics=entries)
    for artifact in artifacts:
        artifact = Path(artifact)
        if not artifact.is_file():
            raise FileNotFoundError(f"cannot log artifact {artifact}: no such file")
        mlflow_client.log_artifact(run_id, str(artifact), artifact_path=prefix)
    return [entry.key for entry in entries]
