"""Real training runs: `scripts/train.py` on a tiny generated recording, tracked in a real MLflow store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

from bc import tracking
from bc.data.synthetic import write_recording
from bc.models.small import SmallNet
from bc.module import SteeringModule
from bc.train import ConfigError, train

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train.py"
CONF = ROOT / "conf"
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
    (checkpoint,) = [path for path in artifact_paths(client, run_id, "checkpoints") if path.endswith(".ckpt")]
    local = download_artifacts(run_id=run_id, artifact_path=checkpoint, tracking_uri=uri, dst_path=str(tmp))
    config = yaml.safe_load(Path(download_artifacts(run_id=run_id, artifact_path="config.yaml",
                                                    tracking_uri=uri, dst_path=str(tmp))).read_text())
    net = instantiate(config["model"])
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
    assert params["trainer.max_epochs"] == "1" and params["loss"] == "mse"
    assert int(params["data_stats.train_samples"]) > 0 and int(params["data_stats.val_samples"]) > 0
    assert {"train/loss", "val/loss", "val/mae", "val/loss_best"} <= set(run.data.metrics)
    val_history = [metric.value for metric in client.get_metric_history(run_id, "val/loss")]
    assert run.data.metrics["val/loss_best"] == pytest.approx(min(val_history))

    artifacts = artifact_paths(client, run_id)
    assert {"config.yaml", "model/weights.pt", "model/model.yaml", "model/model.ts", "logs/train.log",
            "hydra/overrides.yaml"} <= artifacts
    assert any(path.startswith("checkpoints/") and path.endswith(".ckpt") for path in artifacts)
    config_file = download_artifacts(run_id=run_id, artifact_path="config.yaml", tracking_uri=uri,
                                     dst_path=str(tmp_path / "config"))
    logged = yaml.safe_load(Path(config_file).read_text())
    assert logged["data"]["paths"] == [str(recording)] and logged["tracking_uri"] == uri

    # The logged model is the best checkpoint's network, with its preprocessing.
    loaded = tracking.load_model(run_id, uri)
    best = checkpoint_net(client, uri, run_id, tmp_path / "ckpt")
    assert loaded.spec.to_dict() == {"crop_top": 60, "crop_bottom": 20, "height": 66, "width": 200,
                                     "color_space": "yuv", "frame_width": 320, "frame_height": 160}
    batch = torch.rand(4, *loaded.spec.input_shape, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        expected = best(batch)
    assert torch.allclose(loaded.predict(batch), expected, atol=1e-6)
    fresh = instantiate(logged["model"]).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(batch), expected, atol=1e-4)  # trained weights, not a new init
    exported = tracking.load_exported(download_artifacts(run_id=run_id, artifact_path="model/model.ts",
                                                         tracking_uri=uri, dst_path=str(tmp_path / "ts")))
    assert torch.allclose(exported.predict(batch), expected, atol=1e-5)


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
    assert "marked KILLED" in output
    uri, client = store(tmp_path)
    (run,) = runs_of(client, "bc")
    assert run.info.status == "KILLED"
    assert {"val/loss", "train/loss"} <= set(run.data.metrics)
    artifacts = artifact_paths(client, run.info.run_id)
    assert "config.yaml" in artifacts and "model/weights.pt" in artifacts
    assert any(path.startswith("checkpoints/") for path in artifacts)
    loaded = tracking.load_model(run.info.run_id, uri)
    batch = torch.full((1, *loaded.spec.input_shape), 100.0)
    best = checkpoint_net(client, uri, run.info.run_id, tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.allclose(loaded.predict(batch), best(batch), atol=1e-6)


def test_bad_value_on_the_command_line_is_named(tmp_path: Path, recording: Path) -> None:
    result = run_script(tmp_path, "optimizer.lr=-0.01", *data_overrides(recording, tmp_path / "cache"))
    assert result.returncode != 0
    assert "Config error: optimizer.lr: expected > 0, got -0.01" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / DB).exists()  # refused before any MLflow run was started


def compose_train(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[f"output_dir={tmp_path / 'out'}", *overrides])


@pytest.mark.parametrize(("override", "field", "expected"), [
    ("loss=l1", "loss", "one of ['mse', 'huber']"),
    ("optimizer.lr=-1", "optimizer.lr", "> 0"),
    ("optimizer.lr=fast", "optimizer.lr", "a number"),
    ("data.batch_size=0", "data.batch_size", ">= 1"),
    ("data.batch_size=2.5", "data.batch_size", "an integer"),
    ("trainer.max_epochs=0", "trainer.max_epochs", ">= 1"),
    ("optimizer=sgd optimizer.momentum=-0.9", "optimizer.momentum", ">= 0"),
    ("loss=huber huber_delta=0", "huber_delta", "> 0"),
    ("experiment_name=''", "experiment_name", "non-empty"),
])
def test_bad_config_values_are_refused_naming_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        override: str, field: str, expected: str) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = compose_train(tmp_path, *override.split())
    with pytest.raises(ConfigError, match="^" + field.replace(".", r"\.") + ": expected") as error:
        train(cfg)
    assert expected in str(error.value)
    assert not (tmp_path / DB).exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_trainer_without_a_gpu_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^trainer\.accelerator: 'gpu' needs a CUDA GPU.*use trainer=cpu"):
        train(compose_train(tmp_path, "trainer=gpu"))


def test_failing_run_is_marked_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "no-such-recording"
    cfg = compose_train(tmp_path, "model=small", f"data.paths=[{missing}]", "data.num_workers=0",
                        "experiment_name=failing")
    with pytest.raises(Exception, match="no-such-recording"):
        train(cfg)
    _, client = store(tmp_path)
    (run,) = runs_of(client, "failing")
    assert run.info.status == "FAILED"
    assert "config.yaml" in artifact_paths(client, run.info.run_id)
    assert run.data.params["model._target_"] == "bc.models.small.SmallNet"


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)` but the `self.trainer` reference")
def test_module_losses_and_target_shapes() -> None:
    net = SmallNet({"crop_top": 60, "crop_bottom": 20, "height": 33, "width": 100, "color_space": "yuv"})
    x = torch.rand(4, *net.input_shape, generator=torch.Generator().manual_seed(1)) * 255
    y = torch.tensor([[0.5], [-0.5], [0.0], [0.25]])
    with torch.no_grad():
        error = net(x) - y
    for loss, expected in (("mse", (error ** 2).mean()),
                           ("huber", torch.nn.functional.huber_loss(net(x), y, delta=0.1))):
        module = SteeringModule(net, optimizer=torch.optim.Adam, loss=loss, huber_delta=0.1)
        with torch.no_grad():
            assert module.training_step((x, y), 0).item() == pytest.approx(expected.item(), rel=1e-5)
            assert module.training_step((x, y.squeeze(1)), 0).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match=r"targets have shape \(4, 2\)"):
        module.training_step((x, torch.zeros(4, 2)), 0)
    with pytest.raises(ValueError, match="loss: expected one of"):
        SteeringModule(net, optimizer=torch.optim.Adam, loss="l1")
