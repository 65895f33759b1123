"""What one driven episode measures: its per-step record (`DriveResult`) and the metrics: a
table for people, JSON for files, and MLflow metrics (``eval/<track>/<name>``) on the run
whose model drove. The expert's reference drive is `bc.evaluation.expert.expert_drive`.

Autonomy follows NVIDIA's "End to End Learning for Self-Driving Cars": every intervention
costs 6 s of human driving, autonomy = (1 - interventions * 6 s / elapsed s) * 100.
Pace: the lap time (simulated time per whole lap driven, from the standing start) against
the expert's lap time on the same track, direction and car at its own pace, driven through
the same DrivingEnv: pace = expert lap time / lap time * 100 (100 % = the expert's pace).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from bc.sim.car import MPS_PER_MPH
from bc.tracking import TrackingError, client
from bc.tracking.datasets import log_track
from bc.tracking.registry import logged_model_of

INTERVENTION_COST_S = 6.0  # NVIDIA's assumed human time per intervention
CTE_PERCENTILE = 95
METRIC_PREFIX = "eval"
# How the drive was served and measured, not how well the model drove: logged as
# system/eval/<track>/<key>, which the MLflow UI shows on the run's "System metrics" tab, so
# the "Model metrics" tab's eval/ charts compare models (all stay in metrics.json).
DIAGNOSTIC_PREFIX = "system/eval"
DIAGNOSTICS = frozenset({"steps", "frames", "manual_replies", "round_trip_ms_p50",
                         "round_trip_ms_p99", "frames_per_s"})

# (key, label, format) in table order; the keys are the metric names logged to MLflow.
TABLE_ROWS: tuple[tuple[str, str, str], ...] = (
    ("laps_completed", "laps completed", "{:d}"),
    ("progress_laps", "progress (laps)", "{:.3f}"),
    ("distance_m", "distance (m)", "{:.1f}"),
    ("sim_time_s", "simulated time (s)", "{:.1f}"),
    ("lap_time_s", "lap time (s)", "{:.2f}"),
    ("expert_lap_time_s", "expert lap time (s)", "{:.2f}"),
    ("pace_pct", "pace vs expert (%)", "{:.1f}"),
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


@dataclass
class DriveResult:
    """One driven episode; the arrays hold one entry per physics step (the info of each
    DrivingEnv step). The server fields stay empty for drives without one (the expert's)."""

    track: Any
    dt: float
    laps: float  # laps asked for
    t: np.ndarray  # simulated time at the end of each step (s)
    x: np.ndarray
    y: np.ndarray
    yaw: np.ndarray
    speed_mph: np.ndarray
    steering: np.ndarray  # applied, normalised [-1, 1]
    throttle: np.ndarray  # applied [-1, 1]
    cte: np.ndarray  # signed cross-track error before any reset (m, + left)
    s: np.ndarray  # accumulated arc-length progress (m); backwards driving subtracts
    odometer: np.ndarray  # distance driven so far (m); reset jumps do not count
    intervention_steps: np.ndarray  # indices into the per-step arrays
    intervention_xy: np.ndarray  # (K, 2) where the car left the road
    frames: int = 0  # telemetry messages sent (re-sends after `manual` included)
    manual_replies: int = 0
    greetings: int = 0  # `steer` events before the first telemetry (the connect greeting)
    stray_steers: int = 0  # later `steer` events that answered no telemetry (ignored)
    round_trip_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    wall_s: float = 0.0
    realtime: bool = False
    stop_reason: str = "laps"  # laps | max_steps | stalled

    @property
    def steps(self) -> int:
        return int(len(self.t))

    @classmethod
    def from_steps(cls, track: Any, dt: float, infos: Sequence[Mapping[str, Any]], laps: float,
                   **server: Any) -> "DriveResult":
        """The result of the DrivingEnv steps that returned `infos` on `track` (the road as
        driven) every `dt` (`server`: the fields of a drive against a drive server)."""
        length = track.length

        def column(key: str) -> np.ndarray:
            return np.array([info[key] for info in infos], dtype=np.float64)

        left = [i for i, info in enumerate(infos) if info["off_road"]]
        cte = column("cte")
        cte[left] = [infos[i]["off_road_cte"] for i in left]  # where it left, not where put back
        return cls(
            track=track, dt=float(dt), laps=float(laps), t=column("time"),
            x=column("x"), y=column("y"), yaw=column("yaw"),
            speed_mph=column("speed") / MPS_PER_MPH, steering=column("steering"),
            throttle=column("throttle"), cte=cte, s=column("progress") * length,
            odometer=column("distance"), intervention_steps=np.asarray(left, dtype=np.int64),
            intervention_xy=np.array([infos[i]["off_road_xy"] for i in left],
                                     dtype=np.float64).reshape(-1, 2),
            **server)


def whole_laps(result: DriveResult) -> int:
    """Laps completed by the end of the drive (0 for none, or driving backwards)."""
    if not result.steps:
        return 0
    return int(math.floor(max(0.0, float(result.s[-1]) / float(result.track.length)) + 1e-9))


def lap_time_s(result: DriveResult) -> float | None:
    """Simulated seconds per whole lap driven (from the start, standing start included);
    None before the first whole lap."""
    laps = whole_laps(result)
    if laps < 1:
        return None
    done = int(np.argmax(result.s >= laps * float(result.track.length) - 1e-6))
    return float(result.t[done]) / laps


def relative_pace(result: DriveResult, expert: DriveResult) -> float:
    """Pace (%) of any drive, whole laps or not: the expert's time to the progress `result`
    made (from `expert`, its drive of the same road) / `result`'s time x 100."""
    progress = float(result.s[-1])
    if progress <= 0 or not result.steps:
        return 0.0
    expert_time = float(np.interp(min(progress, float(expert.s[-1])), expert.s, expert.t))
    return 100.0 * expert_time / float(result.t[-1])


def compute_metrics(result: DriveResult,
                    expert_lap_time: float | None = None) -> dict[str, Any]:
    """All metrics of a DriveResult as plain Python numbers (JSON- and MLflow-ready);
    `expert_lap_time` (s, from `expert_drive` over the same whole laps) adds the pace."""
    steps = int(len(result.t))
    if steps == 0:
        raise ValueError("compute_metrics: the drive recorded no steps (max_steps=0?)")
    abs_cte = np.abs(np.asarray(result.cte, dtype=np.float64))
    elapsed = float(result.t[-1])
    interventions = int(len(result.intervention_steps))
    progress = float(result.s[-1]) / float(result.track.length)
    round_trip_ms = np.asarray(result.round_trip_s, dtype=np.float64) * 1000.0
    steering = np.asarray(result.steering, dtype=np.float64)
    lap_time = lap_time_s(result)
    pace = (100.0 * expert_lap_time / lap_time
            if lap_time is not None and expert_lap_time is not None else None)
    return {
        "track": str(result.track.name),
        "laps_completed": whole_laps(result),
        "progress_laps": progress,
        "distance_m": float(result.odometer[-1]),
        "sim_time_s": elapsed,
        "lap_time_s": lap_time,
        "expert_lap_time_s": expert_lap_time,
        "pace_pct": pace,
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
    lines = [(label, "-" if metrics[key] is None else fmt.format(metrics[key]))
             for key, label, fmt in TABLE_ROWS if key in metrics]
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
                  tracking_uri: str | None = None, track: Any = None) -> list[str]:
    """Log the numeric metrics as ``eval/<track>/<key>`` (diagnostics as
    ``system/eval/<track>/<key>``)
    and the files under ``eval/<track>/`` in an existing run (finished training runs included);
    returns the metric keys logged. The metrics are linked to the run's logged model too (its
    page and the registry show them), and, with ``track``, to the track as the run's
    ``evaluation`` dataset (`bc.tracking.datasets.track_dataset`)."""
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException


    mlflow_client = client(tracking_uri)
    try:
        mlflow_client.get_run(run_id)
    except MlflowException as error:
        raise TrackingError(
            f"cannot log evaluation metrics: MLflow run {run_id!r} not found ({error})") from None
    label = metric_label(track_name)
    prefix = f"{METRIC_PREFIX}/{label}"
    dataset: dict[str, str] = {}
    if track is not None:

        dataset = log_track(mlflow_client, run_id, track, label)
    model_id = logged_model_of(mlflow_client, run_id)
    now = int(time.time() * 1000)
    entries = [
        Metric(f"{DIAGNOSTIC_PREFIX if key in DIAGNOSTICS else METRIC_PREFIX}/{label}/{key}",
               float(value), now, 0, model_id=model_id, **dataset)
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


def write_trajectory_csv(result: DriveResult, path: str | Path) -> Path:
    """The per-step arrays as CSV, for analysis beyond the summary metrics."""
    path = Path(path)
    columns = ("t", "x", "y", "yaw", "speed_mph", "steering", "throttle", "cte", "s", "odometer")
    table = np.column_stack([getattr(result, name) for name in columns])
    flags = np.zeros((len(table), 1))
    flags[result.intervention_steps] = 1
    np.savetxt(path, np.hstack([table, flags]), delimiter=",", fmt="%.6g",
               header=",".join((*columns, "intervention")), comments="")
    return path
