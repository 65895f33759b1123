"""Every option of every training config group composes from the real conf/ and instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import MLFlowLogger
from torch.optim.lr_scheduler import ReduceLROnPlateau

from bc.models.base import SteeringModel
from bc.module import SteeringModule
from bc.train import build_datamodule, instantiate_group, validate_config

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("model", "data", "augmentation", "optimizer", "scheduler", "trainer", "logger", "callbacks",
          "experiment")
NO_GPU_OVERRIDES = ["trainer.accelerator=cpu", "trainer.devices=1"]  # gpu/ddp: composed, built on CPU


def options(group: str) -> list[str]:
    found = sorted(path.stem for path in (CONF / group).glob("*.yaml"))
    assert found, f"conf/{group} has no options"
    return found


def compose_train(tmp_path: Path, *overrides: str) -> DictConfig:
    """The real train config with this test's folders (no Hydra run dir outside a Hydra app)."""
    base = [f"output_dir={tmp_path / 'out'}", f"tracking_uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
            f"data.paths=[{tmp_path / 'recording'}]"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=base + list(overrides))


def build_net(cfg: DictConfig) -> SteeringModel:
    net = instantiate(cfg.model)
    assert isinstance(net, SteeringModel)
    with torch.no_grad():
        out = net(torch.full((2, *net.input_shape), 128.0))
    assert out.shape == (2, 1)
    return net


def test_groups_have_the_documented_options() -> None:
    assert {"adam", "adamw", "sgd"} <= set(options("optimizer"))
    assert {"none", "cosine", "plateau", "step"} <= set(options("scheduler"))
    assert {"cpu", "gpu", "ddp"} <= set(options("trainer"))
    assert {"default", "none"} <= set(options("callbacks"))
    assert {"nvidia", "commaai", "small"} <= set(options("model"))
    assert {"default", "none", "strong"} <= set(options("augmentation"))
    assert "mlflow" in options("logger")
    assert len(options("experiment")) >= 2


def test_default_config(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path)
    validate_config(cfg)
    assert cfg.model._target_ == "bc.models.nvidia.PilotNet"
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == pytest.approx(1e-3)
    assert cfg.optimizer._partial_ is True
    assert cfg.scheduler is None
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.max_epochs == 1
    assert cfg.loss == "mse" and cfg.experiment_name == "bc" and cfg.tracking_uri.startswith("sqlite:///")
    assert cfg.callbacks.model_checkpoint.dirpath == str(tmp_path / "out" / "checkpoints")


@pytest.mark.parametrize("option", options("model"))
def test_model_options(tmp_path: Path, option: str) -> None:
    cfg = compose_train(tmp_path, f"model={option}")
    net = build_net(cfg)
    assert net.preprocess_spec.to_dict() == OmegaConf.to_container(cfg.model.preprocess)


@pytest.mark.parametrize("option", options("optimizer"))
def test_optimizer_options(tmp_path: Path, option: str) -> None:
    cfg = compose_train(tmp_path, f"optimizer={option}", "model=small")
    net = build_net(cfg)
    optimizer = instantiate(cfg.optimizer)(params=net.parameters())
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.optimizer.lr)
    assert type(optimizer).__name__.lower() == option.lower()


@pytest.mark.parametrize("option", options("scheduler"))
def test_scheduler_options(tmp_path: Path, option: str) -> None:
    cfg = compose_train(tmp_path, f"scheduler={option}", "model=small")
    net = build_net(cfg)
    scheduler = instantiate(cfg.scheduler) if cfg.scheduler is not None else None
    assert (scheduler is None) == (option == "none")
    module = SteeringModule(net, optimizer=instantiate(cfg.optimizer), scheduler=scheduler)
    configured = module.configure_optimizers()
    if scheduler is None:
        assert isinstance(configured, torch.optim.Optimizer)
        return
    schedule = configured["lr_scheduler"]
    assert schedule["scheduler"].optimizer is configured["optimizer"]
    if isinstance(schedule["scheduler"], ReduceLROnPlateau):
        assert schedule["monitor"] == "val/loss"
    else:
        before = configured["optimizer"].param_groups[0]["lr"]
        for _ in range(max(1, int(cfg.scheduler.get("step_size", 1)))):
            configured["optimizer"].step()
            schedule["scheduler"].step()
        assert configured["optimizer"].param_groups[0]["lr"] < before


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_options(tmp_path: Path, option: str) -> None:
    overrides = [f"trainer={option}"]
    if option != "cpu" and not torch.cuda.is_available():
        cfg = compose_train(tmp_path, *overrides)
        assert cfg.trainer.accelerator == "gpu"
        overrides += NO_GPU_OVERRIDES
    cfg = compose_train(tmp_path, *overrides)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_progress_bar=False)
    assert isinstance(trainer, pl.Trainer)
    assert trainer.max_epochs == cfg.trainer.max_epochs
    assert trainer.default_root_dir == str(tmp_path / "out")
    if option == "ddp":
        assert "ddp" in type(trainer.strategy).__name__.lower()


