"""Loading a model from a tracking store runs no code from it and leaves no files behind.

Anyone who can write to a shared MLflow store can write a run's `model/model.yaml`; the
drive server loads the `best` run's model by that file. Only classes registered in
`bc.models.MODELS`, called with plain values, may come out of it.
"""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient
from omegaconf import OmegaConf

from bc import tracking
from bc.inference import store as model_store
from bc.inference import artifact
from bc.errors import ConfigError
from bc.models import MODELS, build_model
from conftest import compose_config

HUB_LOADER = "bc.models.base.torch.hub.load_state_dict_from_url"  # reachable through bc.models' imports


class CreatesFile:
    """Unpickling this creates `path`: the stand-in for any code a pickle can run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, MlflowClient, str]:
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    return uri, MlflowClient(tracking_uri=uri), tracking.get_or_create_experiment("shared", uri)


def log_finished_run(client: MlflowClient, experiment_id: str, folder: Path, model_config: dict) -> str:
    """A FINISHED run with the best val/loss whose model/ holds `model_config` and some weights."""
    folder.mkdir(parents=True)
    (folder / artifact.CONFIG_FILE).write_text(yaml.safe_dump(model_config))
    torch.save({"weight": torch.zeros(1)}, folder / artifact.WEIGHTS_FILE)
    run_id = client.create_run(experiment_id).info.run_id
    client.log_artifacts(run_id, str(folder), artifact.MODEL_ARTIFACT_DIR)
    client.log_metric(run_id, "val/loss", 0.001)
    client.set_terminated(run_id)
    return run_id


def hub_payload(tmp_path: Path, marker: Path) -> dict:
    payload = tmp_path / "payload.pt"
    payload.write_bytes(pickle.dumps(CreatesFile(marker)))
    return {"_target_": HUB_LOADER, "url": payload.as_uri(), "model_dir": str(tmp_path / "hub"),
            "weights_only": False, "progress": False}


@pytest.mark.parametrize("shape", ["target", "nested target", "positional args", "partial"])
def test_a_stored_model_config_cannot_run_code(tmp_path: Path, store, shape: str) -> None:
    uri, client, experiment_id = store
    marker = tmp_path / "payload-ran"
    payload = hub_payload(tmp_path, marker)
    config = {
        "target": payload,
        "nested target": {"_target_": "bc.models.small.SmallNet", "preprocess": payload},
        "positional args": {"_target_": "bc.models.small.SmallNet", "_args_": [payload]},
        "partial": {**payload, "_target_": "bc.models.small.SmallNet", "_partial_": True},
    }[shape]
    run_id = log_finished_run(client, experiment_id, tmp_path / "model", config)

    chosen = tracking.find_run("best", "shared", tracking_uri=uri)  # what drive.py run_id=best loads
    assert chosen == run_id
    with pytest.raises(tracking.TrackingError, match=r"model\.yaml: model") as error:
        model_store.load_model(chosen, uri)
    assert "\n" not in str(error.value) and f"runs:/{run_id}/model" in str(error.value)
    assert not marker.exists()  # nothing ran
    assert not (tmp_path / "hub").exists()  # nothing was even downloaded


def test_the_payload_is_real(tmp_path: Path) -> None:
    """The same payload does run when a loader follows the `_target_` (as bc did before the registry)."""
    from hydra.utils import instantiate

    marker = tmp_path / "payload-ran"
    with pytest.raises(Exception):  # the pickle is no state dict, but it has run by then
        instantiate(hub_payload(tmp_path, marker))
    assert marker.exists()


@pytest.mark.parametrize(("arguments", "refused"), [
    ({"width": {"_target_": "builtins.int"}}, r"model\.width\._target_"),
    ({"width": [1, {"_partial_": True}]}, r"model\.width\[1\]\._partial_"),
    ({"_convert_": "all"}, r"model\._convert_"),
])
def test_build_model_takes_only_plain_values(arguments: dict, refused: str) -> None:
    config = {**OmegaConf.to_container(compose_config("train", ["model=small"]).model), **arguments}
    with pytest.raises(ConfigError, match=refused):
        build_model(config)


def test_registered_models_build_from_their_configs() -> None:
    for target, cls in MODELS.items():
        option = {"PilotNet": "nvidia", "CommaAI": "commaai", "SmallNet": "small"}[cls.__name__]
        config = compose_config("train", [f"model={option}"]).model
        assert config._target_ == target and type(build_model(config)) is cls


def test_loading_by_run_id_leaves_no_temporary_folder(tmp_path: Path, store,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    uri, client, experiment_id = store
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    config = OmegaConf.to_container(compose_config("train", ["model=small"]).model)
    net = build_model(config)
    good = client.create_run(experiment_id).info.run_id
    model_store.log_model(good, net, config, uri)
    bad = log_finished_run(client, experiment_id, tmp_path / "bad", {"_target_": "os.system"})
    for _ in range(3):
        loaded = model_store.load_model(good, uri)
        assert loaded.spec == net.preprocess_spec
    with pytest.raises(tracking.TrackingError):
        model_store.load_model(bad, uri)
    assert list(temp.iterdir()) == []


def test_a_registered_version_is_loaded_without_running_its_code(tmp_path: Path, store) -> None:
    """A registered version's files are as writable as a run's: `drive.py model_uri=` rebuilds
    the network from them like a run's model and never runs the logged model's code file
    (which `mlflow.pyfunc.load_model` does run, by design)."""
    import mlflow.pyfunc

    from bc.inference.predictor import choose_model
    from bc.tracking.registry import fluent_tracking_uri

    uri, client, _ = store
    config = OmegaConf.to_container(compose_config("train", ["model=small"]).model)
    run_id = client.create_run(tracking.get_or_create_experiment("shared", uri)).info.run_id
    model_id, version = model_store.log_model(run_id, build_model(config), config, uri, register="shared")
    folder = Path(client.get_logged_model(model_id).artifact_location.removeprefix("file://"))
    code_ran = tmp_path / "code-ran"
    (folder / "pyfunc.py").write_text(
        f"open({str(code_ran)!r}, 'w').close()\n"
        "import pandas as pd\nfrom mlflow.models import set_model\nfrom mlflow.pyfunc import PythonModel\n"
        "class Any(PythonModel):\n    def predict(self, context, model_input: pd.DataFrame, params=None):\n"
        "        return model_input\nset_model(Any())\n")
    marker = tmp_path / "payload-ran"
    (folder / "artifacts" / "model" / artifact.CONFIG_FILE).write_text(yaml.safe_dump(hub_payload(tmp_path, marker)))

    keys = dict(run_id=None, model_path=None, experiment_name="shared", metric="val/loss", mode="min",
                tracking_uri=uri)
    client.set_registered_model_alias("shared", "champion", version)
    for model_uri in ("models:/shared@champion", f"models:/shared/{version}"):
        with pytest.raises(tracking.TrackingError, match=rf"^{model_uri} \(models:/shared/1\)/model\.yaml: model"
                           ) as error:
            choose_model(model_uri=model_uri, **keys)
        assert "\n" not in str(error.value) and tempfile.gettempdir() not in str(error.value)
    assert not code_ran.exists() and not marker.exists() and not (tmp_path / "hub").exists()
    with fluent_tracking_uri(uri):
        mlflow.pyfunc.load_model("models:/shared/1")
    assert code_ran.exists()  # the code file was a real payload
