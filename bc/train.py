"""Train a steering network from a composed Hydra config and record everything in one MLflow run.

`train(cfg)` builds the network, data, LightningModule, logger, callbacks and Trainer with
`hydra.utils.instantiate`, fits, and leaves an MLflow run holding: the resolved config (flattened
params + `config.yaml`), per-epoch metrics, the best checkpoint (`checkpoints/`), the model
rebuilt from the best checkpoint (`model/`, loadable by run id with `bc.tracking.load_model`),
and the job's log. A failed run is marked FAILED; Ctrl-C marks it KILLED after logging what exists.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import warnings
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from bc import tracking
from bc.errors import ConfigError
from bc.losses import LOSSES

if TYPE_CHECKING:  # Lightning takes seconds to import: only after the config is checked
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import Logger, MLFlowLogger

log = logging.getLogger(__name__)

# Lightning 2.6 builds torch's deprecated LeafSpec on every batch transfer; harmless, silence exactly it.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                        category=FutureWarning)

CONFIG_ARTIFACT = "config.yaml"
CHECKPOINT_ARTIFACT_DIR = "checkpoints"
HYDRA_ARTIFACT_DIR = "hydra"  # Hydra's own record of the job: config, overrides, hydra settings
LOG_ARTIFACT_DIR = "logs"
BEST_SUFFIX = "_best"  # e.g. val/loss_best: the logged model's (best checkpoint's) score
TAG_SWEEP, TAG_JOB, TAG_OVERRIDES = "sweep", "job", "overrides"
TAG_OUTPUT_DIR, TAG_MODEL, TAG_WEIGHTS = "output_dir", "model", "model_weights"
INTERRUPTED_EXIT_CODE = 130  # the shell's convention for "terminated by Ctrl-C"
DATA_STATS_PREFIX = "data_stats."  # row / sample counts the datamodule reports after setup
NET_PREFIX = "net."  # SteeringModule keeps the network as `self.net`
FALLBACK_PARAM_LENGTH = 6000  # MLflow 3's limit, if its constant moves
PARAMS_PER_BATCH = 100  # MLflow accepts at most 100 params per log_batch call


# --------------------------------------------------------------------------------------------
# Config checks: fail before anything is built, naming the field.


def _number(cfg: DictConfig, key: str) -> float | None:
    value = OmegaConf.select(cfg, key, default=None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    return float(value)


def _check(cfg: DictConfig, key: str, ok: Any, expected: str, integer: bool = False) -> None:
    value = _number(cfg, key)
    if value is None:
        return
    if integer and not float(value).is_integer():
        raise ConfigError(f"{key}: expected an integer {expected}, got {OmegaConf.select(cfg, key)!r}")
    if not ok(value):
        raise ConfigError(f"{key}: expected {expected}, got {OmegaConf.select(cfg, key)!r}")


def validate_config(cfg: DictConfig) -> None:
    """Check the values a typo most often breaks; raises `ConfigError` naming the field."""
    for group in ("model", "data", "optimizer", "trainer"):
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ConfigError(f"{group}: expected a config with a _target_ (choose one with {group}=...), "
                              f"got {node!r}")
    if cfg.get("loss") not in LOSSES:
        raise ConfigError(f"loss: expected one of {list(LOSSES)}, got {cfg.get('loss')!r}")
    _check(cfg, "huber_delta", lambda v: v > 0, "> 0")
    _check(cfg, "optimizer.lr", lambda v: v > 0, "> 0")
    for key in ("optimizer.weight_decay", "optimizer.momentum"):
        _check(cfg, key, lambda v: v >= 0, ">= 0")
    _check(cfg, "data.batch_size", lambda v: v >= 1, ">= 1", integer=True)
    _check(cfg, "data.num_workers", lambda v: v >= 0, ">= 0", integer=True)
    _check(cfg, "trainer.max_epochs", lambda v: v >= 1 or v == -1, ">= 1 (or -1: no limit)", integer=True)
    _check(cfg, "seed", lambda v: 0 <= v < 2**32, "in [0, 2**32)", integer=True)
    name = cfg.get("experiment_name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"experiment_name: expected a non-empty name, got {name!r}")
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default=None)
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator: {accelerator!r} needs a CUDA GPU, but torch sees none "
                          f"(torch {torch.__version__}); use trainer=cpu")


# --------------------------------------------------------------------------------------------
# What goes into the MLflow run.


def flatten_config(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as `{"optimizer.lr": "0.001", ...}` (the keys you override on the CLI)."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            flat[prefix] = value if isinstance(value, str) else json.dumps(value)

    walk("", OmegaConf.to_container(cfg, resolve=True))
    return flat


def log_params(client: Any, run_id: str, params: dict[str, str]) -> None:
    """Log params in MLflow-sized batches, each value cut to MLflow's length limit."""
    from mlflow.entities import Param

    try:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as limit
    except ImportError:  # pragma: no cover - depends on the MLflow version
        limit = FALLBACK_PARAM_LENGTH
    items = [Param(key, value[:limit]) for key, value in params.items()]
    for start in range(0, len(items), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[start:start + PARAMS_PER_BATCH])