@pytest.mark.parametrize("option", options("logger"))
def test_logger_options(tmp_path: Path, option: str) -> None:
    cfg = compose_train(tmp_path, f"logger={option}", "experiment_name=compose-test", "run_name=r1")
    loggers = instantiate_group(cfg.logger, "logger")
    mlflow_loggers = [item for item in loggers if isinstance(item, MLFlowLogger)]
    assert len(mlflow_loggers) == 1
    logger = mlflow_loggers[0]
    assert logger._tracking_uri == cfg.tracking_uri  # no run is created here (test_train covers that)
    assert logger._experiment_name == "compose-test" and logger._run_name == "r1"


@pytest.mark.parametrize("option", options("callbacks"))
def test_callbacks_options(tmp_path: Path, option: str) -> None:
    cfg = compose_train(tmp_path, f"callbacks={option}")
    callbacks = instantiate_group(cfg.callbacks, "callbacks")
    assert all(isinstance(item, pl.Callback) for item in callbacks)
    if option == "default":
        checkpoint = next(item for item in callbacks if isinstance(item, ModelCheckpoint))
        assert checkpoint.monitor == "val/loss" and checkpoint.dirpath == str(tmp_path / "out" / "checkpoints")
        assert any(isinstance(item, EarlyStopping) and item.monitor == "val/loss" for item in callbacks)
    if option == "none":
        assert callbacks == []


@pytest.mark.parametrize("group", ["data", "augmentation"])
def test_data_and_augmentation_options(tmp_path: Path, group: str) -> None:
    for option in options(group):
        cfg = compose_train(tmp_path, f"{group}={option}", "model=small")
        net = build_net(cfg)
        datamodule = build_datamodule(cfg, net)
        assert isinstance(datamodule, pl.LightningDataModule)
        assert datamodule.spec == net.preprocess_spec
        assert datamodule.batch_size == cfg.data.batch_size
        assert datamodule.augmentation is None or callable(datamodule.augmentation)


@pytest.mark.parametrize("option", options("experiment"))
def test_experiment_presets(tmp_path: Path, option: str) -> None:
    cfg = compose_train(tmp_path, f"experiment={option}")
    validate_config(cfg)
    net = build_net(cfg)
    build_datamodule(cfg, net)
    instantiate(cfg.optimizer)(params=net.parameters())
    if cfg.scheduler is not None:
        instantiate(cfg.scheduler)(optimizer=instantiate(cfg.optimizer)(params=net.parameters()))
    instantiate(cfg.trainer, logger=False, callbacks=instantiate_group(cfg.callbacks, "callbacks"))
    plain = compose_train(tmp_path)
    assert OmegaConf.to_container(cfg) != OmegaConf.to_container(plain)  # the preset changes something


def test_fast_preset_is_small_and_short(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, "experiment=fast")
    assert cfg.model._target_ == "bc.models.small.SmallNet"
    assert cfg.trainer.limit_train_batches <= 50


def test_presets_override_primary_keys(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, "experiment=pilotnet_lake")
    assert cfg.experiment_name == "pilotnet_lake"  # _self_ first: presets win over train.yaml
    assert cfg.model._target_ == "bc.models.nvidia.PilotNet"
    assert cfg.scheduler._target_.endswith("ReduceLROnPlateau")
