"""MLflow's model entities for bc: each training run's logged model, the model registry and
``models:/`` URIs.

- `log_logged_model`: the model folder `bc.tracking.save_model` wrote becomes an MLflow 3
  *logged model* of the run (``models:/<model id>``), a pyfunc built from code
  (bc/mlflow_model.py: no pickle), registered as a new version of ``register`` when given
  (``train.py register=<name>``).
- `load_registered`: ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` to a
  `bc.tracking.LoadedModel`, by downloading the version's files and rebuilding the network as
  for a run (``bc.tracking.load_model_folder``): the model's code file is never run.
- `promote`: set an alias (``champion``) on the version whose run has the best value of a
  metric, e.g. a closed-loop score ``eval/lake/autonomy`` (scripts/promote.py).
"""

from __future__ import annotations

import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from bc.errors import ConfigError
from bc.scratch import scratch_folder

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.entities.model_registry import ModelVersion

    from bc.preprocess import Preprocess
    from bc.tracking import LoadedModel

CODE_FILE = Path(__file__).with_name("mlflow_model.py")
PYFUNC_ARTIFACTS = "artifacts"  # where a pyfunc keeps its `artifacts` inside the model folder
MODEL_TYPE = "bc-steering"
# What bc/mlflow_model.py imports to predict (bc itself must be importable: `pip install -e .`).
PIP_PACKAGES = ("mlflow", "torch", "numpy", "pandas", "opencv-python-headless", "hydra-core",
                "omegaconf", "pyyaml", "onnxruntime")
MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>[0-9]+))")
URI_FORMS = "models:/<name>@<alias> or models:/<name>/<version>"


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

    from bc.mlflow_model import SPEED_COLUMN, STEERING_COLUMN

    width, height = spec.frame_size
    columns = [STEERING_COLUMN] + ([SPEED_COLUMN] if "speed" in outputs else [])
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, height, width, 3))]),
                          outputs=Schema([ColSpec("double", column) for column in columns]))


@contextmanager
def fluent_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent functions (model logging, registration) on ``uri`` for a while; the
    ``MLFLOW_TRACKING_URI`` variable (which MLflow unsets when it restores) comes back as it was."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


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

    from bc import tracking
    from bc.mlflow_model import MODEL_ARTIFACT

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


def logged_model_of(client: Any, run_id: str) -> str | None:
    """The id of the run's latest logged model (None if it has none): evaluation metrics of
    the run are linked to it, so the model's page and its registered versions show them."""
    outputs = client.get_run(run_id).outputs
    models = sorted(outputs.model_outputs if outputs else [], key=lambda output: output.step)
    return models[-1].model_id if models else None


def parse_model_uri(text: Any) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of a registry URI; a `ConfigError` naming ``model_uri`` else."""
    match = MODEL_URI.fullmatch(str(text).strip()) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(f"model_uri: expected {URI_FORMS}, got {text!r}")
    return match["name"], match["alias"], match["version"]


def model_version(model_uri: str, tracking_uri: str | None = None) -> ModelVersion:
    """The registered version ``model_uri`` names; `TrackingError` naming what is missing."""
    from mlflow.exceptions import MlflowException

    from bc import tracking

    name, alias, version = parse_model_uri(model_uri)
    client = tracking.client(tracking_uri)
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException:
        names = [model.name for model in client.search_registered_models(max_results=20)]
        where = f"registered model {name!r}" if name in names else \
            f"registry (registered models: {', '.join(names) or 'none'})"
        raise tracking.TrackingError(f"model_uri={model_uri}: no such version in the {where} of "
                                     f"{tracking.resolve_tracking_uri(tracking_uri)}") from None


def run_of(model_uri: str, tracking_uri: str | None = None) -> str:
    """The id of the training run a registered version came from (evaluate.py logs there)."""
    from bc import tracking

    version = model_version(model_uri, tracking_uri)
    if not version.run_id:
        raise tracking.TrackingError(f"model_uri={model_uri}: version {version.version} of "
                                     f"{version.name!r} has no source run")
    return version.run_id


def load_registered(model_uri: str, tracking_uri: str | None = None, runtime: str = "torch") -> LoadedModel:
    """The network of a registered version with its preprocessing (module doc): its files are
    downloaded and rebuilt like a run's model (registered classes, ``weights_only``)."""
    import mlflow

    from bc import tracking
    from bc.mlflow_model import MODEL_ARTIFACT

    version = model_version(model_uri, tracking_uri)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    location = tracking.client(uri).get_model_version_download_uri(version.name, version.version)
    source = f"models:/{version.name}/{version.version}"
    with scratch_folder("bc-model-") as tmp:  # removed even after a kill (bc.scratch)
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{location.rstrip('/')}/{PYFUNC_ARTIFACTS}/{MODEL_ARTIFACT}",
                tracking_uri=uri, dst_path=tmp)
        except Exception as error:  # MlflowException or OSError: the files are not there
            raise tracking.TrackingError(f"model_uri={model_uri}: {source} has no bc model files "
                                         f"({error})") from None
        try:
            return tracking.load_model_folder(Path(local), source=f"{model_uri} ({source})", runtime=runtime)
        except tracking.TrackingError as error:  # name the version, not the temporary folder
            raise tracking.TrackingError(str(error).replace(str(local), f"{model_uri} ({source})")) from None


