"""The model artifact in MLflow: a run's ``model/`` folder and its logged model.

- `log_model`: save a trained network (`bc.inference.artifact.save_model`) as the run's
  ``model/`` artifacts and as an MLflow 3 *logged model* (``models:/<model id>``), a pyfunc
  built from code (`bc.inference.pyfunc`: no pickle), registered as a new version of
  ``register`` when given (``train.py register=<name>``).
- `load_model` (a run id) and `load_registered` (``models:/<name>@<alias>`` or
  ``models:/<name>/<version>``): download the files and rebuild the network as for any model
  folder (`bc.inference.artifact.load_model_folder`): the model's code file is never run.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from bc import tracking
from bc.core.preprocess import Preprocess
from bc.core.scratch import scratch_folder
from bc.inference.artifact import (CONFIG_FILE, MODEL_ARTIFACT_DIR, LoadedModel, _config_dict,
                                   load_model_folder, save_model)
from bc.tracking import TrackingError, client, flatten, resolve_tracking_uri
from bc.tracking.registry import fluent_tracking_uri, model_version

if TYPE_CHECKING:
    import torch

CODE_FILE = Path(__file__).with_name("pyfunc.py")  # the logged model's code (models-from-code)
MODEL_ARTIFACT = "model"  # the key of the saved model folder in the pyfunc's artifacts
STEERING_COLUMN, SPEED_COLUMN = "steering", "speed_mph"  # the pyfunc's output columns


PYFUNC_ARTIFACTS = "artifacts"  # where a pyfunc keeps its `artifacts` inside the model folder


MODEL_TYPE = "bc-steering"


# What bc/inference/pyfunc.py imports to predict (bc itself must be importable: `pip install -e .`).
PIP_PACKAGES = ("mlflow", "torch", "numpy", "pandas", "opencv-python-headless", "hydra-core",
                "omegaconf", "pyyaml", "onnxruntime")


def pip_requirements() -> list[str]:
    """The installed versions of `PIP_PACKAGES` (MLflow would otherwise load the model in a
    subprocess to infer them, seconds per training run)."""
    found = []
    for package in PIP_PACKAGES:
        try:
            found.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            found.append(package)
    return found


def signature(spec: Preprocess, outputs: Sequence[str]) -> Any:
    """uint8 RGB camera frames of the model's frame size in, one column per output out."""
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec


    width, height = spec.frame_size
    columns = [STEERING_COLUMN] + ([SPEED_COLUMN] if "speed" in outputs else [])
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, height, width, 3))]),
                          outputs=Schema([ColSpec("double", column) for column in columns]))


class PortablePyfunc:
    """``mlflow.pyfunc`` as `Model.log`'s flavor, with an ``MLmodel`` file free of this
    machine's paths: the code file by its name (MLflow loads it by that name from the model
    folder) and each artifact by its place in the model folder (the temporary folder it was
    copied from is dropped)."""

    @staticmethod
    def save_model(path: str, mlflow_model: Any, **kwargs: Any) -> None:
        import mlflow.pyfunc
        from mlflow.models.model import MLMODEL_FILE_NAME

        mlflow.pyfunc.save_model(path, mlflow_model=mlflow_model, **kwargs)
        pyfunc = mlflow_model.flavors[mlflow.pyfunc.FLAVOR_NAME]
        pyfunc["model_code_path"] = os.path.basename(pyfunc["model_code_path"])
        for artifact in (pyfunc.get("artifacts") or {}).values():
            artifact.pop("uri", None)
        mlflow_model.save(os.path.join(path, MLMODEL_FILE_NAME))


