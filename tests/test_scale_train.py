"""Scaling training out on existing engines: Lightning DDP in real CPU processes (gloo), Hydra's
submitit launcher running a sweep's jobs as real processes, the launcher and Trainer presets,
channels-last weights, and the objective train.py returns to a sweeper."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient
from scale import (ROWS, RUN_ARTIFACTS, TIMEOUT_S, all_runs, artifact_paths, assert_serves, run_train,
                   script_env, tiny_training, train_command)

from bc.inference import store
from bc.data.synthetic import write_recording
from bc.errors import ConfigError
from bc.training.mlflow_run import load_net_weights
from bc.training.train import objective, train
from conftest import compose_config


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_recording(tmp_path_factory.mktemp("data") / "rec", rows=ROWS, seed=3)


@pytest.mark.slow  # two training processes (~30 s): DDP is a scale-out option
def test_ddp_on_two_cpu_processes_is_one_run_whose_model_serves(tmp_path: Path, recording: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    run_train(tmp_path, "trainer=ddp_cpu", f"tracking_uri={uri}", f"hydra.run.dir={tmp_path / 'run'}",
              *tiny_training(recording, tmp_path / "cache"))
    # Two processes trained: Lightning started rank 1 with the same command (its own job log).
    rank_1_log = (tmp_path / "run" / "train_ddp_process_1.log").read_text()
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in rank_1_log
    assert "All distributed processes registered. Starting with 2 processes" in (
        tmp_path / "run" / "train.log").read_text()

    client = MlflowClient(uri)
    (run,) = all_runs(client)  # rank 0 alone records the run
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.strategy"] == "ddp" and run.data.params["trainer.devices"] == "2"
    assert {"train/loss", "val/loss", "val/loss_best"} <= set(run.data.metrics)
    artifacts = artifact_paths(client, run.info.run_id)
    (best,) = [path for path in artifacts if path.startswith("checkpoints/epoch")]
    assert artifacts == RUN_ARTIFACTS | {best}  # what a single-process run logs, no more, no less

    # The logged model is the best checkpoint's network, and drive.py serves it.
    loaded = store.load_model(run.info.run_id, uri)
    from_checkpoint = copy.deepcopy(loaded.net)
    load_net_weights(from_checkpoint, next((tmp_path / "run" / "checkpoints").glob("epoch*.ckpt")))
    batch = torch.rand(2, *loaded.spec.input_shape, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        assert torch.allclose(loaded.net(batch), from_checkpoint(batch), atol=1e-6)
    assert_serves(run.info.run_id, uri, tmp_path / "serve")


@pytest.mark.slow
def test_a_sweep_of_ddp_trainings_uses_ddp_spawn(tmp_path: Path, recording: Path) -> None:
    """Lightning's ddp re-runs the command for its other processes, which would re-run the whole
    sweep: refused before any run, naming the way out; ddp_spawn sweeps work."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    sweep = ["-m", "trainer=ddp_cpu", "optimizer.lr=1e-3,3e-4", f"tracking_uri={uri}",
             f"hydra.sweep.dir={tmp_path / 'sweep'}", *tiny_training(recording, tmp_path / "cache")]
    refused = subprocess.run(train_command(*sweep), cwd=tmp_path, env=script_env(), capture_output=True,
                             text=True, timeout=TIMEOUT_S)
    assert refused.returncode != 0
    assert ("trainer.strategy: DDPStrategy starts its other processes by running the command again, "
            "which a sweep (-m) cannot") in refused.stderr
    assert all_runs(MlflowClient(uri)) == []
    run_train(tmp_path, *sweep, "trainer.strategy=ddp_spawn")
    client = MlflowClient(uri)
    runs = all_runs(client)
    assert len(runs) == 2 and {run.info.status for run in runs} == {"FINISHED"}
    for run in runs:
        assert {"model/weights.pt", "model/model.yaml"} <= artifact_paths(client, run.info.run_id, "model")


