"""The MLflow logged model (pyfunc from code), the model registry and ``models:/`` URIs, against
a real sqlite MLflow store: what `train.py register=`, `scripts/promote.py` and
`drive.py model_uri=` do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from omegaconf import OmegaConf

from bc.core import images

from bc.tracking import registry
from bc.inference import store as model_store
from bc.inference import artifact

from bc import tracking
from bc.inference.predictor import Predictor, choose_model
from bc.errors import ConfigError
from bc.inference.store import SPEED_COLUMN, STEERING_COLUMN
from bc.models import build_model
from conftest import REPO, compose_config

NAME = "steer"
METRIC = "eval/lake/autonomy"


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """Center-camera frames of the built-in simulator, as the drive server decodes them."""
    from bc.experiments.benchmarks.drive import simulator_frames

    return np.stack([images.decode_jpeg(jpeg) for jpeg in simulator_frames(count=4)])


def trained_like(seed: int, outputs: list[str]) -> tuple[torch.nn.Module, dict]:
    """A small network whose weights differ by seed (weights do not need training here)."""
    config = OmegaConf.to_container(compose_config("train", ["model=small", f"model.outputs={outputs}"]).model)
    torch.manual_seed(seed)
    return build_model(config).eval(), config


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three registered versions of NAME: runs 1 and 2 in experiment `bc` (autonomy 80 and 95),
    run 3 (autonomy 100) in another experiment; and a steering+speed logged model, unregistered."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    client = MlflowClient(uri)
    found: dict = {"uri": uri, "runs": [], "nets": [], "models": []}
    for seed, (experiment, score) in enumerate([("bc", 80.0), ("bc", 95.0), ("other", 100.0)]):
        net, config = trained_like(seed, ["steering"])
        run_id = client.create_run(tracking.get_or_create_experiment(experiment, uri)).info.run_id
        model_id, version = model_store.log_model(run_id, net, config, uri, register=NAME)
        assert version == str(seed + 1)
        client.log_metric(run_id, METRIC, score)
        client.set_terminated(run_id)
        found["runs"].append(run_id)
        found["nets"].append(net)
        found["models"].append(model_id)
    net, config = trained_like(7, ["steering", "speed"])
    run_id = client.create_run(tracking.get_or_create_experiment("bc", uri)).info.run_id
    found["speed"] = (net, model_store.log_model(run_id, net, config, uri)[0])
    return found


def outputs_of(net: torch.nn.Module, frames: np.ndarray) -> np.ndarray:
    predictor = Predictor(artifact.LoadedModel(net, net.preprocess_spec, "test", net.outputs))
    predictions = [predictor.predict_rgb(frame) for frame in frames]
    return np.array([prediction[:len(net.outputs)] for prediction in predictions], dtype=float)


def test_the_logged_model_is_code_plus_files_and_pyfunc_predicts_like_the_drive_server(
        store: dict, frames: np.ndarray) -> None:
    client = MlflowClient(store["uri"])
    model = client.get_logged_model(store["models"][0])
    assert model.source_run_id == store["runs"][0] and str(model.status) == "READY"
    assert model.params["_target_"] == "bc.models.small.SmallNet"
    files = {item.path for item in client.list_logged_model_artifacts(model.model_id)}
    files |= {item.path for item in client.list_logged_model_artifacts(model.model_id, "artifacts/model")}
    assert {"MLmodel", "pyfunc.py", "artifacts/model/weights.pt", "artifacts/model/model.yaml",
            "artifacts/model/model.ts", "artifacts/model/model.onnx"} <= files
    assert not [name for name in files if name.endswith((".pkl", ".pickle", ".cloudpickle"))]
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{model.artifact_location}/MLmodel",
                                                     tracking_uri=store["uri"]))
    pyfunc = yaml.safe_load(local.read_text())["flavors"]["python_function"]
    assert pyfunc["model_code_path"] == "pyfunc.py" and "python_model" not in pyfunc
    assert pyfunc["artifacts"] == {"model": {"path": "artifacts/model"}}  # no local temporary path

    with registry.fluent_tracking_uri(store["uri"]):
        for model_id, net in [(store["models"][0], store["nets"][0]), (store["speed"][1], store["speed"][0])]:
            predicted = mlflow.pyfunc.load_model(f"models:/{model_id}").predict(frames)
            expected = outputs_of(net, frames)
            columns = [STEERING_COLUMN] + ([SPEED_COLUMN] if "speed" in net.outputs else [])
            assert list(predicted.columns) == columns
            np.testing.assert_allclose(predicted.to_numpy(), expected, rtol=0, atol=1e-6)
        assert len(np.unique(predicted[STEERING_COLUMN].round(6))) > 1  # frames do differ


def test_promote_picks_the_best_version_of_the_experiment_and_drive_serves_the_alias(
        store: dict, frames: np.ndarray, tmp_path: Path) -> None:
    uri = store["uri"]
    command = [sys.executable, str(REPO / "scripts" / "promote.py"), f"name={NAME}", f"metric={METRIC}",
               f"tracking_uri={uri}", "experiment_name=bc"]
    promoted = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    assert "version 2" in promoted.stdout and "= 95" in promoted.stdout  # not run 3's 100: other experiment
    champion_version = MlflowClient(uri).get_model_version_by_alias(NAME, "champion")
    assert str(champion_version.version) == "2"
    assert champion_version.tags["promoted_as"] == "champion"
    assert champion_version.tags["promotion.metric"] == f"{METRIC} (max)"
    assert champion_version.tags["promotion.value"] == "95"
    assert champion_version.tags["promotion.runner_up"] == "version 1: 80"  # run 3: another experiment
    assert champion_version.tags["promotion.tie_break"] == "no tie"
    assert "Runner-up: version 1 with 80" in champion_version.description
    assert not list(tmp_path.iterdir())  # no promote.log (or anything else) where it ran

    keys = dict(run_id=None, model_path=None, experiment_name="bc", metric="val/loss", mode="min",
                tracking_uri=uri)
    champion = choose_model(model_uri=f"models:/{NAME}@champion", **keys)
    first = choose_model(model_uri=f"models:/{NAME}/1", **keys)
    assert champion.source.startswith(f"models:/{NAME}@champion (models:/{NAME}/2)")
    np.testing.assert_allclose(outputs_of(champion.net, frames), outputs_of(store["nets"][1], frames), atol=0)
    np.testing.assert_allclose(outputs_of(first.net, frames), outputs_of(store["nets"][0], frames), atol=0)
    onnx = choose_model(model_uri=f"models:/{NAME}@champion", runtime="onnx", **keys)
    np.testing.assert_allclose(Predictor(onnx).predict_rgb(frames[0]).steering,
                               outputs_of(store["nets"][1], frames[:1])[0, 0], atol=1e-5)
    assert registry.run_of(f"models:/{NAME}@champion", uri) == store["runs"][1]  # evaluate.py logs there

    with pytest.raises(tracking.TrackingError, match=r"model_uri=models:/steer@gold: no such version in the "
                                                     r"registered model 'steer'"):
        choose_model(model_uri=f"models:/{NAME}@gold", **keys)
    with pytest.raises(tracking.TrackingError, match=r"registered models: steer"):
        choose_model(model_uri="models:/nope/1", **keys)
    with pytest.raises(ConfigError, match=r"model_uri: expected models:/<name>@<alias>"):
        choose_model(model_uri="runs:/abc/model", **keys)
    with pytest.raises(ConfigError, match=r"exactly one of run_id=.*model_uri=.*got run_id='latest', "
                                          r"model_uri="):
        choose_model(**{**keys, "run_id": "latest"}, model_uri=f"models:/{NAME}/1")
    with pytest.raises(tracking.TrackingError, match=r"metric: no version of 'steer' comes from a run of "
                                                     r"experiment 'bc' with metric 'val/nothing'"):
        registry.promote(NAME, "champion", "bc", "val/nothing", "max", uri)
    with pytest.raises(ConfigError, match=r"alias: expected a name"):
        registry.promote(NAME, "12", "bc", METRIC, "max", uri)


def test_promote_refuses_a_tie_unless_told_how_to_break_it(store: dict) -> None:
    uri, client = store["uri"], MlflowClient(store["uri"])
    for run_id, loss in zip(store["runs"][:2], (0.3, 0.2)):
        client.log_metric(run_id, "eval/tied", 50.0)
        client.log_metric(run_id, "val/loss_best", loss)
    with pytest.raises(tracking.TrackingError, match=r"^tie: versions 1, 2 of 'steer' all have eval/tied = 50; "
                                                     r"say how to choose with tie_break="):
        registry.promote(NAME, "tied", "bc", "eval/tied", "max", uri)
    with pytest.raises(ConfigError, match=r"^tie_break: expected newest, oldest or <metric>:min\|max"):
        registry.promote(NAME, "tied", "bc", "eval/tied", "max", uri, tie_break="first")
    oldest = registry.promote(NAME, "tied", "bc", "eval/tied", "max", uri, tie_break="oldest")
    assert str(oldest.version.version) == "1" and oldest.version.tags["promotion.tie_break"] == "oldest"
    assert "Tie on 50 broken by tie_break=oldest" in oldest.version.description
    by_loss = registry.promote(NAME, "tied", "bc", "eval/tied", "max", uri, tie_break="val/loss_best:min")
    assert str(by_loss.version.version) == "2" and by_loss.runner_up == ("1", 50.0)
    assert "promoted_as" not in client.get_model_version(NAME, "1").tags  # the alias moved on
    # the logged models' pages (their Description) follow the alias
    assert client.get_logged_model(store["models"][1]).tags["mlflow.note.content"] == by_loss.reason
    assert "mlflow.note.content" not in client.get_logged_model(store["models"][0]).tags


@pytest.mark.slow  # ~15 s; evaluate.py (test_end_to_end.py) and serving a registered alias (above) stay in the default suite
def test_evaluate_drives_a_registered_version_and_logs_to_its_source_run(store: dict, tmp_path: Path) -> None:
    """`evaluate.py model_uri=models:/<name>@<alias>` drives that version (here with ONNX Runtime)
    and logs the closed-loop metrics to the run the version came from."""
    uri = store["uri"]
    client = MlflowClient(uri)
    net, config = trained_like(11, ["steering"])
    run_id = client.create_run(tracking.get_or_create_experiment("evaluated", uri)).info.run_id
    version = model_store.log_model(run_id, net, config, uri, register=NAME)[1]
    client.set_terminated(run_id)
    client.set_registered_model_alias(NAME, "candidate", version)
    out = tmp_path / "eval"
    command = [sys.executable, str(REPO / "scripts" / "evaluate.py"), "run_id=null",
               f"model_uri=models:/{NAME}@candidate", "runtime=onnx", f"tracking_uri={uri}",
               "track=lake", "laps=1", "max_steps=15", "realtime=false", "video=false", "progress=false",
               f"out={out}", f"hydra.run.dir={out}"]
    evaluated = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"evaluating MLflow run {run_id}" in evaluated.stdout
    assert (out / "lake" / "metrics.json").is_file()
    assert "eval/lake/distance_m" in client.get_run(run_id).data.metrics
    assert all("eval/lake/distance_m" not in client.get_run(other).data.metrics for other in store["runs"])
