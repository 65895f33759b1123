"""Real training runs: `scripts/train.py` on a tiny generated recording, tracked in a real MLflow store."""

from __future__ import annotations

import json

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

from bc.inference import store as model_store
from bc.inference import artifact
from bc.data.synthetic import write_recording
from bc.errors import ConfigError
from bc.models import build_model
from bc.models.small import SmallNet
from bc.training.module import SteeringModule
from bc.training.train import train
from conftest import REPO, compose_config

SCRIPT = REPO / "scripts" / "train.py"
ROWS = 60
BLOCK_ROWS = 10  # 60 rows -> 6 contiguous validation blocks, so a 20% split exists
RUN_TIMEOUT_S = 300
SETTLE_S = 1.0
DB = "mlruns/mlflow.db"
UI_HINT = "mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db"


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_recording(tmp_path_factory.mktemp("data") / "rec", rows=ROWS, seed=3)


def data_overrides(recording: Path, cache: Path) -> list[str]:
    return [f"data.paths=[{recording}]", f"data.block_rows={BLOCK_ROWS}", "data.num_workers=0",
            f"data.cache_dir={cache}"]


def script_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    return {**env, "NO_ALBUMENTATIONS_UPDATE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
            "HYDRA_FULL_ERROR": "0"}


def run_script(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=script_env(),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def store(cwd: Path) -> tuple[str, MlflowClient]:
    uri = f"sqlite:///{cwd / DB}"
    return uri, MlflowClient(tracking_uri=uri)


def assert_no_runs(cwd: Path) -> None:
    """Nothing was started in the store under `cwd` (it may exist, empty: MLflow's client creates it)."""
    if (cwd / DB).exists():
        _, client = store(cwd)
        experiments = [experiment.experiment_id for experiment in client.search_experiments()]
        assert client.search_runs(experiments) == []


def runs_of(client: MlflowClient, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([found.experiment_id])


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    paths = set()
    for item in client.list_artifacts(run_id, path):
        paths |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return paths


def checkpoint_net(client: MlflowClient, uri: str, run_id: str, tmp: Path) -> torch.nn.Module:
    """The network of the run's logged best checkpoint, rebuilt from the run's config.yaml."""
    (checkpoint,) = [path for path in artifact_paths(client, run_id, "checkpoints")
                     if path.endswith(".ckpt") and path != "checkpoints/last.ckpt"]
    local = download_artifacts(run_id=run_id, artifact_path=checkpoint, tracking_uri=uri, dst_path=str(tmp))
    config = yaml.safe_load(Path(download_artifacts(run_id=run_id, artifact_path="config.yaml",
                                                    tracking_uri=uri, dst_path=str(tmp))).read_text())
    net = build_model(config["model"])
    state = torch.load(local, map_location="cpu", weights_only=True)["state_dict"]
    net.load_state_dict({key.removeprefix("net."): value for key, value in state.items() if key.startswith("net.")})
    return net.eval()


def test_train_script_records_run_and_model(tmp_path: Path, recording: Path) -> None:
    result = run_script(tmp_path, "model=nvidia", "data.batch_size=32", "trainer.max_epochs=1",
                        *data_overrides(recording, tmp_path / "cache"))
    assert result.returncode == 0, result.stderr[-3000:]
    uri, client = store(tmp_path)
    (run,) = runs_of(client, "bc")
    run_id = run.info.run_id
    assert f"MLflow run {run_id}" in result.stdout and UI_HINT in result.stdout
    assert run.info.status == "FINISHED"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location == (tmp_path / "mlruns" / "bc").as_uri()

    params = run.data.params
    assert params["model._target_"] == "bc.models.nvidia.PilotNet"
    assert params["optimizer.lr"] == "0.001" and params["data.batch_size"] == "32"
    assert params["trainer.max_epochs"] == "1" and params["loss._target_"] == "torch.nn.MSELoss"
    assert int(params["data_stats.train_samples"]) > 0 and int(params["data_stats.val_samples"]) > 0
    # Named and described by what differs from the defaults; paths are tags, not params.
    assert run.info.run_name.startswith("nvidia batch_size=32 max_epochs=1 block_rows=")
    assert "`data.batch_size=32`, `trainer.max_epochs=1`" in run.data.tags["mlflow.note.content"]
    assert not [key for key in params if key.endswith((".dirpath", ".folder", "output_dir", ".paths"))]
    assert run.data.tags["config.callbacks.model_checkpoint.dirpath"].endswith("checkpoints")
    assert run.data.tags["config.data.paths"] == json.dumps([str(recording)])
    assert {"train/loss", "val/loss", "val/mae", "val/loss_best"} <= set(run.data.metrics)
    val_history = [metric.value for metric in client.get_metric_history(run_id, "val/loss")]
    assert run.data.metrics["val/loss_best"] == pytest.approx(min(val_history))

    artifacts = artifact_paths(client, run_id)
    assert {"config.yaml", "model/weights.pt", "model/model.yaml", "model/model.ts", "logs/train.log",
            "hydra/overrides.yaml", "checkpoints/last.ckpt"} <= artifacts
    assert run.data.tags["pid"].isdigit() and run.data.tags["host"]
    assert any(path.startswith("checkpoints/") and path.endswith(".ckpt") for path in artifacts)
    config_file = download_artifacts(run_id=run_id, artifact_path="config.yaml", tracking_uri=uri,
                                     dst_path=str(tmp_path / "config"))
    logged = yaml.safe_load(Path(config_file).read_text())
    assert logged["data"]["paths"] == [str(recording)] and logged["tracking_uri"] == uri

    # The logged model is the best checkpoint's network, with its preprocessing.
    loaded = model_store.load_model(run_id, uri)
    best = checkpoint_net(client, uri, run_id, tmp_path / "ckpt")
    assert loaded.spec.to_dict() == {"crop_top": 60, "crop_bottom": 20, "height": 66, "width": 200,
                                     "color_space": "yuv", "frame_width": 320, "frame_height": 160}
    batch = torch.rand(4, *loaded.spec.input_shape, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        expected = best(batch)
    with torch.no_grad():
        assert torch.allclose(loaded.net(batch), expected, atol=1e-6)
    fresh = build_model(logged["model"]).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(batch), expected, atol=1e-4)  # trained weights, not a new init
    exported = artifact.load_exported(download_artifacts(run_id=run_id, artifact_path="model/model.ts",
                                                         tracking_uri=uri, dst_path=str(tmp_path / "ts")))
    with torch.no_grad():
        assert torch.allclose(exported.net(batch), expected, atol=1e-5)


@pytest.mark.slow  # long end to end; the default suite covers each piece
def test_multirun_sweep_is_one_run_per_job_in_one_experiment(tmp_path: Path, recording: Path) -> None:
    result = run_script(tmp_path, "-m", "model=nvidia,small", "experiment_name=sweep",
                        "trainer.limit_train_batches=2", "trainer.limit_val_batches=2",
                        *data_overrides(recording, tmp_path / "cache"))
    assert result.returncode == 0, result.stderr[-3000:]
    _, client = store(tmp_path)
    runs = runs_of(client, "sweep")
    assert len(runs) == 2
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert {run.data.tags["model"] for run in runs} == {"bc.models.nvidia.PilotNet", "bc.models.small.SmallNet"}
    assert {run.data.tags["job"] for run in runs} == {"0", "1"}
    sweeps = {run.data.tags["sweep"] for run in runs}
    assert len(sweeps) == 1
    sweep_dir = Path(sweeps.pop())
    assert sweep_dir.is_dir() and sweep_dir.parent.parent == tmp_path / "outputs" / "multirun"
    assert len({run.info.run_name for run in runs}) == 2
    for run in runs:
        assert "model/weights.pt" in artifact_paths(client, run.info.run_id, "model")
        assert run.data.tags["overrides"].startswith(f"model={run.data.params['model._target_'].split('.')[2]}")


@pytest.mark.slow  # timing-sensitive under load; test_train_resume covers KILLED runs by default
def test_ctrl_c_leaves_a_killed_run_with_its_best_model(tmp_path: Path, recording: Path) -> None:
    process = subprocess.Popen(
        # lr so small that val/loss never improves again: no checkpoint is being written when
        # Ctrl-C arrives (that race is handled, but would log the last weights instead).
        [sys.executable, str(SCRIPT), "model=small", "trainer.max_epochs=100000", "optimizer.lr=1e-30",
         "callbacks.early_stopping.patience=100000", *data_overrides(recording, tmp_path / "cache")],
        cwd=tmp_path, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not list((tmp_path / "outputs").glob("*/*/checkpoints/*.ckpt")):
            assert process.poll() is None, process.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.2)
        time.sleep(SETTLE_S)  # let the first checkpoint finish and training go on
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, output[-3000:]
    assert "marked KILLED" in output and "train.py: interrupted" in output
    assert "Traceback" not in output
    uri, client = store(tmp_path)
    (run,) = runs_of(client, "bc")
    assert run.info.status == "KILLED"
    assert {"val/loss", "train/loss"} <= set(run.data.metrics)
    artifacts = artifact_paths(client, run.info.run_id)
    assert "config.yaml" in artifacts and "model/weights.pt" in artifacts
    assert any(path.startswith("checkpoints/") for path in artifacts)
    loaded = model_store.load_model(run.info.run_id, uri)
    batch = torch.full((1, *loaded.spec.input_shape), 100.0)
    best = checkpoint_net(client, uri, run.info.run_id, tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.allclose(loaded.net(batch), best(batch), atol=1e-6)


def test_bad_value_on_the_command_line_is_one_line(tmp_path: Path, recording: Path) -> None:
    result = run_script(tmp_path, "data.val_fraction=abc", *data_overrides(recording, tmp_path / "cache"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (  # the schema's check (bc/core/configs.py)
        "train.py: error: data.val_fraction: Value 'abc' of type 'str' could not be converted to "
        "Float (override data.val_fraction=abc)")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / DB).exists()  # refused before any MLflow run was started


def test_data_error_is_one_line_and_leaves_no_run(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-recording"
    result = run_script(tmp_path, f"data.paths=[{missing}]")
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("train.py: error: ") and "no-such-recording" in line
    assert not (tmp_path / DB).exists()


def compose_train(tmp_path: Path, recording: Path, *overrides: str):
    return compose_config("train", [f"output_dir={tmp_path / 'out'}",
                                    *data_overrides(recording, tmp_path / "cache"), *overrides])


@pytest.mark.parametrize(("override", "field", "expected"), [
    ("loss=huber loss.delta=0", "loss.delta", "non-positive values for delta"),
    ("loss._target_=torch.nn.NoSuchLoss", "loss._target_", "torch.nn.NoSuchLoss"),
    ("+loss.reduction=average", "loss.reduction", "average"),
    ("optimizer.lr=-1", "optimizer.lr", "Invalid learning rate: -1"),
    ("optimizer.lr=fast", "optimizer.lr", "expected a finite number, got 'fast'"),
    ("optimizer=sgd optimizer.momentum=-0.9", "optimizer.momentum", "Invalid momentum value: -0.9"),
    ("scheduler=cosine scheduler.T_max=0", "scheduler.T_max", "by zero"),
    ("scheduler=step scheduler.step_size=0", "scheduler.step_size", "by zero"),
    ("data.batch_size=0", "data.batch_size", "0"),
    ("trainer.max_epochs=-2", "trainer.max_epochs", "-2"),
    ("trainer.max_epochs=abc", "trainer.max_epochs", "expected an integer, got 'abc'"),
    ("+model.bogus=1", "model", "bogus"),
    ("model.outputs=[speed]", "data.outputs",
     "expected [steering] or [steering, speed], got ['speed'] (data.outputs follows model.outputs)"),
    ("speed_loss_weight=-1", "speed_loss_weight", "expected a number >= 0, got -1"),
    # wrong types (data.batch_size=2.5, speed_loss_weight=heavy): the schema, tests/test_configs.py
    ("model._target_=bc.models.base.torch.nn.Linear", "model._target_", "not a registered model"),
    ("callbacks.model_checkpoint.mode=sideways", "callbacks.model_checkpoint.mode", "sideways"),
    ("seed=-1", "seed", "[0, 2**32)"),
    ("experiment_name=''", "experiment_name", "non-empty"),
])
def test_bad_config_values_are_refused_naming_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        recording: Path, override: str, field: str,
                                                        expected: str) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = compose_train(tmp_path, recording, *override.split())
    with pytest.raises(ConfigError) as error:
        train(cfg)
    message = str(error.value)
    assert message.startswith(f"{field}: ") and expected in message and "\n" not in message
    assert_no_runs(tmp_path)  # no MLflow run, not even a FAILED one


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_trainer_without_a_gpu_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              recording: Path) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^trainer\.accelerator: .*gpu"):
        train(compose_train(tmp_path, recording, "trainer=gpu"))
    assert_no_runs(tmp_path)


def test_failing_run_is_marked_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recording: Path) -> None:
    """A failure during training (here early stopping on a metric nobody logs) closes the run FAILED."""
    monkeypatch.chdir(tmp_path)
    cfg = compose_train(tmp_path, recording, "model=small", "experiment_name=failing",
                        "callbacks.early_stopping.monitor=val/nothing", "trainer.limit_train_batches=1")
    with pytest.raises(RuntimeError, match="val/nothing"):
        train(cfg)
    _, client = store(tmp_path)
    (run,) = runs_of(client, "failing")
    assert run.info.status == "FAILED"
    assert "config.yaml" in artifact_paths(client, run.info.run_id)
    assert run.data.params["model._target_"] == "bc.models.small.SmallNet"


def test_frame_size_of_another_simulator_is_stored_with_the_model(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """96x96 one-camera frames: model.yaml and the TorchScript export both say 96x96."""
    monkeypatch.chdir(tmp_path)
    small_frames = write_recording(tmp_path / "rec96", rows=ROWS, seed=1, frame_size=(96, 96), cameras=["center"])
    cfg = compose_train(tmp_path, small_frames, "model=small", "data.cameras=[center]",
                        "model.preprocess.crop_top=0", "model.preprocess.crop_bottom=12",
                        "trainer.limit_train_batches=1", "trainer.limit_val_batches=1")
    run_id = train(cfg)
    loaded = model_store.load_model(run_id)
    assert loaded.spec.frame_size == (96, 96)
    exported = artifact.load_exported(next((tmp_path / "mlruns").rglob(artifact.TORCHSCRIPT_FILE)))
    assert exported.spec.frame_size == (96, 96) and exported.spec == loaded.spec


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)` but the `self.trainer` reference")
def test_module_losses_and_target_shapes() -> None:
    net = SmallNet({"crop_top": 60, "crop_bottom": 20, "height": 33, "width": 100, "color_space": "yuv"})
    x = torch.rand(4, *net.input_shape, generator=torch.Generator().manual_seed(1)) * 255
    y = torch.tensor([[0.5], [-0.5], [0.0], [0.25]])
    with torch.no_grad():
        error = net(x) - y
    for loss, expected in ((torch.nn.MSELoss(), (error ** 2).mean()),
                           (torch.nn.HuberLoss(delta=0.1), torch.nn.functional.huber_loss(net(x), y, delta=0.1))):
        module = SteeringModule(net, optimizer=torch.optim.Adam, loss=loss)
        with torch.no_grad():
            assert module.training_step((x, y), 0).item() == pytest.approx(expected.item(), rel=1e-5)
            assert module.training_step((x, y.squeeze(1)), 0).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match=r"targets have shape \(4, 2\)"):
        module.training_step((x, torch.zeros(4, 2)), 0)
