"""The whole mission on a small scale, through the real command-line tools:
record with the built-in simulator -> train one epoch -> serve with drive.py ->
drive ~200 steps over Socket.IO -> metrics file and MLflow run."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from bc import tracking
from bc.core.udacity import SAMPLE_PERIOD_S

INTERVENTION_COST_S = 6.0  # NVIDIA's autonomy: 6 s of human driving per intervention


def cli(script: str, *overrides: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / script), *overrides],
                          cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def test_record_train_drive_evaluate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data" / "lake"
    cli("simulate.py", "mode=record", "track=lake", "max_rows=150", f"out={data}", "progress=false",
        cwd=tmp_path)
    rows = (data / "driving_log.csv").read_text().splitlines()
    assert len(rows) == 150

    cli("train.py", "model=small", f"data.paths=[{data}]", "trainer.max_epochs=1",
        "experiment_name=e2e", "data.block_rows=15", f"data.cache_dir={tmp_path / 'cache'}",
        "data.num_workers=0",
        cwd=tmp_path)

    out = tmp_path / "eval"
    printed = cli("evaluate.py", "run_id=latest", "experiment_name=e2e", "track=lake", "laps=1",
                  "max_steps=200", "video=false", "progress=false", f"out={out}", cwd=tmp_path)
    assert "autonomy" in printed

    metrics = json.loads((out / "lake" / "metrics.json").read_text())
    assert metrics["steps"] == 200
    assert metrics["distance_m"] > 0
    assert metrics["sim_time_s"] == pytest.approx(200 * SAMPLE_PERIOD_S)
    trajectory = np.genfromtxt(out / "lake" / "trajectory.csv", delimiter=",", names=True)
    flags = trajectory["intervention"]
    assert metrics["interventions"] == int(flags.sum())
    expected = 100 * (1 - INTERVENTION_COST_S * metrics["interventions"] / metrics["sim_time_s"])
    assert metrics["autonomy"] == pytest.approx(max(0.0, expected))
    assert (out / "lake" / "trajectory.png").stat().st_size > 0

    client = tracking.client()
    experiment = client.get_experiment_by_name("e2e")
    (run,) = client.search_runs([experiment.experiment_id])
    assert {"train/loss", "val/loss", "eval/lake/autonomy"} <= set(run.data.metrics)
    assert run.data.metrics["eval/lake/autonomy"] == metrics["autonomy"]
    logged = {item.path for item in client.list_artifacts(run.info.run_id, "eval/lake")}
    assert "eval/lake/metrics.json" in logged and "eval/lake/trajectory.png" in logged
