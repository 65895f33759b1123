"""Helpers of the scaling tests (tests/test_scale_*.py): training as the user runs it, the
artifacts of a run, a real `mlflow server` process, and a check that drive.py serves a run's
model over Socket.IO."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from conftest import REPO
from mlflow import MlflowClient
from unity_client import UnityClient, make_jpeg, telemetry

from bc.drive.launch import drive_server

TRAIN = REPO / "scripts" / "train.py"
TIMEOUT_S = 300
STARTUP_TIMEOUT_S = 120
ROWS, BLOCK_ROWS = 60, 10  # 6 contiguous validation blocks: a 20% split exists
# The artifacts every training run logs (tests/test_train.py checks them for one process).
RUN_ARTIFACTS = {"config.yaml", "datasets/recordings.json", "hydra/config.yaml", "hydra/hydra.yaml", "hydra/overrides.yaml",
                 "logs/train.log", "model/model.ts", "model/model.onnx", "model/model.yaml", "model/weights.pt",
                 "checkpoints/last.ckpt", "plots/steering_histogram.png", "plots/augmentation_preview.png",
                 "plots/predicted_vs_recorded.png", "plots/saliency.png"}


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def mlflow_server(backend_store_uri: str, folder: Path) -> Iterator[str]:
    """`mlflow server` on `backend_store_uri` with proxied artifacts in folder/artifacts (the
    README's command), its log in folder/mlflow-server.log; yields its URI, stops it after."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = folder / "mlflow-server.log"
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", backend_store_uri, "--serve-artifacts",
               "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"]
    with open(log, "wb") as output:
        server = subprocess.Popen(command, cwd=folder, stdout=output, stderr=subprocess.STDOUT,
                                  env=script_env(), start_new_session=True)  # its uvicorn child too
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"mlflow server not up in {STARTUP_TIMEOUT_S} s"
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).close()
                break
            except OSError:
                time.sleep(0.3)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=3)
        except subprocess.TimeoutExpired:  # its CLI process waits on workers a while
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
