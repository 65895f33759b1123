"""Helpers of the scaling tests (tests/test_scale_*.py): training as the user runs it, the
artifacts of a run, and a check that drive.py serves a run's model over Socket.IO."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO
from mlflow import MlflowClient
from unity_client import UnityClient, make_jpeg, telemetry

from bc.drive.launch import drive_server

TRAIN = REPO / "scripts" / "train.py"
TIMEOUT_S = 300
ROWS, BLOCK_ROWS = 60, 10  # 6 contiguous validation blocks: a 20% split exists
# The artifacts every training run logs (tests/test_train.py checks them for one process).
RUN_ARTIFACTS = {"config.yaml", "hydra/config.yaml", "hydra/hydra.yaml", "hydra/overrides.yaml",
                 "logs/train.log", "model/model.ts", "model/model.yaml", "model/weights.pt",
                 "checkpoints/last.ckpt"}


def tiny_training(recording: Path, cache: Path) -> list[str]:
    """train.py overrides for a training of seconds: small net, few batches, one epoch."""
    return ["model=small", f"data.paths=[{recording}]", f"data.block_rows={BLOCK_ROWS}",
            "data.num_workers=0", f"data.cache_dir={cache}", "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1",
            "callbacks.progress_bar.refresh_rate=0"]


def script_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    return {**env, "NO_ALBUMENTATIONS_UPDATE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
            "HYDRA_FULL_ERROR": "1", **extra}


def train_command(*overrides: str) -> list[str]:
    return [sys.executable, str(TRAIN), *overrides]


def run_train(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    result = subprocess.run(train_command(*overrides), cwd=cwd, env=script_env(),
                            capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    paths: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        paths |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return paths


def all_runs(client: MlflowClient) -> list:
    return client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])


def assert_serves(run_id: str, uri: str, workdir: Path) -> None:
    """`drive.py run_id=<run_id> tracking_uri=<uri>` loads that run's model and answers a
    simulator's telemetry with a steer command."""
    workdir.mkdir(parents=True, exist_ok=True)
    with drive_server([f"run_id={run_id}", f"tracking_uri={uri}"], workdir) as server:
        assert server["source"] == f"runs:/{run_id}/model"
        with UnityClient(server["port"]) as client:
            event, data = client.send_telemetry(telemetry(make_jpeg(seed=1), speed=5.0))
    assert event == "steer", (event, data)
    assert math.isfinite(float(data["steering_angle"])) and math.isfinite(float(data["throttle"]))
