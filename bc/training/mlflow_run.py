"""The MLflow run of one training job: Lightning's MLflow logger that is also a callback.

`MlflowRun` logs metrics like `MLFlowLogger` and keeps the rest of the run, so `bc.training.train`
stays a recipe (conf/logger/mlflow.yaml):

- `start(cfg)`: first marks KILLED the experiment's RUNNING runs whose process died
  (`tracking.mark_dead_runs`); then opens the run, named and described by the overrides that
  differ from the defaults, with tags (model, output dir, Hydra sweep / job / overrides, this
  process's `pid` and `host`) and logs the flattened resolved config as params (its paths of
  this machine and run as `config.*` tags instead), `config.yaml` and Hydra's own files
  (`hydra/`);
- at fit start: the datamodule's row / sample counts (`data_stats.*` params) and its
  recordings as MLflow dataset inputs (`bc.tracking.datasets`: source folder, content digest,
  row counts, steering statistics);
- after every checkpoint save: the latest checkpoint (`checkpoints/last.ckpt`), so even a
  SIGKILLed run can be continued (`resume_point`, `train.py resume=<run id>`);
- at fit end: the best checkpoint, `val/loss_best`, and the model rebuilt from the best
  checkpoint (`model/` and the run's MLflow logged model, registered as a new version of
  `register` when the config sets it: see `bc.tracking`, `bc.tracking.registry`); on Ctrl-C the same
  with what exists, then KILLED;
  on an error FAILED; always the job's log (`logs/`).

A run reopened with `reopen(run_id)` is RUNNING again under this process and continues its
metrics at the checkpoint's step; its params and config are not logged again.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback as HydraCallback
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from bc import tracking
from bc.inference import store
from bc.errors import ConfigError
from bc.tracking.datasets import log_recordings
from bc.training.instantiators import check_stored_config

log = logging.getLogger(__name__)

CONFIG_ARTIFACT = "config.yaml"
CHECKPOINT_ARTIFACT_DIR = "checkpoints"
HYDRA_ARTIFACT_DIR = "hydra"  # Hydra's own record of the job: config, overrides, hydra settings
LOG_ARTIFACT_DIR = "logs"
BEST_SUFFIX = "_best"  # e.g. val/loss_best: the logged model's (best checkpoint's) score
TAG_SWEEP, TAG_JOB, TAG_OVERRIDES = "sweep", "job", "overrides"
TAG_OUTPUT_DIR, TAG_MODEL, TAG_WEIGHTS = "output_dir", "model", "model_weights"
TAG_LAST_CHECKPOINT = "last_checkpoint"  # local path of the latest checkpoint (resume looks there first)
DATA_STATS_PREFIX = "data_stats."  # row / sample counts the datamodule reports after setup
NET_PREFIX = "net."  # SteeringModule keeps the network as `self.net`
PARAMS_PER_BATCH = 100  # MLflow accepts at most 100 params per log_batch call
# Config keys (last part) whose values are paths of this machine or run: tags, not params.
PATH_KEYS = frozenset({"output_dir", "tracking_uri", "cache_dir", "dirpath", "folder", "paths", "resume"})
CONFIG_TAG_PREFIX = "config."
NOT_RECORDED = frozenset({"experiment_name", "run_name", "register", "optimized_metric"})
# Settings (last part of the key) that change how a run runs, not what it learns: not in its name.
NOT_IN_NAME = frozenset({"num_workers", "refresh_rate", "pin_memory", "augment_on", "cache",
                         "verify_images", "on_bad_row", "progress", "log_every_n_steps"})
SWEEP_FUNCTION = re.compile(r"\s*(range|choice|interval|glob|tag|sort|shuffle)\(")
RUN_NAME_CHARS = 200  # MLflow allows 250
TAG_DESCRIPTION = "mlflow.note.content"  # the run page's Description


def _limit(name: str) -> int:
    """One of MLflow's value-length limits (6000 in MLflow 3)."""
    from mlflow.utils import validation

    return int(getattr(validation, name, 6000))


