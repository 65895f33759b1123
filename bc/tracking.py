"""MLflow tracking: where runs live, how a trained model is saved, found and loaded back.

A model is saved in its run as artifacts under ``model/``:

- ``weights.pt``: the ``state_dict`` (loaded with ``weights_only=True``: no code unpickled),
- ``model.yaml``: the model's Hydra config, including its preprocessing spec,
- ``model.ts``: a TorchScript export with the preprocessing spec and the output names
  (``[steering]`` or ``[steering, speed]``) embedded, for use outside this package
  (``load_exported``),
- ``model.onnx``: the same as ONNX, spec and outputs as metadata (`bc.onnx_export`; served
  with ONNX Runtime by ``drive.py runtime=onnx``).

The same folder is also the run's MLflow *logged model* (``models:/<model id>``, named after the
network's class, a pyfunc built from code, optionally registered: `bc.registry`), so
``mlflow.pyfunc.load_model`` predicts too.

Rebuilding from config + weights is portable and safe: ``_target_`` must name a class in
the ``bc.models.MODELS`` registry and its arguments must be plain values (``build_model``).
Loading never unpickles code and never imports anything outside ``bc.models`` (nor runs the
logged model's code file). The drive server calls ``load_model`` (by run id),
``bc.registry.load_registered`` (``models:/`` URI) or ``load_exported``.

Training tags each run with the ``pid`` and ``host`` of its process, so a run whose process
died without closing it (SIGKILL, power loss) is found and marked KILLED (``mark_dead_runs``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import urllib.error
import urllib.request
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import yaml
from hydra.experimental.callback import Callback

from bc.errors import BcError, ConfigError
from bc.onnx_export import ONNX_FILE, export_onnx, load_onnx
from bc.preprocess import Preprocess
from bc.scratch import scratch_folder

if TYPE_CHECKING:
    import torch

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
MODEL_ARTIFACT_DIR = "model"
WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "model.yaml"
TORCHSCRIPT_FILE = "model.ts"
SPEC_EXTRA_FILE = "preprocess.json"
OUTPUTS_EXTRA_FILE = "outputs.json"
RUNTIMES = ("torch", "onnx")  # what serves a loaded model: the torch network or ONNX Runtime
TAG_PID, TAG_HOST = "pid", "host"  # the training process that owns a RUNNING run

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@contextmanager
def _quiet_torchscript():
    """TorchScript is deprecated in favour of torch.export, but it is the export that loads at
    any batch size without our code; silence exactly that warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*is deprecated", category=DeprecationWarning)
        yield


class TrackingError(BcError, RuntimeError):
    """A run, model or tracking server could not be found or used; the message says which."""


