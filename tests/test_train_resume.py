"""A SIGKILLed training run is marked KILLED by the next start and `resume=<run id>` finishes
it in the same MLflow run; `resume=<checkpoint>` starts a new run from a checkpoint."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from bc import tracking
from bc.inference import store
from bc.data.synthetic import write_recording
from bc.errors import ConfigError
from bc.training.train import train
from conftest import REPO, compose_config

SCRIPT = REPO / "scripts" / "train.py"
EPOCHS = 3
BATCH = 8
TIMEOUT_S = 300


def script(cwd: Path, *args: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "model=small", f"data.batch_size={BATCH}", "data.block_rows=10",
            "data.num_workers=0", f"data.cache_dir={cwd / 'cache'}", *args]


def script_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    return {**env, "NO_ALBUMENTATIONS_UPDATE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "HYDRA_FULL_ERROR": "0"}


def kill_after_first_checkpoint(cwd: Path, recording: Path) -> str:
    """Start a training of EPOCHS epochs, SIGKILL it once its first last.ckpt is in the run."""
    process = subprocess.Popen(script(cwd, f"data.paths=[{recording}]", f"trainer.max_epochs={EPOCHS}"),
                               cwd=cwd, env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not list((cwd / "mlruns").glob("bc/*/artifacts/checkpoints/last.ckpt")):
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint was logged"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    (checkpoint,) = (cwd / "mlruns").glob("bc/*/artifacts/checkpoints/last.ckpt")
    return checkpoint.parents[2].name


def epochs_logged(client: MlflowClient, run_id: str) -> list[int]:
    """The epochs with a val/loss in the run (Lightning logs `epoch` beside every metric)."""
    val_steps = {metric.step for metric in client.get_metric_history(run_id, "val/loss")}
    return sorted({int(metric.value) for metric in client.get_metric_history(run_id, "epoch")
                   if metric.step in val_steps})


def test_killed_run_is_marked_by_the_next_start_and_resumed_in_the_same_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    recording = write_recording(tmp_path / "rec", rows=60, seed=3)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)

    killed = kill_after_first_checkpoint(tmp_path, recording)
    run = client.get_run(killed)
    assert run.info.status == "RUNNING"  # nobody was left to close it
    assert epochs_logged(client, killed) == [0]
    local_checkpoint = Path(run.data.tags["last_checkpoint"])
    assert local_checkpoint.is_file()

    # The next start (here: a new run from the killed run's checkpoint) marks the dead run KILLED.
    cfg = compose_config("train", [f"tracking_uri={uri}", f"output_dir={tmp_path / 'from-path'}",
                                   "model=small", f"data.paths=[{recording}]", "data.block_rows=10",
                                   f"data.batch_size={BATCH}", "data.num_workers=0",
                                   f"data.cache_dir={tmp_path / 'cache'}", "trainer.max_epochs=2",
                                   f"resume={local_checkpoint}"])
    from_path = train(cfg)
    assert from_path != killed
    assert client.get_run(killed).info.status == "KILLED"
    assert client.get_run(from_path).info.status == "FINISHED"
    assert epochs_logged(client, from_path) == [1]  # epoch 0 came with the checkpoint

    # resume=<run id>: the same run, RUNNING again under a new process, finished with every epoch.
    result = subprocess.run([sys.executable, str(SCRIPT), f"resume={killed}"], cwd=tmp_path, env=script_env(),
                            capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    run = client.get_run(killed)
    assert run.info.status == "FINISHED"
    assert epochs_logged(client, killed) == list(range(EPOCHS))
    steps_per_epoch = math.ceil(int(run.data.params["data_stats.train_samples"]) / BATCH)
    val_steps = [metric.step for metric in client.get_metric_history(killed, "val/loss")]
    assert sorted(val_steps) == [steps_per_epoch * (epoch + 1) - 1 for epoch in range(EPOCHS)]
    assert run.data.tags["pid"] != str(os.getpid()) and "model/weights.pt" in {
        item.path for item in client.list_artifacts(killed, "model")}
    loaded = store.load_model(killed, uri)
    assert loaded.spec.frame_size == (320, 160)
    assert [run.info.run_id for run in client.search_runs([run.info.experiment_id])
            if run.info.status != "FINISHED"] == []


def test_resume_refuses_what_it_cannot_continue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = tracking.get_or_create_experiment("bc", uri)
    finished = client.create_run(experiment).info.run_id
    client.set_terminated(finished)
    alive = client.create_run(experiment, tags={"pid": str(os.getpid()), "host": os.uname().nodename}).info.run_id
    for resume, message in [(finished, "is FINISHED"), (alive, "is RUNNING"), ("0123456789abcdef" * 2, "no MLflow run"),
                            (str(tmp_path / "missing.ckpt"), "no such file")]:
        cfg = compose_config("train", [f"tracking_uri={uri}", f"output_dir={tmp_path / 'out'}", f"resume={resume}"])
        with pytest.raises(ConfigError, match=f"^resume: .*{message}"):
            train(cfg)
    assert len(client.search_runs([experiment])) == 2  # nothing new started
    assert client.get_run(alive).info.status == "RUNNING"  # its process (this one) is alive


@pytest.mark.slow  # ~10 s of train.py start-up; resuming by run id stays in the default suite (above)
def test_resume_with_other_overrides_is_refused(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), f"resume={'a' * 32}", "optimizer.lr=0.1"],
                            cwd=tmp_path, env=script_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "train.py: error: resume: a run id continues that run with its logged config; drop optimizer.lr=0.1 "
        "(or resume from its checkpoint path for a new run)")