@pytest.mark.slow  # a job per process (~45 s): the launchers compose in test_scale_train.py below
def test_submitit_local_sweep_runs_each_job_in_its_own_process(tmp_path: Path, recording: Path) -> None:
    """`-m hydra/launcher=submitit_local`: two jobs through submitit's real local executor, each
    one MLflow run tagged with the sweep, in a fresh store both jobs open at the same moment."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    run_train(tmp_path, "-m", "hydra/launcher=submitit_local", "optimizer.lr=1e-3,3e-4",
              "experiment_name=parallel", f"tracking_uri={uri}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
              *tiny_training(recording, tmp_path / "cache"))
    client = MlflowClient(uri)
    runs = all_runs(client)
    assert len(runs) == 2 and {run.info.status for run in runs} == {"FINISHED"}
    assert {run.data.params["optimizer.lr"] for run in runs} == {"0.001", "0.0003"}
    assert {run.data.tags["sweep"] for run in runs} == {str(tmp_path / "sweep")}
    assert {run.data.tags["job"] for run in runs} == {"0", "1"}
    # Each job ran in a submitit worker process of its own, not in the sweep's process.
    assert len({run.data.tags["pid"] for run in runs}) == 2
    assert len(list((tmp_path / "sweep" / ".submitit").glob("*/*_result.pkl"))) == 2
    for run in runs:
        assert "model/weights.pt" in artifact_paths(client, run.info.run_id, "model")


@pytest.mark.parametrize(("launcher", "target", "settings"), [
    ("parallel", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", {"n_jobs": 2}),
    ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
     {"tasks_per_node": 1, "gpus_per_node": 1, "timeout_min": 240}),
])
def test_launcher_presets_compose(tmp_path: Path, launcher: str, target: str, settings: dict) -> None:
    shown = subprocess.run(train_command(f"hydra/launcher={launcher}", "--cfg", "hydra", "--package",
                                         "hydra.launcher"), cwd=tmp_path, env=script_env(),
                           capture_output=True, text=True, timeout=TIMEOUT_S)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "deprecated" not in shown.stderr  # no name clash with the plugin's own configs
    launcher_cfg = yaml.safe_load(shown.stdout)
    assert launcher_cfg["_target_"] == target
    assert {key: launcher_cfg[key] for key in settings} == settings


def test_optuna_preset_composes(tmp_path: Path) -> None:
    """hparams_search=optuna: Hydra's Optuna sweeper, the study in SQLite beside the MLflow store,
    a multirun without -m, and train.py returning val/loss_best (the sweeps: test_scale_servers)."""
    shown = subprocess.run(train_command("hparams_search=optuna", "--cfg", "all"), cwd=tmp_path,
                           env=script_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "deprecated" not in shown.stderr
    cfg = yaml.safe_load(shown.stdout)
    sweeper = cfg["hydra"]["sweeper"]
    assert sweeper["_target_"] == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper["sampler"]["_target_"] == "optuna.samplers.TPESampler"
    assert sweeper["storage"] == "sqlite:///mlruns/optuna.db" and sweeper["direction"] == "minimize"
    assert {"optimizer.lr", "data.batch_size"} <= set(sweeper["params"])
    assert cfg["hydra"]["mode"] == "MULTIRUN" and cfg["optimized_metric"] == "val/loss_best"


def test_channels_last_weights_train_and_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              recording: Path) -> None:
    """trainer.channels_last=true: the network trains with NHWC weights (its checkpoint keeps the
    layout) and the logged model loads as usual."""
    monkeypatch.chdir(tmp_path)
    cfg = compose_config("train", [f"output_dir={tmp_path / 'out'}", "trainer.channels_last=true",
                                   "optimized_metric=val/loss_best",
                                   *tiny_training(recording, tmp_path / "cache")])
    run_id = train(cfg)
    state = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    kernels = [value for value in state.values() if value.dim() == 4]
    assert kernels and all(kernel.is_contiguous(memory_format=torch.channels_last)
                           and not kernel.is_contiguous() for kernel in kernels)
    loaded = store.load_model(run_id)
    with torch.no_grad():
        assert loaded.net(torch.full((1, *loaded.spec.input_shape), 90.0)).isfinite().all()
    # The objective a sweeper gets is the run's metric.
    metrics = MlflowClient(cfg.tracking_uri).get_run(run_id).data.metrics
    assert objective(cfg, run_id) == metrics["val/loss_best"]
    cfg.optimized_metric = "eval/lake/autonomy"
    with pytest.raises(ConfigError, match=r"^optimized_metric: MLflow run \w+ has no metric 'eval/lake/autonomy'"):
        objective(cfg, run_id)


def test_channels_last_must_be_a_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recording: Path) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = compose_config("train", [f"output_dir={tmp_path / 'out'}", "trainer.channels_last=yes please",
                                   *tiny_training(recording, tmp_path / "cache")])
    with pytest.raises(ConfigError, match=r"^trainer\.channels_last: expected true or false"):
        train(cfg)