def hydra_context() -> dict[str, Any]:
    """Tags and folders describing this Hydra job (empty when `train` is called without Hydra)."""
    if not HydraConfig.initialized():
        return {}
    hydra_cfg = HydraConfig.get()
    try:
        from mlflow.utils.validation import MAX_TAG_VAL_LENGTH as tag_limit
    except ImportError:  # pragma: no cover
        tag_limit = FALLBACK_PARAM_LENGTH
    context: dict[str, Any] = {  # tags for the run, folders to log
        "tags": {TAG_OVERRIDES: " ".join(hydra_cfg.overrides.task)[:tag_limit]},
        "hydra_dir": None,
        "log_file": None,
    }
    output_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.output_subdir is not None:
        context["hydra_dir"] = output_dir / hydra_cfg.output_subdir
    context["log_file"] = output_dir / f"{hydra_cfg.job.name}.log"
    context["model_choice"] = hydra_cfg.runtime.choices.get("model")
    if hydra_cfg.mode == RunMode.MULTIRUN:
        context["tags"][TAG_SWEEP] = str(Path(hydra_cfg.sweep.dir).resolve())
        context["tags"][TAG_JOB] = str(hydra_cfg.job.num)
    return context


def default_run_name(cfg: DictConfig, context: dict[str, Any]) -> str:
    """`<model>-<date>-<time>[-<job>]`: readable and distinct (MLflow's random names repeat once
    `seed_everything` has seeded Python's `random`)."""
    model = context.get("model_choice") or str(cfg.model._target_).rsplit(".", 1)[-1].lower()
    name = f"{model}-{datetime.now():%Y%m%d-%H%M%S}"
    job = context.get("tags", {}).get(TAG_JOB)
    return f"{name}-job{job}" if job is not None else name


def instantiate_group(node: DictConfig | None, kind: str) -> list[Any]:
    """Instantiate every `_target_` entry of a name -> config mapping (callbacks, loggers)."""
    if node is None:
        return []
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{kind}: expected a mapping of name -> config with _target_, got {node!r}")
    objects = []
    for name, item in node.items():
        if isinstance(item, DictConfig) and "_target_" in item:
            objects.append(instantiate(item))
        elif item is not None:
            raise ConfigError(f"{kind}.{name}: expected a config with a _target_, got {item!r}")
    return objects


def _mlflow_logger(loggers: list[Logger]) -> MLFlowLogger:
    from pytorch_lightning.loggers import MLFlowLogger

    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            return logger
    raise ConfigError("logger: training records its run in MLflow; expected an MLFlowLogger "
                      "(logger=mlflow), got " + repr([type(item).__name__ for item in loggers]))


def _checkpoint(trainer: pl.Trainer) -> tuple[str, float | None, str | None]:
    """(path, score, monitored metric) of the checkpoint to log: the best one if a ModelCheckpoint
    monitors a metric, else the last one Lightning saved (monitor None); ("", None, None) if none."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    saved = [callback for callback in trainer.callbacks
             if isinstance(callback, ModelCheckpoint) and callback.best_model_path
             and Path(callback.best_model_path).is_file()]
    saved.sort(key=lambda callback: callback.monitor is None)  # monitored first
    if not saved:
        return "", None, None
    callback = saved[0]
    score = callback.best_model_score
    return callback.best_model_path, (float(score) if score is not None else None), callback.monitor


def load_net_weights(net: torch.nn.Module, checkpoint_path: str | Path) -> None:
    """Load a SteeringModule checkpoint's network weights into `net`."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    state = {key[len(NET_PREFIX):]: value for key, value in checkpoint["state_dict"].items()
             if key.startswith(NET_PREFIX)}
    if not state:
        raise ValueError(f"{checkpoint_path}: no '{NET_PREFIX}*' weights; not a bc.module checkpoint")
    net.load_state_dict(state)