DESCRIPTION_TAG = "mlflow.note.content"  # what the UI shows as a logged model's Description
TIE_BREAKS = "newest, oldest or <metric>:min|max (e.g. val/loss_best:min)"
REASON_TAGS = ("promoted_as", "promotion.metric", "promotion.value", "promotion.runner_up",
               "promotion.tie_break", "promotion.experiment")


@dataclass(frozen=True)
class Promotion:
    """Why ``alias`` points at ``version``: what `promote` wrote on it as tags and description."""

    version: ModelVersion
    value: float
    runner_up: tuple[str, float] | None  # (version, value) of the second best, if any
    tie_break: str | None  # the rule that decided between equal values (None: no tie)
    reason: str


def _logged_model_id(version: ModelVersion | None) -> str | None:
    """The logged model a registered version was made from (its ``models:/<id>`` source)."""
    source = str(getattr(version, "source", "") or "")
    return source[len("models:/"):] if source.startswith("models:/m-") else None


def _parse_tie_break(tie_break: str | None) -> tuple[str, str | None, str]:
    """("newest"|"oldest"|"metric", metric or None, mode) of a tie_break setting."""
    text = str(tie_break).strip()
    if text in ("newest", "oldest"):
        return text, None, ""
    metric, _, mode = text.rpartition(":")
    if metric and mode in ("min", "max"):
        return "metric", metric, mode
    raise ConfigError(f"tie_break: expected {TIE_BREAKS} (or null: refuse to choose), got {tie_break!r}")


