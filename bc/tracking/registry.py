"""MLflow's model registry for bc: ``models:/`` URIs, registered versions and promotion.

- `model_version` / `run_of`: the registered version a ``models:/<name>@<alias>`` or
  ``models:/<name>/<version>`` URI names, and its source run (the model's files are loaded by
  `bc.inference.store.load_registered`).
- `promote`: set an alias (``champion``) on the version whose run has the best value of a
  metric, e.g. a closed-loop score ``eval/lake/autonomy`` (scripts/promote.py), and record why.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from bc.errors import ConfigError
from bc import tracking

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.entities.model_registry import ModelVersion


MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>[0-9]+))")
URI_FORMS = "models:/<name>@<alias> or models:/<name>/<version>"


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

    version = model_version(model_uri, tracking_uri)
    if not version.run_id:
        raise tracking.TrackingError(f"model_uri={model_uri}: version {version.version} of "
                                     f"{version.name!r} has no source run")
    return version.run_id


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