def _ui_hint(uri: str) -> str:
    """The `mlflow ui` command for this store, short when it is the default one."""
    if uri == tracking.resolve_tracking_uri(tracking.DEFAULT_TRACKING_URI):
        uri = tracking.DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri}"
    return f"open {uri} (the MLflow tracking server)"


class _Run:
    """The MLflow run of one training job and how to close it."""

    def __init__(self, logger: MLFlowLogger, uri: str, log_file: Path | None) -> None:
        self.logger = logger
        self.uri = uri
        self.client = logger.experiment
        self.run_id: str = logger.run_id or ""
        self.log_file = log_file

    def log_config(self, cfg: DictConfig, hydra_dir: Path | None) -> None:
        log_params(self.client, self.run_id, flatten_config(cfg))
        self.client.log_text(self.run_id, OmegaConf.to_yaml(cfg, resolve=True), CONFIG_ARTIFACT)
        if hydra_dir is not None and hydra_dir.is_dir():
            self.client.log_artifacts(self.run_id, str(hydra_dir), HYDRA_ARTIFACT_DIR)

    def log_data_stats(self, datamodule: Any) -> None:
        stats = getattr(datamodule, "stats", None)
        if isinstance(stats, dict) and stats:
            log_params(self.client, self.run_id, {f"{DATA_STATS_PREFIX}{key}": str(value)
                                                  for key, value in stats.items()})

    def log_results(self, trainer: pl.Trainer, net: torch.nn.Module, model_cfg: DictConfig) -> None:
        """Best checkpoint + the model rebuilt from it (else the current weights), data counts."""
        self.log_data_stats(trainer.datamodule)
        checkpoint, score, monitor = _checkpoint(trainer)
        weights = "last (no checkpoint monitors a metric)"
        if monitor:
            try:
                load_net_weights(net, checkpoint)
                weights = f"best {monitor}: {Path(checkpoint).name}"
            except Exception as error:  # e.g. Ctrl-C while it was being written
                log.warning("best checkpoint %s is unreadable (%s); logging the last weights", checkpoint, error)
                checkpoint, weights = "", f"last (best checkpoint unreadable: {error})"[:FALLBACK_PARAM_LENGTH]
        if checkpoint:
            self.client.log_artifact(self.run_id, checkpoint, CHECKPOINT_ARTIFACT_DIR)
            if monitor and score is not None and math.isfinite(score):
                self.client.log_metric(self.run_id, monitor + BEST_SUFFIX, score, step=trainer.global_step)
        self.client.set_tag(self.run_id, TAG_WEIGHTS, weights)
        tracking.log_model(self.run_id, net, model_cfg, self.uri)

    def close(self, status: str) -> None:
        if self.log_file is not None and self.log_file.is_file():
            self.client.log_artifact(self.run_id, str(self.log_file), LOG_ARTIFACT_DIR)
        self.client.set_terminated(self.run_id, status)


def build_datamodule(cfg: DictConfig, net: Any) -> pl.LightningDataModule:
    """The datamodule for `net`'s preprocessing; objects are passed as they are, not as configs."""
    augmentation_cfg = cfg.get("augmentation")
    augmentation = None
    if isinstance(augmentation_cfg, DictConfig) and "_target_" in augmentation_cfg:
        augmentation = instantiate(augmentation_cfg)
    elif augmentation_cfg:
        raise ConfigError(f"augmentation: expected a config with a _target_ or null, got {augmentation_cfg!r}")
    factory = instantiate(cfg.data, _partial_=True)
    return factory(preprocess=net.preprocess_spec, augmentation=augmentation)


