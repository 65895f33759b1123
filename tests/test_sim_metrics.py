"""Metrics, pictures and MLflow logging of autonomous runs, on hand-built DriveResults, and
the expert's reference drive (lap time and pace)."""

from __future__ import annotations

import json
import math

import imageio.v2 as imageio
import numpy as np
import pytest

from bc.evaluation.expert import expert_drive
from bc.evaluation.metrics import (DriveResult, autonomy_pct, compute_metrics, format_table,
                                   lap_time_s, log_to_mlflow, write_json, write_trajectory_csv)
from bc.sim.plots import plot_trajectory
from bc.sim.track import load_track

DT = 0.1


@pytest.fixture(scope="module")
def track():
    return load_track("lake")


def hand_built(track, cte, steering=None, interventions=(), speed_mph=10.0,
               frames=None) -> DriveResult:
    """A straight-ish drive along the centreline with the given cross-track errors."""
    n = len(cte)
    s = np.arange(1, n + 1) * 2.0
    poses = np.array([track.pose_at(v) for v in s])
    normal = np.column_stack([-np.sin(poses[:, 2]), np.cos(poses[:, 2])])
    xy = poses[:, :2] + normal * np.asarray(cte)[:, None]
    steps = np.asarray(interventions, dtype=np.int64)
    return DriveResult(
        track=track, dt=DT, laps=1.0, t=np.arange(1, n + 1) * DT, x=xy[:, 0], y=xy[:, 1],
        yaw=poses[:, 2], speed_mph=np.full(n, speed_mph),
        steering=np.zeros(n) if steering is None else np.asarray(steering),
        throttle=np.full(n, 0.3), cte=np.asarray(cte, dtype=float), s=s, odometer=s.copy(),
        intervention_steps=steps, intervention_xy=xy[steps].reshape(-1, 2), frames=frames or n,
        round_trip_s=np.full(frames or n, 0.004), wall_s=1.0,
    )


def test_autonomy_formula():
    assert autonomy_pct(0, 100.0) == 100.0
    assert autonomy_pct(2, 120.0) == pytest.approx(90.0)  # 1 - 12/120
    assert autonomy_pct(10, 30.0) == 0.0  # clipped, never negative
    assert autonomy_pct(0, 0.0) == 100.0


def test_metrics_on_hand_built_result(track):
    cte = np.concatenate([np.linspace(0.0, 1.0, 100), np.full(100, -2.0)])
    steering = np.tile([0.1, -0.1], 100)
    result = hand_built(track, cte, steering=steering, interventions=(50, 150))
    m = compute_metrics(result)
    assert m["steps"] == 200 and m["interventions"] == 2
    assert m["sim_time_s"] == pytest.approx(20.0)
    assert m["autonomy"] == pytest.approx((1 - 2 * 6.0 / 20.0) * 100)
    abs_cte = np.abs(cte)
    assert m["mean_abs_cte"] == pytest.approx(abs_cte.mean())
    assert m["p95_abs_cte"] == pytest.approx(np.percentile(abs_cte, 95))
    assert m["max_abs_cte"] == pytest.approx(2.0)
    assert m["mean_abs_steering_change"] == pytest.approx(0.2)
    assert m["mean_speed_mph"] == pytest.approx(10.0)
    assert m["distance_m"] == pytest.approx(400.0)
    assert m["laps_completed"] == 0
    assert m["progress_laps"] == pytest.approx(400.0 / track.length)
    assert m["round_trip_ms_p50"] == pytest.approx(4.0)
    assert m["frames_per_s"] == pytest.approx(200.0)


def test_laps_completed_counts_whole_laps(track):
    result = hand_built(track, np.zeros(10))
    result.s = np.linspace(0, 2.5 * track.length, 10)
    assert compute_metrics(result)["laps_completed"] == 2
    result.s = np.linspace(0, -0.5 * track.length, 10)  # backwards: no laps, negative progress
    m = compute_metrics(result)
    assert m["laps_completed"] == 0 and m["progress_laps"] < 0


def test_lap_time_and_pace_vs_the_expert(track):
    result = hand_built(track, np.zeros(100))  # 10 s
    result.s = np.linspace(0.0, 2.2 * track.length, 100)
    first_two = int(np.argmax(result.s >= 2 * track.length))
    assert lap_time_s(result) == pytest.approx(result.t[first_two] / 2)
    m = compute_metrics(result, expert_lap_time=0.8 * lap_time_s(result))
    assert m["lap_time_s"] == pytest.approx(lap_time_s(result))
    assert m["pace_pct"] == pytest.approx(80.0)  # 100 % = the expert's pace
    assert "pace vs expert (%)" in format_table(m) and "80.0" in format_table(m)
    result.s = np.linspace(0.0, 0.9 * track.length, 100)  # no whole lap: no lap time, no pace
    m = compute_metrics(result, expert_lap_time=40.0)
    assert m["lap_time_s"] is None and m["pace_pct"] is None
    assert "lap time (s)" in format_table(m)


