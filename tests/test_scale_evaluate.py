"""Parallel closed-loop evaluation: `evaluate.py ... jobs=2` drives two tracks at once, each in
its own process against its own drive.py, prints one table with both tracks and logs every
metric to the one MLflow run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from scale import TIMEOUT_S, script_env

from bc import tracking
from bc.inference import store
from bc.errors import ConfigError
from bc.evaluation.evaluate import evaluate, tracks_table
from bc.models import build_model
from conftest import REPO, compose_config

STEPS = 30


@pytest.fixture
def model_run(tmp_path: Path) -> tuple[str, str]:
    """(run id, tracking URI) of a run holding a logged (untrained) small network."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    model = compose_config("train", ["model=small"]).model
    client = tracking.client(uri)
    run_id = client.create_run(tracking.get_or_create_experiment("bc", uri)).info.run_id
    store.log_model(run_id, build_model(model), model, uri)
    client.set_terminated(run_id)
    return run_id, uri


@pytest.mark.slow
def test_two_tracks_in_parallel_processes_one_table_one_run(tmp_path: Path, model_run: tuple[str, str]) -> None:
    run_id, uri = model_run
    out = tmp_path / "eval"
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "evaluate.py"), f"run_id={run_id}", f"tracking_uri={uri}",
         "track=[lake,mountain]", "jobs=2", "laps=1", f"max_steps={STEPS}", "video=false", "progress=false",
         f"out={out}"], cwd=tmp_path, env=script_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # One table with a column per track, after both drives.
    lines = done.stdout.splitlines()
    header = next(index for index, line in enumerate(lines)
                  if line.split() == ["metric", "|", "lake", "|", "mountain"])
    steps_row = next(line for line in lines[header:] if line.startswith("physics steps"))
    assert [cell.strip() for cell in steps_row.split("|")[1:]] == [str(STEPS)] * 2
    # Two drive servers, one per process, each serving the run's model.
    logs = sorted(out.glob("drive_server-*.log"))
    assert [log.name for log in logs] == ["drive_server-0.log", "drive_server-1.log"]
    for log in logs:
        assert f"serving runs:/{run_id}/model" in log.read_text()
    # Every metric of both tracks in the one run, equal to the tracks' metrics files.
    metrics = MlflowClient(uri).get_run(run_id).data.metrics
    for track in ("lake", "mountain"):
        written = json.loads((out / track / "metrics.json").read_text())
        assert written["steps"] == STEPS
        assert metrics[f"system/eval/{track}/steps"] == STEPS
        assert metrics[f"eval/{track}/mean_abs_cte"] == pytest.approx(written["mean_abs_cte"])


def test_jobs_must_be_a_positive_number(tmp_path: Path) -> None:
    from bc.evaluation.autonomous import AutonomousDrive

    with pytest.raises(ConfigError, match=r"^jobs: expected >= 1, got 0$"):
        evaluate("0" * 32, ["lake"], AutonomousDrive(), out=tmp_path, jobs=0)
    assert not list(tmp_path.iterdir())  # refused before any server or folder


def test_tracks_table_puts_tracks_side_by_side() -> None:
    table = tracks_table({"lake": {"stop_reason": "laps", "autonomy": 97.31, "lap_time_s": None, "steps": 10},
                          "mountain": {"stop_reason": "max_steps", "autonomy": 80.0, "steps": 12,
                                       "interventions": 3}})
    assert table.splitlines() == [
        "metric        | lake |  mountain",
        "--------------------------------",
        "stop reason   | laps | max_steps",
        "lap time (s)  |    - |         -",
        "interventions |    - |         3",
        "autonomy (%)  | 97.3 |      80.0",
        "physics steps |   10 |        12",
    ]