def train(cfg: DictConfig) -> str:
    """Fit the configured model and return the MLflow run id (see the module doc for the run's content)."""
    validate_config(cfg)
    import pytorch_lightning as pl
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    from bc.module import SteeringModule

    uri = tracking.resolve_tracking_uri(cfg.get("tracking_uri"))
    with open_dict(cfg):
        cfg.tracking_uri = uri  # the logger's ${tracking_uri} and the logged config see the real store
    context = hydra_context()
    if cfg.get("run_name") is None:
        with open_dict(cfg):
            cfg.run_name = default_run_name(cfg, context)
    pl.seed_everything(int(cfg.seed), workers=True)
    is_zero = rank_zero_only.rank == 0
    if is_zero:
        _prepare_experiment(cfg.experiment_name, uri)

    net = instantiate(cfg.model)
    datamodule = build_datamodule(cfg, net)
    optimizer = instantiate(cfg.optimizer)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    module = SteeringModule(net, optimizer=optimizer, scheduler=scheduler, loss=cfg.loss,
                            huber_delta=cfg.get("huber_delta", 1.0))
    loggers = instantiate_group(cfg.get("logger"), "logger")
    mlflow_logger = _mlflow_logger(loggers)
    mlflow_logger.tags = {**(mlflow_logger.tags or {}), **context.get("tags", {}),
                          TAG_MODEL: str(cfg.model._target_), TAG_OUTPUT_DIR: str(cfg.output_dir)}
    run = _Run(mlflow_logger, uri, context.get("log_file")) if is_zero else None
    run_id = run.run_id if run else ""
    trainer: pl.Trainer | None = None
    try:
        if run:
            run.log_config(cfg, context.get("hydra_dir"))
            log.info("MLflow run %s in experiment %r (%s)", run_id, cfg.experiment_name, uri)
        callbacks: list[pl.Callback] = instantiate_group(cfg.get("callbacks"), "callbacks")
        trainer = instantiate(cfg.trainer, logger=loggers, callbacks=callbacks)
        trainer.fit(module, datamodule=datamodule)
        if run and trainer.is_global_zero:
            run.log_results(trainer, net, cfg.model)
            run.close("FINISHED")
    except (KeyboardInterrupt, SystemExit) as stop:
        interrupted = isinstance(stop, KeyboardInterrupt) or (trainer is not None and trainer.interrupted)
        if not interrupted:
            _close_failed(run)
            raise
        if run:
            _salvage(run, trainer, net, cfg.model)
            print(f"Training interrupted: MLflow run {run_id} marked KILLED "
                  f"with what was logged so far.\n{_ui_hint(uri)}", flush=True)
        raise SystemExit(INTERRUPTED_EXIT_CODE) from None
    except BaseException:
        _close_failed(run)
        raise
    if run:
        print(f"MLflow run {run_id} (experiment {cfg.experiment_name!r}) finished.\n"
              f"Browse runs: {_ui_hint(uri)}", flush=True)
    return run_id


def _prepare_experiment(name: str, uri: str) -> None:
    """Create the experiment with artifacts beside the sqlite db (the logger would put them elsewhere)."""
    experiment_id = tracking.get_or_create_experiment(name, uri)
    experiment = tracking.client(uri).get_experiment(experiment_id)
    if experiment.lifecycle_stage == "deleted":
        raise ConfigError(f"experiment_name: the MLflow experiment {name!r} is deleted; restore it "
                          f"(mlflow experiments restore --experiment-id {experiment_id}) or pick another name")


def _close_failed(run: _Run | None) -> None:
    if run is None:
        return
    try:
        run.close("FAILED")
    except Exception as error:  # keep the original error visible
        log.warning("could not mark MLflow run %s FAILED: %s", run.run_id, error)


def _salvage(run: _Run, trainer: pl.Trainer | None, net: torch.nn.Module, model_cfg: DictConfig) -> None:
    """After Ctrl-C: keep the best checkpoint and a model in the run, then mark it KILLED."""
    try:
        if trainer is not None and trainer.global_step > 0:
            run.log_results(trainer, net, model_cfg)
        elif trainer is not None:
            run.log_data_stats(trainer.datamodule)
    except Exception as error:
        log.warning("could not log the interrupted run's model: %s", error)
    run.close("KILLED")