@pytest.mark.parametrize("car", ["kinematic", "dynamic"])
def test_expert_reference_drive_laps_on_the_road(track, car):
    result = expert_drive("lake", 1.0, car=car)
    m = compute_metrics(result)
    assert result.stop_reason == "laps" and m["laps_completed"] == 1
    assert m["interventions"] == 0 and m["max_abs_cte"] < track.width / 2
    assert m["lap_time_s"] == pytest.approx(m["sim_time_s"])  # one lap: the whole drive
    slower = expert_drive("lake", 1.0, car=car, speed_mph=10.0)
    assert lap_time_s(slower) > 1.2 * lap_time_s(result)  # its own pace is faster than 10 mph


def test_empty_result_is_a_clear_error(track):
    result = hand_built(track, np.zeros(3))
    for name in ("t", "x", "y", "cte", "s", "steering", "speed_mph", "odometer"):
        setattr(result, name, np.zeros(0))
    with pytest.raises(ValueError, match="no steps"):
        compute_metrics(result)


def test_table_and_json(track, tmp_path):
    m = compute_metrics(hand_built(track, np.full(30, 0.5), interventions=(10,)))
    table = format_table(m, title="lake eval")
    assert table.splitlines()[0] == "lake eval"
    for label in ("autonomy (%)", "interventions", "mean |cte| (m)", "p95 |cte| (m)",
                  "laps completed"):
        assert label in table
    back = json.loads(write_json(m, tmp_path / "sub" / "metrics.json").read_text())
    assert back == m


def test_trajectory_png_and_csv(track, tmp_path):
    cte = 3.0 * np.sin(np.linspace(0, 6, 150))
    result = hand_built(track, cte, interventions=(40, 90))
    png = plot_trajectory(result, tmp_path / "trajectory.png")
    image = imageio.imread(png)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500
    # the red intervention markers are drawn
    red = (image[:, :, 0] > 200) & (image[:, :, 1] < 60) & (image[:, :, 2] < 60)
    assert red.sum() > 20
    csv = write_trajectory_csv(result, tmp_path / "trajectory.csv")
    table = np.genfromtxt(csv, delimiter=",", names=True)
    assert len(table) == 150 and table["intervention"].sum() == 2
    assert np.allclose(table["cte"], cte, atol=1e-4)


def test_log_to_mlflow(track, tmp_path, monkeypatch):
    from mlflow.entities import LoggedModelOutput

    from bc.tracking import TrackingError, client, get_or_create_experiment

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    experiment = get_or_create_experiment("bc-test", uri)
    mlflow_client = client(uri)
    run = mlflow_client.create_run(experiment)
    model = mlflow_client.create_logged_model(experiment, source_run_id=run.info.run_id)
    mlflow_client.set_terminated(run.info.run_id)  # a finished training run
    m = compute_metrics(hand_built(track, np.full(40, 0.25), interventions=(5,)))
    png = plot_trajectory(hand_built(track, np.full(40, 0.25)), tmp_path / "trajectory.png")
    js = write_json(m, tmp_path / "metrics.json")
    mlflow_client.log_outputs(run.info.run_id, [LoggedModelOutput(model.model_id, 0)])
    keys = log_to_mlflow(run.info.run_id, "lake", m, [png, js], tracking_uri=uri, track=track)
    assert "eval/lake/autonomy" in keys and "eval/lake/mean_abs_cte" in keys
    assert "system/eval/lake/frames" in keys and "system/eval/lake/round_trip_ms_p50" in keys  # their own charts
    # The run's logged model carries the metrics too, with the track as their dataset.
    linked = {metric.key: metric for metric in mlflow_client.get_logged_model(model.model_id).metrics}
    assert linked["eval/lake/autonomy"].value == pytest.approx(m["autonomy"])
    assert linked["eval/lake/autonomy"].dataset_name == "lake track"
    (evaluation,) = mlflow_client.get_run(run.info.run_id).inputs.dataset_inputs
    assert evaluation.dataset.digest == linked["eval/lake/autonomy"].dataset_digest
    assert {tag.key: tag.value for tag in evaluation.tags}["mlflow.data.context"] == "evaluation"
    logged = mlflow_client.get_run(run.info.run_id).data.metrics
    assert logged["eval/lake/autonomy"] == pytest.approx(m["autonomy"])
    assert logged["eval/lake/interventions"] == 1
    assert logged["eval/lake/mean_abs_cte"] == pytest.approx(0.25, abs=1e-6)
    assert "eval/lake/realtime" not in logged and "eval/lake/track" not in logged
    names = {a.path for a in mlflow_client.list_artifacts(run.info.run_id, "eval/lake")}
    assert names == {"eval/lake/trajectory.png", "eval/lake/metrics.json"}
    with pytest.raises(TrackingError, match="not found"):
        log_to_mlflow("0" * 32, "lake", m, tracking_uri=uri)
    assert not math.isnan(m["autonomy"])
