"""Every bad model artifact is one line and exit 2 from drive.py (the `choose_model` it
instantiates), never Hydra's multi-line "Error in call to target ..." with exit 1."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import instantiate
from mlflow import MlflowClient
from omegaconf import OmegaConf

from bc import tracking
from bc.inference import store as model_store
from bc.inference import artifact
from bc.cli import run
from bc.errors import EXIT_USAGE
from bc.models import build_model
from conftest import REPO, compose_config


class CreatesFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def small_config(model: str = "small") -> dict:
    return OmegaConf.to_container(compose_config("train", [
        f"model={model}", "model.preprocess.frame_width=320", "model.preprocess.frame_height=160"]).model)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """One real saved model (weights, model.yaml, TorchScript, ONNX); each test damages a copy."""
    return artifact.save_model(build_model(small_config()), small_config(),
                               tmp_path_factory.mktemp("saved") / "model")


def tamper(folder: Path, damage: str, tmp_path: Path) -> None:
    config, weights = folder / artifact.CONFIG_FILE, folder / artifact.WEIGHTS_FILE
    text = config.read_text()
    if damage == "yaml python tag":
        config.write_text("!!python/object/apply:os.system ['touch " + str(tmp_path / "ran") + "']\n")
    elif damage == "non-UTF-8 model.yaml":
        config.write_bytes(text.encode() + b"\n# \xff\xfe\xfa\n")
    elif damage in ("negative width", "zero width"):
        values = yaml.safe_load(text)
        values["width"] = -8 if damage == "negative width" else 0
        config.write_text(yaml.safe_dump(values))
    elif damage == "not a mapping":
        config.write_text("- 1\n- 2\n")
    elif damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:200])
    elif damage == "mismatched weights":
        other = build_model(small_config("nvidia"))
        torch.save(other.state_dict(), weights)
    elif damage == "weights not a state dict":
        torch.save([torch.zeros(3)], weights)
    elif damage == "pickled code as weights":
        weights.write_bytes(pickle.dumps(CreatesFile(tmp_path / "ran")))
    elif damage == "empty weights":
        weights.write_bytes(b"")
    else:
        raise AssertionError(damage)


DAMAGES = ["yaml python tag", "non-UTF-8 model.yaml", "negative width", "zero width", "not a mapping",
           "truncated weights", "mismatched weights", "weights not a state dict",
           "pickled code as weights", "empty weights"]


def drive_predictor(capsys, **keys) -> tuple[int, str]:
    """drive.py's predictor, built as drive.py builds it (Hydra's instantiate inside bc.cli.run)."""
    cfg = compose_config("drive", [f"{key}={value}" for key, value in keys.items()])
    with pytest.raises(SystemExit) as exited:
        run("drive.py", lambda: instantiate(cfg.predictor))
    return exited.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module: creating a SQLite store takes seconds."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    return uri, client, tracking.get_or_create_experiment("bc", uri)


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_bad_run_model_is_one_line_and_exit_2(tmp_path: Path, store, saved, capsys, damage: str) -> None:
    uri, client, experiment = store
    folder = Path(shutil.copytree(saved, tmp_path / "model"))
    tamper(folder, damage, tmp_path)
    run_id = client.create_run(experiment).info.run_id
    client.log_artifacts(run_id, str(folder), artifact.MODEL_ARTIFACT_DIR)
    code, err = drive_predictor(capsys, run_id=run_id, tracking_uri=uri)
    assert code == EXIT_USAGE, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("drive.py: error: ") and "model/" in lines[0], err
    assert "Error in call to target" not in err and not (tmp_path / "ran").exists()


def test_a_tampered_registered_version_is_one_line_and_exit_2(tmp_path: Path, store, capsys) -> None:
    uri, client, experiment = store
    run_id = client.create_run(experiment).info.run_id
    model_id, version = model_store.log_model(run_id, build_model(small_config()), small_config(), uri,
                                           register="shared")
    folder = Path(client.get_logged_model(model_id).artifact_location.removeprefix("file://"))
    (weights,) = folder.glob(f"artifacts/**/{artifact.WEIGHTS_FILE}")
    weights.write_bytes(weights.read_bytes()[:-100])
    capsys.readouterr()  # MLflow's registration messages
    code, err = drive_predictor(capsys, model_uri=f"models:/shared/{version}", tracking_uri=uri)
    assert code == EXIT_USAGE and len(err.strip().splitlines()) == 1, err
    assert f"models:/shared/{version}" in err and "weights.pt" in err


def test_drive_py_with_a_yaml_python_tag_is_one_line_and_exit_2(tmp_path: Path, store, saved) -> None:
    uri, client, experiment = store
    folder = Path(shutil.copytree(saved, tmp_path / "model"))
    tamper(folder, "yaml python tag", tmp_path)
    run_id = client.create_run(experiment).info.run_id
    client.log_artifacts(run_id, str(folder), artifact.MODEL_ARTIFACT_DIR)
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "drive.py"), f"run_id={run_id}",
                             f"tracking_uri={uri}", "port=0"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    assert result.returncode == EXIT_USAGE, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and "model.yaml" in result.stderr
    assert not (tmp_path / "ran").exists()