def flatten_config(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as `{"optimizer.lr": "0.001", ...}` (the keys you override on the CLI)."""
    return tracking.flatten(OmegaConf.to_container(cfg, resolve=True))


def hydra_context() -> dict[str, Any]:
    """Tags, folders, overrides and the model choice of this Hydra job (empty without Hydra)."""
    if not HydraConfig.initialized():
        return {"tags": {}, "overrides": []}
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    context: dict[str, Any] = {
        "tags": {TAG_OVERRIDES: " ".join(hydra_cfg.overrides.task)[:_limit("MAX_TAG_VAL_LENGTH")]},
        "overrides": list(hydra_cfg.overrides.task),
        "hydra_dir": output_dir / hydra_cfg.output_subdir if hydra_cfg.output_subdir else None,
        "log_file": output_dir / f"{hydra_cfg.job.name}.log",
        "model_choice": hydra_cfg.runtime.choices.get("model"),
    }
    if hydra_cfg.mode == RunMode.MULTIRUN:
        context["tags"][TAG_SWEEP] = str(Path(hydra_cfg.sweep.dir).resolve())
        context["tags"][TAG_JOB] = str(hydra_cfg.job.num)
        context["swept"] = swept_keys(OmegaConf.select(hydra_cfg, "sweeper.params") or {}, sys.argv[1:])
    return context


def swept_keys(sweeper_params: Any, arguments: list[str]) -> set[str]:
    """The keys a sweep varies: its sweeper's search space (``hydra.sweeper.params``) and the
    command-line overrides with several values (``optimizer.lr=0.001,0.003``, ``range(...)``,
    ``choice(...)``, ...; a list value ``[a,b]`` is one value)."""
    keys = {str(key) for key in sweeper_params}
    for argument in arguments:
        key, sep, value = argument.partition("=")
        if sep and not key.startswith("-") and (SWEEP_FUNCTION.match(value)
                                                or "," in re.sub(r"\[[^\]]*\]", "", value)):
            keys.add(key.lstrip("+~"))
    return keys


def is_path_key(key: str) -> bool:
    """Whether config key ``key`` holds a machine- or run-specific path (logged as a tag)."""
    return key.rsplit(".", 1)[-1] in PATH_KEYS


def split_config(flat: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(params, tags) of a flattened config: paths become ``config.<key>`` tags, so the
    compare view's params are the settings that tell models apart."""
    params = {key: value for key, value in flat.items() if not is_path_key(key)}
    tags = {CONFIG_TAG_PREFIX + key: value for key, value in flat.items()
            if is_path_key(key) and value != "null"}
    return params, tags


def differing_overrides(overrides: list[str]) -> list[str]:
    """The command-line overrides that choose what is trained (``model=small``,
    ``optimizer.lr=0.003``): not paths, not where the run is recorded."""
    kept = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if "=" in override and not is_path_key(key) and key not in NOT_RECORDED \
                and not key.startswith("hydra."):
            kept.append(override.lstrip("+"))
    return kept


def default_run_name(cfg: DictConfig, context: dict[str, Any]) -> str:
    """`<model>[ <key>=<value>...]-<date>-<time>[-job<n>]`: the overrides that differ from the
    defaults (in a sweep only the swept ones; keys shortened to their last part; no paths,
    no settings that only change how it runs), so runs tell themselves apart in the run list."""
    model = context.get("model_choice") or str(cfg.model._target_).rsplit(".", 1)[-1].lower()
    words = [model]
    overrides = differing_overrides(context.get("overrides", []))
    swept = [item for item in overrides if item.split("=", 1)[0] in context.get("swept", ())]
    for override in swept or overrides:
        key, value = override.split("=", 1)
        if key != "model" and key.rsplit(".", 1)[-1] not in NOT_IN_NAME:
            words.append(f"{key.rsplit('.', 1)[-1]}={value}")
    name = " ".join(words)[:RUN_NAME_CHARS] + f"-{datetime.now():%Y%m%d-%H%M%S}"
    job = context["tags"].get(TAG_JOB)
    return f"{name}-job{job}" if job is not None else name


def run_description(context: dict[str, Any]) -> str:
    """The run page's description (Markdown): what differs from the defaults, the sweep job."""
    overrides = differing_overrides(context.get("overrides", []))
    lines = ["Overrides of the defaults: " + (", ".join(f"`{item}`" for item in overrides)
                                              if overrides else "none (the defaults of conf/train.yaml)")]
    if TAG_JOB in context["tags"]:
        lines.append(f"Job {context['tags'][TAG_JOB]} of the sweep in `{context['tags'][TAG_SWEEP]}`.")
    lines.append("Paths of this machine and run (output folder, checkpoints, data) are the "
                 f"`{CONFIG_TAG_PREFIX}*` tags; the full config is `{CONFIG_ARTIFACT}`.")
    return "\n\n".join(lines)


def load_net_weights(net: torch.nn.Module, checkpoint_path: str | Path) -> None:
    """Load a SteeringModule checkpoint's network weights into `net`."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    state = {key[len(NET_PREFIX):]: value for key, value in checkpoint["state_dict"].items()
             if key.startswith(NET_PREFIX)}
    if not state:
        raise ValueError(f"{checkpoint_path}: no '{NET_PREFIX}*' weights; not a bc.training.module checkpoint")
    net.load_state_dict(state)


def best_checkpoint(trainer: Trainer) -> tuple[str, float | None, str | None]:
    """(path, score, monitored metric) of the checkpoint to log: the best one if a
    ModelCheckpoint monitors a metric, else the latest one (monitor None); ("", None, None) if none."""
    saved = [callback for callback in trainer.checkpoint_callbacks
             if isinstance(callback, ModelCheckpoint) and callback.best_model_path
             and Path(callback.best_model_path).is_file()]
    saved.sort(key=lambda callback: callback.monitor is None)  # monitored first
    if not saved:
        return "", None, None
    callback = saved[0]
    score = callback.best_model_score
    return callback.best_model_path, (float(score) if score is not None else None), callback.monitor


def ui_hint(uri: str) -> str:
    """The `mlflow ui` command for this store, short when it is the default one."""
    if uri == tracking.resolve_tracking_uri(tracking.DEFAULT_TRACKING_URI):
        uri = tracking.DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri}"
    return f"open {uri} (the MLflow tracking server)"


def load_stored_config(path: Path, source: str) -> DictConfig:
    """A config read back from a store (`source` names it in errors): a YAML mapping whose every
    `_target_` is one bc's config groups build (`bc.training.instantiators.check_stored_config`), so
    building the job from it runs no code the store holds."""
    import yaml


    try:
        config = OmegaConf.load(path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError) as error:
        message = " ".join(str(error).split())
        raise ConfigError(f"{source}: not a readable YAML config ({message})") from None
    if not isinstance(config, DictConfig):
        raise ConfigError(f"{source}: expected a mapping of config keys, got a {type(config).__name__}")
    check_stored_config(config, source)
    return config


def resume_point(run_id: str, uri: str, download_dir: Path) -> tuple[DictConfig, str]:
    """The logged config of run `run_id` and its latest checkpoint: the local file if it is
    still there, else the run's copy downloaded into `download_dir`. Refuses a finished run
    and one whose process still runs (dead ones are first marked KILLED)."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    client = tracking.client(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"resume: no MLflow run with id {run_id!r} in {uri}") from None
    tracking.mark_dead_runs(run.info.experiment_id, uri)
    run = client.get_run(run_id)
    tags = run.data.tags
    if run.info.status == "FINISHED":
        raise ConfigError(f"resume: run {run_id} is FINISHED; nothing to resume")
    if run.info.status == "RUNNING":
        raise ConfigError(f"resume: run {run_id} is RUNNING (pid {tags.get(tracking.TAG_PID, '?')} on host "
                          f"{tags.get(tracking.TAG_HOST, '?')}); stop that process first")
    local = tags.get(TAG_LAST_CHECKPOINT)
    if not local:
        raise ConfigError(f"resume: run {run_id} logged no checkpoint (it ended before its first epoch, "
                          f"or it ran without a ModelCheckpoint)")
    download_dir.mkdir(parents=True, exist_ok=True)

    def download(artifact: str, missing: str) -> str:
        try:
            return download_artifacts(run_id=run_id, artifact_path=artifact, tracking_uri=uri,
                                      dst_path=str(download_dir))
        except (MlflowException, OSError) as error:
            raise ConfigError(f"resume: run {run_id} {missing} ({error})") from None

    config = load_stored_config(Path(download(CONFIG_ARTIFACT, f"has no {CONFIG_ARTIFACT}")),
                                f"resume: run {run_id}'s {CONFIG_ARTIFACT}")
    if Path(local).is_file():
        return config, local
    artifact = f"{CHECKPOINT_ARTIFACT_DIR}/{Path(local).name}"
    return config, download(artifact, f"has its checkpoint neither at {local} nor as {artifact}")


class MlflowRun(MLFlowLogger, Callback):
    """Lightning's MLflow logger that also records and closes its run (see the module doc).

    `bc.training.train` passes it to the Trainer as a logger and as a callback."""

    def __init__(self, experiment_name: str = "bc", run_name: str | None = None,
                 tracking_uri: str | None = None, **kwargs: Any) -> None:
        tracking_uri = tracking.resolve_tracking_uri(tracking_uri)
        tracking.prepare_store(tracking_uri)  # before Lightning's logger opens the store
        super().__init__(experiment_name=experiment_name, run_name=run_name,
                         tracking_uri=tracking_uri, **kwargs)
        self.config: DictConfig | None = None
        self.reopened = False
        self.interrupted = False
        self._context = hydra_context()
        self._logged_checkpoints: dict[str, float] = {}  # local path -> mtime when logged
        self._closed = False

    def reopen(self, run_id: str) -> None:
        """Continue MLflow run `run_id` instead of starting a new one (`train.py resume=<run id>`)."""
        self._run_id = run_id
        self.reopened = True

    @rank_zero_only
    def start(self, cfg: DictConfig) -> None:
        """Open the run and record the job (module doc); nothing before this touches MLflow's runs."""
        self.config = cfg
        client = tracking.client(self._tracking_uri)
        if self.reopened:
            self._experiment_id = client.get_run(self._run_id).info.experiment_id
        else:
            self._experiment_id = tracking.get_or_create_experiment(self._experiment_name, self._tracking_uri)
        for run_id in tracking.mark_dead_runs(self._experiment_id, self._tracking_uri):
            log.warning("MLflow run %s was RUNNING but its process is gone: marked KILLED", run_id)
        process = tracking.process_tags()
        if self.reopened:
            client.update_run(self.run_id, status="RUNNING")
            for key, value in process.items():
                client.set_tag(self.run_id, key, value)
            log.info("MLflow run %s reopened (resume)", self.run_id)
            return
        self._run_name = self._run_name or default_run_name(cfg, self._context)
        params, path_tags = split_config(flatten_config(cfg))
        self.tags = {**(self.tags or {}), **self._context["tags"], **process, **path_tags,
                     TAG_MODEL: str(cfg.model._target_), TAG_OUTPUT_DIR: str(cfg.output_dir),
                     TAG_DESCRIPTION: run_description(self._context)}
        self._log_params(params)
        self.experiment.log_text(self.run_id, OmegaConf.to_yaml(cfg, resolve=True), CONFIG_ARTIFACT)
        hydra_dir = self._context.get("hydra_dir")
        if hydra_dir is not None and hydra_dir.is_dir():
            self.experiment.log_artifacts(self.run_id, str(hydra_dir), HYDRA_ARTIFACT_DIR)
        log.info("MLflow run %s in experiment %r (%s)", self.run_id, self._experiment_name, self._tracking_uri)

    def _log_params(self, params: dict[str, str]) -> None:
        """Params in MLflow-sized batches, each value cut to MLflow's length limit."""
        from mlflow.entities import Param

        limit = _limit("MAX_PARAM_VAL_LENGTH")
        items = [Param(key, value[:limit]) for key, value in params.items()]
        for first in range(0, len(items), PARAMS_PER_BATCH):
            self.experiment.log_batch(self.run_id, params=items[first:first + PARAMS_PER_BATCH])

    # -- callback hooks ---------------------------------------------------------------------

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        stats = getattr(trainer.datamodule, "stats", None)
        if trainer.is_global_zero and not self.reopened and isinstance(stats, dict) and stats:
            self._log_params({f"{DATA_STATS_PREFIX}{key}": str(value) for key, value in stats.items()})
        table = getattr(trainer.datamodule, "table", None)
        if trainer.is_global_zero and not self.reopened and table is not None and len(table):

            log_recordings(self.experiment, self.run_id, table)

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        """Log the latest checkpoint (a callback's `last.ckpt`, or the file of one that
        monitors nothing) whenever it changed, and tag where it lives locally."""
        latest = [checkpoint_callback.last_model_path]
        if checkpoint_callback.monitor is None:
            latest.append(checkpoint_callback.best_model_path)
        for path in filter(None, latest):
            if not os.path.isfile(path) or self._logged_checkpoints.get(path) == os.path.getmtime(path):
                continue
            if path not in self._logged_checkpoints:  # first the tag: the local file exists already
                self.experiment.set_tag(self.run_id, TAG_LAST_CHECKPOINT, str(Path(path).resolve()))
            self.experiment.log_artifact(self.run_id, path, CHECKPOINT_ARTIFACT_DIR)
            self._logged_checkpoints[path] = os.path.getmtime(path)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            self._log_results(trainer, pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Ctrl-C (or SIGTERM) keeps what exists (best checkpoint, model) and closes the run KILLED."""
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)) or not trainer.is_global_zero:
            return
        self.interrupted = True
        try:
            if trainer.global_step > 0:
                self._log_results(trainer, pl_module)
        except Exception as error:  # e.g. a second Ctrl-C's half-written file: keep the KILLED mark
            log.warning("could not log the interrupted run's model: %s", error)

    def _log_results(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Best checkpoint + the model rebuilt from it (else the current weights)."""
        net = pl_module.net
        checkpoint, score, monitor = best_checkpoint(trainer)
        weights = "last (no checkpoint monitors a metric)"
        if monitor:
            try:
                load_net_weights(net, checkpoint)
                weights = f"best {monitor}: {Path(checkpoint).name}"
            except Exception as error:  # e.g. Ctrl-C while it was being written
                log.warning("best checkpoint %s is unreadable (%s); logging the last weights", checkpoint, error)
                checkpoint, weights = "", f"last (best checkpoint unreadable: {error})"
        if checkpoint:
            self.experiment.log_artifact(self.run_id, checkpoint, CHECKPOINT_ARTIFACT_DIR)
            if monitor and score is not None and math.isfinite(score):
                self.experiment.log_metric(self.run_id, monitor + BEST_SUFFIX, score, step=trainer.global_step)
        self.experiment.set_tag(self.run_id, TAG_WEIGHTS, weights[:_limit("MAX_TAG_VAL_LENGTH")])
        register = self.config.get("register") or None
        model_id, version = store.log_model(self.run_id, net, self.config.model, self._tracking_uri,
                                               register=register, step=trainer.global_step)
        log.info("MLflow logged model models:/%s%s", model_id,
                 f", registered as models:/{register}/{version}" if version else "")

    # -- logger hook: the run's end ------------------------------------------------------------

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """Log the job's log and close the run: FINISHED, FAILED, or KILLED after Ctrl-C."""
        if not self._initialized or self._closed:
            return
        self._closed = True
        log_file = self._context.get("log_file")
        if log_file is not None and log_file.is_file():
            folder = LOG_ARTIFACT_DIR + (f"/resumed-{datetime.now():%Y%m%d-%H%M%S}" if self.reopened else "")
            self.experiment.log_artifact(self.run_id, str(log_file), folder)
        final = "KILLED" if self.interrupted else {"success": "FINISHED", "finished": "FINISHED"}.get(status, "FAILED")
        self.experiment.set_terminated(self.run_id, final)
        hint = ui_hint(self._tracking_uri)
        if final == "FINISHED":
            print(f"MLflow run {self.run_id} (experiment {self._experiment_name!r}) finished.\n"
                  f"Browse runs: {hint}", flush=True)
        elif final == "KILLED":
            print(f"Training interrupted: MLflow run {self.run_id} marked KILLED with what was "
                  f"logged so far.\nContinue it: train.py resume={self.run_id}\n{hint}", flush=True)


class PrepareStore(HydraCallback):
    """Hydra callback (conf/train.yaml): before a sweep launches its jobs, create the MLflow
    store and experiment once, so jobs started at the same moment (hydra/launcher=joblib,
    submitit, Optuna with n_jobs > 1) do not race to create the same database tables; and the
    folder of a relative SQLite Optuna study."""

    def on_multirun_start(self, config: "DictConfig", **kwargs: Any) -> None:  # noqa: F821
        tracking.get_or_create_experiment(str(config.experiment_name), config.get("tracking_uri"))
        study = config.hydra.sweeper.get("storage")
        if isinstance(study, str):  # an Optuna study in sqlite:///mlruns/optuna.db: its folder
            tracking.resolve_tracking_uri(study)
