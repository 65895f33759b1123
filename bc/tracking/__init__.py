"""MLflow tracking: the store (a URI, created once under a lock), experiments, finding runs,
and the runs of dead processes.

Every command that picks a run does it with `find_run` (``run_id=<id>|<name>|latest|best``,
``experiment_name=``, ``metric=``, ``mode=``: the ``run`` config group). Training tags each run
with the ``pid`` and ``host`` of its process, so a run whose process died without closing it
(SIGKILL, power loss) is found and marked KILLED (``mark_dead_runs``). What a model is in a
run lives in `bc.inference` (`bc.inference.artifact`, `bc.inference.store`); the registry in
`bc.tracking.registry`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping

from bc.errors import BcError

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
TAG_PID, TAG_HOST = "pid", "host"  # the training process that owns a RUNNING run

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class TrackingError(BcError, RuntimeError):
    """A run, model or tracking server could not be found or used; the message says which."""


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
        fresh = not db.exists() or db.stat().st_size == 0
        copied = fresh and copy_empty_store(db)
        try:
            _get_store(uri)  # builds (creating the tables if needed) and caches MLflow's store
        except Exception as error:  # noqa: BLE001 - MLflow raises several kinds for a bad store
            raise TrackingError(f"tracking_uri: the MLflow store {db} cannot be opened: "
                                f"{str(error).splitlines()[0]}") from error
        if fresh and not copied:
            save_empty_store(db)


def empty_store_template() -> Path:
    """Where an empty, fully migrated SQLite store of this MLflow version is kept
    (``$BC_CACHE_DIR``, else ``~/.cache/bc``): MLflow builds a new store by running every
    schema migration since its first release, seconds of work that a copy replaces."""
    import mlflow

    folder = os.environ.get("BC_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME")
                                                    or Path.home() / ".cache") / "bc"
    return Path(folder) / f"mlflow-{mlflow.__version__}-empty-store.db"


def copy_empty_store(db: Path) -> bool:
    """Put a copy of the empty store template at ``db`` (a new store); False when there is none
    yet. MLflow then adds the Default experiment, with its artifacts beside ``db``."""
    import shutil

    template = empty_store_template()
    if not template.is_file():
        return False
    partial = db.with_name(f"{db.name}.{os.getpid()}.new")
    try:
        shutil.copyfile(template, partial)
        os.replace(partial, db)
    except OSError:
        partial.unlink(missing_ok=True)
        return False
    return True


def save_empty_store(db: Path) -> None:
    """Keep a just-created store, emptied of its experiments, as the template of the next new
    ones (best effort: a cache that cannot be written is left out)."""
    import sqlite3

    template = empty_store_template()
    partial = template.with_name(f"{template.name}.{os.getpid()}.new")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        source, copy = sqlite3.connect(db), sqlite3.connect(partial)
        try:
            source.backup(copy)
            if copy.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0:
                copy.execute("DELETE FROM experiment_tags")
                copy.execute("DELETE FROM experiments")
                copy.commit()
                os.replace(partial, template)
        finally:
            source.close()
            copy.close()
    except (OSError, sqlite3.Error):
        pass
    finally:
        partial.unlink(missing_ok=True)


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