@dataclass
class LoadedModel:
    """A network ready for inference together with the preprocessing it was trained with."""

    net: torch.nn.Module
    spec: Preprocess
    source: str
    outputs: tuple[str, ...] = ("steering",)  # the net's output columns (bc.models.base.OUTPUTS)


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use: the argument, else ``MLFLOW_TRACKING_URI``, else the embedded
    sqlite store. A relative sqlite path is made absolute against the current directory."""

    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        db = Path(uri[len(prefix):]).resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        uri = prefix + str(db)
    return uri


def default_artifact_location(uri: str) -> str | None:
    """For the embedded sqlite store, artifacts live in the folder beside the database."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        return Path(uri[len(prefix):]).parent.resolve().as_uri()
    return None  # a tracking server decides for itself


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """Fail fast with a clear message when an HTTP tracking server does not answer
    (MLflow itself retries for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except (urllib.error.URLError, OSError) as error:
        raise TrackingError(f"MLflow tracking server {uri} is unreachable: {error}") from error


def client(uri: str | None = None) -> "mlflow.MlflowClient":  # noqa: F821
    """An MlflowClient for the resolved URI, after checking that a server answers."""
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(uri)
    check_reachable(uri)
    prepare_store(uri)
    return MlflowClient(tracking_uri=uri)


def prepare_store(uri: str) -> None:
    """Create or migrate an SQLite store once, under an exclusive lock on ``<db>.lock`` beside
    the database, before anything else in this process uses it. MLflow creates the tables of a
    new SQLite store on first use without a lock: processes starting at the same moment (a
    parallel sweep, several ``train.py``) each run the migrations and leave the store
    half-migrated. With the lock the first creates it and the others find it complete. A server
    (``http://...``) or another database is left to itself."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return
    import fcntl

    from mlflow.tracking._tracking_service.utils import _get_store

    db = Path(uri[len(prefix):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        try:
            _get_store(uri)  # builds (creating the tables if needed) and caches MLflow's store
        except Exception as error:  # noqa: BLE001 - MLflow raises several kinds for a bad store
            raise TrackingError(f"tracking_uri: the MLflow store {db} cannot be opened: "
                                f"{str(error).splitlines()[0]}") from error


def get_or_create_experiment(name: str, uri: str | None = None) -> str:
    """Experiment id for ``name``, creating it (artifacts beside the sqlite db) if needed."""
    uri = resolve_tracking_uri(uri)
    mlflow_client = client(uri)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise TrackingError(f"experiment_name: the MLflow experiment {name!r} is deleted; restore it "
                            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) "
                            f"or pick another name")
    if experiment is not None:
        return experiment.experiment_id
    from mlflow.exceptions import MlflowException

    location = default_artifact_location(uri)
    if location is not None:
        location = f"{location}/{name}"
    try:
        return mlflow_client.create_experiment(name, artifact_location=location)
    except MlflowException as error:  # a parallel job (launcher, another Optuna process) was first
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return mlflow_client.get_experiment_by_name(name).experiment_id


class PrepareStore(Callback):
    """Hydra callback (conf/train.yaml): before a sweep launches its jobs, create the MLflow
    store and experiment once, so jobs started at the same moment (hydra/launcher=joblib,
    submitit, Optuna with n_jobs > 1) do not race to create the same database tables; and the
    folder of a relative SQLite Optuna study."""

    def on_multirun_start(self, config: "DictConfig", **kwargs: Any) -> None:  # noqa: F821
        get_or_create_experiment(str(config.experiment_name), config.get("tracking_uri"))
        study = config.hydra.sweeper.get("storage")
        if isinstance(study, str):  # an Optuna study in sqlite:///mlruns/optuna.db: its folder
            resolve_tracking_uri(study)


def _config_dict(model_config: Mapping[str, Any]) -> dict[str, Any]:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(model_config, DictConfig):
            return OmegaConf.to_container(model_config, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a hard dependency
        pass
    return json.loads(json.dumps(dict(model_config)))


def save_model(model: torch.nn.Module, model_config: Mapping[str, Any], folder: Path) -> Path:
    """Write weights, config and the TorchScript and ONNX exports of ``model`` into ``folder``."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    config = _config_dict(model_config)
    spec: Preprocess = model.preprocess_spec
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    torch.save(state, folder / WEIGHTS_FILE)
    was_training = model.training
    model.eval()
    example = torch.zeros(1, *spec.input_shape)
    with _quiet_torchscript():
        traced = torch.jit.trace(model.cpu(), example)
        torch.jit.save(traced, str(folder / TORCHSCRIPT_FILE),
                       _extra_files={SPEC_EXTRA_FILE: json.dumps(spec.to_dict()),
                                     OUTPUTS_EXTRA_FILE: json.dumps(list(model.outputs))})
    export_onnx(model, spec, model.outputs, folder / ONNX_FILE)
    model.train(was_training)
    return folder


def log_model(run_id: str, model: torch.nn.Module, model_config: Mapping[str, Any],
              uri: str | None = None, register: str | None = None, step: int = 0) -> tuple[str, str | None]:
    """Save ``model`` (see module doc) as the ``model/`` artifacts of an MLflow run and as its
    logged model, registered as a new version of ``register`` when given; returns the logged
    model's id and the registered version (or None)."""
    from bc.registry import log_logged_model

    uri = resolve_tracking_uri(uri)
    mlflow_client = client(uri)
    config = _config_dict(model_config)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_model(model, config, Path(tmp) / MODEL_ARTIFACT_DIR)
        mlflow_client.log_artifacts(run_id, str(folder), artifact_path=MODEL_ARTIFACT_DIR)
        return log_logged_model(run_id, folder, type(model).__name__, model.preprocess_spec, model.outputs,
                                flatten(config), uri, register=register, step=step)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"optimizer.lr": "0.001", ...}``: a plain nested config as MLflow params (the keys one
    overrides on the command line)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


def build_model(config: Mapping[str, Any]) -> torch.nn.Module:
    """A registered ``bc.models`` network from plain config values (see ``bc.models.build_model``)."""
    from bc.models import build_model as build

    return build(config)


def check_runtime(runtime: Any) -> str:
    """``runtime``: torch | onnx, else a `ConfigError` naming the field."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime: expected one of {', '.join(RUNTIMES)}, got {runtime!r}")
    return runtime


def load_model_folder(folder: Path, source: str | None = None, runtime: str = "torch") -> LoadedModel:
    """Load a model saved by ``save_model``: weights + config (no code is unpickled), or with
    ``runtime="onnx"`` its ``model.onnx`` in ONNX Runtime."""
    import torch

    if check_runtime(runtime) == "onnx":
        if not (folder / ONNX_FILE).is_file():
            raise TrackingError(f"model folder {folder} has no {ONNX_FILE} (saved before ONNX export "
                                f"existed? serve it with runtime=torch)")
        return load_onnx(folder / ONNX_FILE, source=source or str(folder))
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise TrackingError(f"model folder {folder} has no {path.name}")
    config = _read_model_config(config_path)
    try:
        net = build_model(config)
    except BcError as error:
        raise TrackingError(f"{config_path}: {error}") from None
    except Exception as error:  # e.g. width=-1: the class's own checks (torch's RuntimeError)
        raise TrackingError(f"{config_path}: model: {_one_line(error)}") from None
    try:  # weights_only: tensors and plain containers only, no pickled code
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping):
            raise TypeError(f"expected a state dict (name -> tensor), got {type(state).__name__}")
        net.load_state_dict(state)
    except Exception as error:  # truncated, not torch's format, pickled code, another model's
        raise TrackingError(f"{weights_path}: not the weights of this {CONFIG_FILE}'s model "
                            f"({_one_line(error)})") from None
    net.eval()
    return LoadedModel(net=net, spec=net.preprocess_spec, source=source or str(folder),
                       outputs=net.outputs)


MAX_ERROR_DETAIL = 300  # characters of a library's error message quoted in ours


def _one_line(error: BaseException) -> str:
    """A library error as one line: its type when it says nothing, cut at `MAX_ERROR_DETAIL`."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= MAX_ERROR_DETAIL else text[:MAX_ERROR_DETAIL] + "..."


def _read_model_config(path: Path) -> Any:
    """A model.yaml's plain values (safe YAML: no tags that build objects), or `TrackingError`."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise TrackingError(f"{path}: not UTF-8 text ({_one_line(error)})") from None
    except yaml.YAMLError as error:
        raise TrackingError(f"{path}: not a plain YAML model config ({_one_line(error)})") from None
    except OSError as error:
        raise TrackingError(f"{path}: cannot read it ({error.strerror or error})") from None


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


def load_exported(path: str | Path, runtime: str | None = None) -> LoadedModel:
    """Load a TorchScript export (``model.ts``) or an ONNX one (``model.onnx``, served with
    ONNX Runtime) and the preprocessing spec and outputs embedded in it. ``runtime``, when
    given, must match the file."""
    import torch

    from bc.models.base import DEFAULT_OUTPUTS, check_outputs

    path = Path(path)
    if not path.is_file():
        raise TrackingError(f"model file {path} does not exist")
    file_runtime = "onnx" if path.suffix == ".onnx" else "torch"
    if runtime is not None and check_runtime(runtime) != file_runtime:
        raise ConfigError(f"runtime={runtime} does not serve {path.name} (a {file_runtime} model): "
                          f"use runtime={file_runtime}, or the model's "
                          f".{'ts' if runtime == 'torch' else 'onnx'} file")
    if file_runtime == "onnx":
        return load_onnx(path)
    extra = {SPEC_EXTRA_FILE: "", OUTPUTS_EXTRA_FILE: ""}
    try:
        with _quiet_torchscript():
            net = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as error:  # RuntimeError mostly; a damaged archive can raise others
        raise TrackingError(f"{path} is not a TorchScript model exported by bc: "
                            f"{_one_line(error)}") from None
    if not extra[SPEC_EXTRA_FILE]:
        raise TrackingError(f"{path} has no embedded {SPEC_EXTRA_FILE}: not exported by bc")
    try:
        spec = Preprocess.from_dict(json.loads(extra[SPEC_EXTRA_FILE]))
    except (BcError, ValueError, TypeError, AttributeError) as error:
        raise TrackingError(f"{path}: {SPEC_EXTRA_FILE}: {_one_line(error)}") from None
    outputs = DEFAULT_OUTPUTS  # exported before the speed output existed
    if extra[OUTPUTS_EXTRA_FILE]:
        try:
            outputs = check_outputs(json.loads(extra[OUTPUTS_EXTRA_FILE]),
                                    f"{path}: {OUTPUTS_EXTRA_FILE}")
        except (BcError, ValueError) as error:
            raise TrackingError(str(error)) from None
    net.eval()
    return LoadedModel(net=net, spec=spec, source=str(path), outputs=outputs)


RUN_SELECTORS = ("latest", "best")
_RUN_ID = re.compile(r"[0-9a-f]{32}")


def is_run_id(value: Any) -> bool:
    """Whether ``value`` looks like an MLflow run id (32 hex digits)."""
    return isinstance(value, str) and _RUN_ID.fullmatch(value) is not None


def find_run(run: str, experiment: str = "bc", metric: str = "val/loss", mode: str = "min",
             tracking_uri: str | None = None) -> str:
    """The id of the run ``run`` names: a run id, ``latest`` (the newest finished run of
    ``experiment``), ``best`` (its finished run with the best ``metric``, ``mode`` min|max),
    or a run name in ``experiment`` (the newest finished run of that name).

    The one way every entry point picks a run (``run_id=`` / ``experiment_name=`` /
    ``metric=`` / ``mode=`` in their configs); raises ``TrackingError`` naming what is missing.
    """
    from mlflow.exceptions import MlflowException

    run = str(run or "").strip()
    if not run:
        raise TrackingError("run_id: expected a run id, a run name, 'latest' or 'best', got nothing")
    if mode not in ("min", "max"):
        raise TrackingError(f"mode: expected 'min' or 'max', got {mode!r}")
    mlflow_client = client(tracking_uri)
    if is_run_id(run):
        try:
            return mlflow_client.get_run(run).info.run_id
        except MlflowException:
            raise TrackingError(f"run_id: no MLflow run with id {run!r} in "
                                f"{resolve_tracking_uri(tracking_uri)}") from None
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        raise TrackingError(f"experiment_name: no MLflow experiment named {experiment!r} "
                            f"(looking for run {run!r})")
    finished = "attributes.status = 'FINISHED'"
    if run == "best":
        order = "ASC" if mode == "min" else "DESC"
        query = dict(filter_string=f"{finished} and metrics.`{metric}` > -1e300",
                     order_by=[f"metrics.`{metric}` {order}"])
        missing = f"no finished run with metric {metric!r}"
    elif run == "latest":
        query = dict(filter_string=finished, order_by=["attributes.start_time DESC"])
        missing = "no finished run"
    else:
        name = run.replace("\\", "\\\\").replace("'", "\\'")
        query = dict(filter_string=f"{finished} and tags.`mlflow.runName` = '{name}'",
                     order_by=["attributes.start_time DESC"])
        missing = f"no finished run named {run!r} (nor is it a run id, 'latest' or 'best')"
    runs = mlflow_client.search_runs([found.experiment_id], max_results=1, **query)
    if not runs:
        raise TrackingError(f"run_id={run}: experiment {experiment!r} has {missing}")
    return runs[0].info.run_id


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_tags() -> dict[str, str]:
    """Tags naming this process (``pid``, ``host``): what `mark_dead_runs` checks later."""
    return {TAG_PID: str(os.getpid()), TAG_HOST: socket.gethostname()}


def mark_dead_runs(experiment_id: str, tracking_uri: str | None = None) -> list[str]:
    """Mark KILLED the RUNNING runs of ``experiment_id`` whose training process (tags ``pid``
    and ``host``) no longer exists on this host; returns their ids. A run of another host,
    or one without these tags, is left alone: its process cannot be checked from here."""
    mlflow_client = client(tracking_uri)
    host = socket.gethostname().replace("'", "")
    running = mlflow_client.search_runs(
        [experiment_id], f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{host}'")
    dead = [run.info.run_id for run in running
            if str(run.data.tags.get(TAG_PID, "")).isdigit()
            and not process_alive(int(run.data.tags[TAG_PID]))]
    for run_id in dead:
        mlflow_client.set_terminated(run_id, "KILLED")
    return dead