def promote(name: str, alias: str, experiment: str, metric: str, mode: str = "max",
            tracking_uri: str | None = None, tie_break: str | None = None) -> Promotion:
    """Set ``alias`` on the version of registered model ``name`` whose training run, in
    ``experiment``, has the best ``metric`` (``mode`` max|min), and write why on that version
    (tags ``promoted_as``, ``promotion.*`` and its description, which its logged model's page
    shows too; the version that held the alias before loses those tags). Equal best values
    are a `TrackingError` unless ``tie_break``
    names the rule: ``newest``/``oldest`` version, or a second metric ``<metric>:min|max``."""
    from bc import tracking

    if mode not in ("min", "max"):
        raise ConfigError(f"mode: expected 'min' or 'max', got {mode!r}")
    if not isinstance(alias, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", alias) or alias.isdigit():
        raise ConfigError(f"alias: expected a name of letters, digits, '_' or '-' (not a number), got {alias!r}")
    rule = _parse_tie_break(tie_break) if tie_break is not None else None
    client = tracking.client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise tracking.TrackingError(f"experiment_name: no MLflow experiment named {experiment!r}")
    escaped = str(name).replace("'", "\\'")
    versions = client.search_model_versions(f"name = '{escaped}'")
    if not versions:
        raise tracking.TrackingError(f"name: no registered model {name!r} (train with register={name})")
    scored = []  # (value, version number, version, run metrics)
    for version in versions:
        if not version.run_id:
            continue
        run = client.get_run(version.run_id)
        if run.info.experiment_id == found.experiment_id and metric in run.data.metrics:
            scored.append((run.data.metrics[metric], int(version.version), version, run.data.metrics))
    if not scored:
        raise tracking.TrackingError(f"metric: no version of {name!r} comes from a run of experiment "
                                     f"{experiment!r} with metric {metric!r} (evaluate.py logs eval/<track>/...)")
    sign = 1 if mode == "max" else -1
    scored.sort(key=lambda item: (-sign * item[0], -item[1]))  # best first, then newest
    best_value = scored[0][0]
    tied = [item for item in scored if item[0] == best_value]
    used_rule = None
    if len(tied) > 1:
        numbers = ", ".join(str(item[1]) for item in sorted(tied, key=lambda item: item[1]))
        if rule is None:
            raise tracking.TrackingError(
                f"tie: versions {numbers} of {name!r} all have {metric} = {best_value:g}; "
                f"say how to choose with tie_break={{{TIE_BREAKS}}}")
        kind, second, second_mode = rule
        if kind == "newest":
            tied.sort(key=lambda item: -item[1])
        elif kind == "oldest":
            tied.sort(key=lambda item: item[1])
        else:
            missing = [str(item[1]) for item in tied if second not in item[3]]
            if missing:
                raise tracking.TrackingError(f"tie_break: versions {', '.join(missing)} have no "
                                             f"metric {second!r} to break the tie on {metric}")
            second_sign = 1 if second_mode == "max" else -1
            tied.sort(key=lambda item: (-second_sign * item[3][second], -item[1]))
            if tied[0][3][second] == tied[1][3][second]:
                raise tracking.TrackingError(f"tie_break: versions {numbers} tie on {second} too")
        used_rule = str(tie_break)
        scored = tied + [item for item in scored if item not in tied]
    value, _, best, _ = scored[0]
    runner_up = (str(scored[1][1]), scored[1][0]) if len(scored) > 1 else None
    reason = (f"{alias}: the best {metric} ({mode}) of the {len(scored)} version(s) of {name!r} "
              f"from experiment {experiment!r}: {value:g} (run {best.run_id}). "
              + (f"Runner-up: version {runner_up[0]} with {runner_up[1]:g}. " if runner_up
                 else "No other version was scored. ")
              + (f"Tie on {value:g} broken by tie_break={used_rule}." if used_rule
                 else "No tie."))
    try:
        previous = client.get_model_version_by_alias(name, alias)
    except Exception:  # MlflowException: no version holds the alias yet
        previous = None
    client.set_registered_model_alias(name, alias, best.version)
    if previous is not None and str(previous.version) != str(best.version):
        for key in REASON_TAGS:
            if key in (previous.tags or {}):
                client.delete_model_version_tag(name, previous.version, key)
    tags = {"promoted_as": alias, "promotion.metric": f"{metric} ({mode})",
            "promotion.value": f"{value:g}", "promotion.experiment": experiment,
            "promotion.runner_up": f"version {runner_up[0]}: {runner_up[1]:g}" if runner_up else "none",
            "promotion.tie_break": used_rule or "no tie"}
    for key, text in tags.items():
        client.set_model_version_tag(name, best.version, key, text)
    client.update_model_version(name, best.version, description=reason)
    for version, text in ((previous, None), (best, reason)):  # the logged models' pages say it too
        model_id = _logged_model_id(version)
        if model_id is None or (version is previous and str(previous.version) == str(best.version)):
            continue
        if text is None:
            client.delete_logged_model_tag(model_id, DESCRIPTION_TAG)
        else:
            client.set_logged_model_tags(model_id, {DESCRIPTION_TAG: text})
    return Promotion(client.get_model_version(name, best.version), value, runner_up, used_rule, reason)