def log_logged_model(run_id: str, folder: Path, name: str, spec: Preprocess, outputs: Sequence[str],
                     params: Mapping[str, str], uri: str, register: str | None = None,
                     step: int = 0) -> tuple[str, str | None]:
    """Log ``folder`` (weights, model.yaml, TorchScript, ONNX) as the logged model ``name`` of
    run ``run_id`` (see the module doc); returns its model id and the registered version (or
    None). The run's metrics at ``step`` (e.g. ``val/loss_best``) are linked to the model.
    ``name`` must not be ``model``: MLflow 3 would mix the logged model's files into the
    run's ``model/`` artifacts (``runs:/<run id>/model`` lists both)."""
    from mlflow.entities import LoggedModelStatus
    from mlflow.models import Model


    client = tracking.client(uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(experiment_id, name=name, source_run_id=run_id,
                                       params=dict(params), model_type=MODEL_TYPE)
    with fluent_tracking_uri(uri), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*input example was not provided", category=UserWarning)
        info = Model.log(artifact_path=None, name=name, flavor=PortablePyfunc,
                         python_model=str(CODE_FILE), artifacts={MODEL_ARTIFACT: str(folder)},
                         signature=signature(spec, outputs), pip_requirements=pip_requirements(),
                         run_id=run_id, model_id=model.model_id, step=step,
                         registered_model_name=register or None)
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    version = info.registered_model_version
    return model.model_id, None if version is None else str(version)


def log_model(run_id: str, model: torch.nn.Module, model_config: Mapping[str, Any],
              uri: str | None = None, register: str | None = None, step: int = 0) -> tuple[str, str | None]:
    """Save ``model`` (see module doc) as the ``model/`` artifacts of an MLflow run and as its
    logged model, registered as a new version of ``register`` when given; returns the logged
    model's id and the registered version (or None)."""

    uri = resolve_tracking_uri(uri)
    mlflow_client = client(uri)
    config = _config_dict(model_config)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_model(model, config, Path(tmp) / MODEL_ARTIFACT_DIR)
        mlflow_client.log_artifacts(run_id, str(folder), artifact_path=MODEL_ARTIFACT_DIR)
        return log_logged_model(run_id, folder, type(model).__name__, model.preprocess_spec, model.outputs,
                                flatten(config), uri, register=register, step=step)


def load_model(run_id: str, tracking_uri: str | None = None, runtime: str = "torch") -> LoadedModel:
    """Load the model logged in MLflow run ``run_id`` with its preprocessing spec (served by
    torch, or ONNX Runtime with ``runtime="onnx"``).

    Raises ``TrackingError`` naming the problem: unreachable server, unknown run id,
    or a run without a logged model.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(tracking_uri)
    mlflow_client = client(uri)
    try:
        mlflow_client.get_run(run_id)
    except MlflowException as error:
        raise TrackingError(f"no MLflow run with id {run_id!r} in {uri}") from error
    names = {item.path for item in mlflow_client.list_artifacts(run_id, MODEL_ARTIFACT_DIR)}
    if f"{MODEL_ARTIFACT_DIR}/{CONFIG_FILE}" not in names:
        raise TrackingError(f"MLflow run {run_id} has no logged model (no {MODEL_ARTIFACT_DIR}/ artifacts)")
    source = f"runs:/{run_id}/{MODEL_ARTIFACT_DIR}"
    with scratch_folder("bc-model-") as tmp:  # loaded fully, then removed (even after a kill)
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=MODEL_ARTIFACT_DIR, tracking_uri=uri, dst_path=tmp)
        try:
            return load_model_folder(Path(local), source=source, runtime=runtime)
        except TrackingError as error:
            raise TrackingError(str(error).replace(str(local), source)) from None


def load_registered(model_uri: str, tracking_uri: str | None = None, runtime: str = "torch") -> LoadedModel:
    """The network of a registered version with its preprocessing (module doc): its files are
    downloaded and rebuilt like a run's model (registered classes, ``weights_only``)."""
    import mlflow


    version = model_version(model_uri, tracking_uri)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    location = tracking.client(uri).get_model_version_download_uri(version.name, version.version)
    source = f"models:/{version.name}/{version.version}"
    with scratch_folder("bc-model-") as tmp:  # removed even after a kill (bc.core.scratch)
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{location.rstrip('/')}/{PYFUNC_ARTIFACTS}/{MODEL_ARTIFACT}",
                tracking_uri=uri, dst_path=tmp)
        except Exception as error:  # MlflowException or OSError: the files are not there
            raise tracking.TrackingError(f"model_uri={model_uri}: {source} has no bc model files "
                                         f"({error})") from None
        try:
            return load_model_folder(Path(local), source=f"{model_uri} ({source})", runtime=runtime)
        except tracking.TrackingError as error:  # name the version, not the temporary folder
            raise tracking.TrackingError(str(error).replace(str(local), f"{model_uri} ({source})")) from None
