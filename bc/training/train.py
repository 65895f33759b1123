"""Train a steering network from a composed Hydra config: a recipe.

`train(cfg)` prepares the config (tracking URI, `resume=`, the camera frame size taken from the
data when `model.preprocess` leaves it null), builds every object from its config group
(datamodule, model, loss, optimizer, scheduler, callbacks, loggers, trainer), reads the data,
then opens the MLflow run and fits. A bad value is a `ConfigError` naming its field, found by
building (and for the loss, optimizer and scheduler, running) the object it configures; a data
problem is a `BcError` naming its file and row; both before any MLflow run exists. What the run
records and how it ends (FINISHED, FAILED, KILLED) is `bc.training.mlflow_run.MlflowRun`.
`objective(cfg, run_id)` is what a sweeper optimizes: the run's `optimized_metric`.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from bc import tracking

from bc.core import udacity
from bc.errors import ConfigError
from bc.training.instantiators import build_group, instantiate_group, tried_loss, tried_optimizer, tried_scheduler
from bc.core.settings import flag
from bc.core.preprocess import Preprocess
from bc.data.log import detect_frame_size
from bc.models import build_model

if TYPE_CHECKING:  # Lightning takes seconds to import: only once the config is prepared
    import pytorch_lightning as pl

    from bc.training.mlflow_run import MlflowRun  # lazy: Lightning
    from bc.training.module import SteeringModule  # lazy: Lightning

# Lightning 2.6 builds torch's deprecated LeafSpec on every batch transfer; harmless, silence exactly it.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                        category=FutureWarning)

RESUME_KEEPS = ("resume", "tracking_uri")  # the only overrides that go with resume=<run id>


@dataclass
class Job:
    """What `trainer.fit` runs, every piece built and checked."""

    datamodule: pl.LightningDataModule
    module: SteeringModule
    trainer: pl.Trainer
    run: MlflowRun


def train(cfg: DictConfig) -> str:
    """Fit the configured model and return its MLflow run id (see the module doc)."""
    cfg, checkpoint = prepare(cfg)
    job = build(cfg)
    _check_ddp_launch(job.trainer)
    job.datamodule.setup("fit")  # data errors (file and row) before a run exists
    if tracking.is_run_id(cfg.resume):
        job.run.reopen(cfg.resume)
    job.run.start(cfg)
    try:
        job.trainer.fit(job.module, datamodule=job.datamodule, ckpt_path=checkpoint,
                        weights_only=True)  # a checkpoint from a store holds no code to run
    except SystemExit:
        if job.trainer.interrupted:  # Lightning turns Ctrl-C into exit(1) after its shutdown
            raise KeyboardInterrupt from None
        raise
    return job.run.run_id


def objective(cfg: DictConfig, run_id: str | None) -> float | None:
    """The value of metric `cfg.optimized_metric` (e.g. `val/loss_best`, or a closed-loop score
    such as `eval/lake/autonomy` once the run has one) in MLflow run `run_id`: what
    `hydra/sweeper=optuna` optimizes. None in DDP processes other than rank 0 (no run there)."""
    name = str(cfg.optimized_metric)
    if run_id is None:
        return None
    metrics = tracking.client(cfg.tracking_uri).get_run(run_id).data.metrics
    if name not in metrics:
        raise ConfigError(f"optimized_metric: MLflow run {run_id} has no metric {name!r} "
                          f"(it has {', '.join(sorted(metrics)) or 'none'})")
    return float(metrics[name])


# --------------------------------------------------------------------------------------------
# The config to train with.


def prepare(cfg: DictConfig) -> tuple[DictConfig, str | None]:
    """The config to train with and the checkpoint to start from.

    `resume=<run id>` trains with that run's logged config from its latest checkpoint;
    `resume=<checkpoint path>` trains this config from that checkpoint, in a new run."""
    with open_dict(cfg):
        cfg.tracking_uri = tracking.resolve_tracking_uri(cfg.tracking_uri)
    checkpoint = None
    if tracking.is_run_id(cfg.resume):
        from bc.training.mlflow_run import resume_point  # lazy: Lightning

        _check_resume_overrides()
        stored, checkpoint = resume_point(cfg.resume, cfg.tracking_uri, Path(cfg.output_dir) / "resume")
        with open_dict(stored):
            stored.resume, stored.tracking_uri = cfg.resume, cfg.tracking_uri
        cfg = stored
        check_checkpoint(checkpoint, f"resume: run {cfg.resume}'s checkpoint {checkpoint}")
    elif cfg.resume is not None:
        if not Path(str(cfg.resume)).expanduser().is_file():
            raise ConfigError(f"resume: expected a run id (32 hex digits) or a checkpoint file, got "
                              f"{cfg.resume!r} (no such file)")
        checkpoint = str(Path(str(cfg.resume)).expanduser())
        check_checkpoint(checkpoint, f"resume: checkpoint {checkpoint}")
    fill_frame_size(cfg)
    return cfg, checkpoint


def check_checkpoint(path: str, source: str) -> None:
    """A checkpoint must load (tensors and plain values only) before a run is reopened, so a
    damaged one is one line and the run keeps its status (KILLED stays KILLED)."""
    import torch

    try:  # mmap: the tensors are mapped, not read; Lightning reads them again to resume
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # truncated zip, not torch's format, pickled code, ...
        detail = " ".join(str(error).split())[:300] or type(error).__name__
        raise ConfigError(f"{source} is unreadable ({detail})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{source} is not a Lightning checkpoint (no state_dict)")


def _check_resume_overrides() -> None:
    """A resumed run keeps its logged config; other command-line values would go unused."""
    if not HydraConfig.initialized():
        return
    ignored = [override for override in HydraConfig.get().overrides.task
               if override.split("=", 1)[0].lstrip("+~") not in RESUME_KEEPS]
    if ignored:
        raise ConfigError(f"resume: a run id continues that run with its logged config; drop "
                          f"{' '.join(ignored)} (or resume from its checkpoint path for a new run)")


def fill_frame_size(cfg: DictConfig) -> None:
    """Store the recordings' camera frame size in `model.preprocess` where the config leaves it
    null, so the saved model (model.yaml, TorchScript) says which frames it takes."""
    preprocess = cfg.model.get("preprocess")
    if preprocess is None or (preprocess.get("frame_width") is not None
                              and preprocess.get("frame_height") is not None):
        return

    try:
        spec = Preprocess.from_dict(OmegaConf.to_container(preprocess))
    except ConfigError as error:  # "preprocess.height: ..." names the field under model
        raise ConfigError(f"model.{error}") from None
    data = OmegaConf.to_container(cfg.data, resolve=True) if isinstance(cfg.data, DictConfig) else {}
    width, height = detect_frame_size(data.get("paths") or [], data.get("cameras") or udacity.CAMERAS, spec)
    with open_dict(preprocess):
        preprocess.frame_width = preprocess.get("frame_width") or width
        preprocess.frame_height = preprocess.get("frame_height") or height


# --------------------------------------------------------------------------------------------
# Every object of the recipe, checked.


def build(cfg: DictConfig) -> Job:
    """Build every piece from its config group; a bad value is a `ConfigError` naming its field."""
    import pytorch_lightning as pl

    from bc.training.mlflow_run import MlflowRun  # lazy: Lightning
    from bc.training.module import SteeringModule  # lazy: Lightning

    # Types are the schema's (bc.core.configs.TrainConfig); the ranges are checked here.
    if not 0 <= cfg.seed < 2**32:
        raise ConfigError(f"seed: expected an integer in [0, 2**32), got {cfg.seed!r}")
    if not str(cfg.experiment_name).strip():
        raise ConfigError(f"experiment_name: expected a non-empty name, got {cfg.experiment_name!r}")
    pl.seed_everything(cfg.seed, workers=True)

    augmentation = build_group("augmentation", cfg.augmentation, instantiate, required=False)
    datamodule = build_group("data", cfg.data, lambda node: instantiate(node, augmentation=augmentation))
    net = build_group("model", cfg.model, build_model)
    loss = build_group("loss", cfg.loss, lambda node: tried_loss(instantiate(node)))
    optimizer = build_group("optimizer", cfg.optimizer, lambda node: tried_optimizer(instantiate(node)))
    scheduler = build_group("scheduler", cfg.scheduler,
                            lambda node: tried_scheduler(instantiate(node), optimizer), required=False)
    callbacks = instantiate_group(cfg.callbacks, "callbacks")
    loggers = instantiate_group(cfg.logger, "logger")
    runs = [logger for logger in loggers if isinstance(logger, MlflowRun)]
    if len(runs) != 1:
        raise ConfigError(f"logger: training records its run with one bc.training.mlflow_run.MlflowRun "
                          f"(logger=mlflow), got {[type(item).__name__ for item in loggers]}")
    trainer_node, channels_last = trainer_arguments(cfg.trainer)
    if channels_last:
        from bc.training.callbacks import ChannelsLast  # lazy: Lightning

        callbacks.append(ChannelsLast())
    trainer = build_group("trainer", trainer_node,  # the run is a logger and a callback
                          lambda node: instantiate(node, logger=loggers, callbacks=callbacks + runs))
    module = SteeringModule(net, optimizer=optimizer, scheduler=scheduler, loss=loss,
                            speed_loss_weight=cfg.speed_loss_weight)
    return Job(datamodule, module, trainer, runs[0])


def _check_ddp_launch(trainer: pl.Trainer) -> None:
    """Lightning starts DDP's other processes by running this command again: inside a sweep
    (-m) each of them would run the whole sweep. Slurm and torchrun start the processes
    themselves, and ddp_spawn forks them, so those work in sweeps."""
    from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    if (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
            and isinstance(launcher, _SubprocessScriptLauncher) and launcher.num_processes > 1
            and not launcher.cluster_environment.creates_processes_externally):
        raise ConfigError(f"trainer.strategy: {trainer.strategy.__class__.__name__} starts its "
                          f"other processes by running the command again, which a sweep (-m) "
                          f"cannot; sweep DDP trainings with hydra/launcher=slurm or under "
                          f"torchrun, use trainer.strategy=ddp_spawn, or train without -m")


def trainer_arguments(node: DictConfig | None) -> tuple[DictConfig | None, bool]:
    """The Trainer's own arguments, and `trainer.channels_last` (ours: the network's weights in
    NHWC memory layout, see `bc.training.callbacks.ChannelsLast`), which Lightning does not take."""
    if not isinstance(node, DictConfig) or "channels_last" not in node:
        return node, False
    channels_last = flag("trainer.channels_last", node.channels_last)
    arguments = copy.copy(node)  # keeps its parent: ${output_dir} still resolves
    with open_dict(arguments):
        arguments.pop("channels_last")
    return arguments, channels_last
