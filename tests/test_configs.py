"""Every option of every training config group composes from the real conf/ and builds."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from torch.optim.lr_scheduler import ReduceLROnPlateau

from bc.data.augment import SteeringAugment
from bc.data.batch_augment import BatchAugment
from bc.training.mlflow_run import MlflowRun
from bc.models import MODELS, build_model
from bc.models.base import SteeringModel
from bc.training.module import SteeringModule
from bc.training.instantiators import instantiate_group
from bc.training.train import trainer_arguments
from bc.training.train import build
from conftest import CONF_DIR

NO_GPU_OVERRIDES = ["trainer.accelerator=cpu", "trainer.devices=1"]  # gpu/ddp: composed, built on CPU


def options(group: str) -> list[str]:
    found = sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))
    assert found, f"conf/{group} has no options"
    return found


@pytest.fixture
def train_config(compose, tmp_path: Path):
    """The real train config with this test's folders (no Hydra run dir outside a Hydra app)."""
    def composed(*overrides: str) -> DictConfig:
        base = [f"output_dir={tmp_path / 'out'}", f"tracking_uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
                f"data.paths=[{tmp_path / 'recording'}]"]
        return compose("train", base + list(overrides))
    return composed


def build_net(cfg: DictConfig) -> SteeringModel:
    net = build_model(cfg.model)
    with torch.no_grad():
        out = net(torch.full((2, *net.input_shape), 128.0))
    assert out.shape == (2, 1)
    return net


def test_groups_have_the_documented_options() -> None:
    assert {"adam", "adamw", "sgd"} <= set(options("optimizer"))
    assert {"none", "cosine", "plateau", "step"} <= set(options("scheduler"))
    assert {"mse", "huber"} <= set(options("loss"))
    assert {"cpu", "gpu", "ddp"} <= set(options("trainer"))
    assert {"default", "none"} <= set(options("callbacks"))
    assert {"nvidia", "commaai", "small"} <= set(options("model"))
    assert {"default", "none", "strong"} <= set(options("augmentation"))
    assert "mlflow" in options("logger")
    assert len(options("experiment")) >= 2


def test_default_config(train_config, tmp_path: Path) -> None:
    cfg = train_config()
    assert cfg.model._target_ == "bc.models.nvidia.PilotNet"
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == pytest.approx(1e-3)
    assert cfg.optimizer._partial_ is True
    assert cfg.scheduler is None and cfg.resume is None
    assert cfg.loss._target_ == "torch.nn.MSELoss"
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.max_epochs == 1
    assert cfg.experiment_name == "bc" and cfg.tracking_uri.startswith("sqlite:///")
    assert cfg.callbacks.model_checkpoint.dirpath == str(tmp_path / "out" / "checkpoints")
    # The datamodule gets the model's preprocessing by interpolation, frame size included.
    cfg.model.preprocess.frame_width = 96
    assert cfg.data.preprocess == cfg.model.preprocess and cfg.data.preprocess.frame_width == 96


def test_the_recipe_builds_every_piece_from_config_without_touching_mlflow(train_config, tmp_path: Path) -> None:
    job = build(train_config("model=small", "loss=huber", "loss.delta=0.3", "scheduler=cosine"))
    assert isinstance(job.module.net, MODELS["bc.models.small.SmallNet"])
    assert isinstance(job.module.criterion, torch.nn.HuberLoss) and job.module.criterion.delta == 0.3
    assert job.datamodule.spec == job.module.net.preprocess_spec
    assert job.run in job.trainer.loggers and job.run in job.trainer.callbacks
    assert job.run._run_id is None  # no MLflow run yet: it starts in bc.training.train.train
    assert not (tmp_path / "mlruns" / "bc").exists()


@pytest.mark.parametrize("option", options("model"))
def test_model_options(train_config, option: str) -> None:
    cfg = train_config(f"model={option}")
    net = build_net(cfg)
    assert type(net) is MODELS[cfg.model._target_]
    assert net.preprocess_spec.to_dict() == OmegaConf.to_container(cfg.model.preprocess)


@pytest.mark.parametrize("option", options("loss"))
def test_loss_options(train_config, option: str) -> None:
    loss = instantiate(train_config(f"loss={option}").loss)
    prediction, target = torch.tensor([[0.0], [3.0]]), torch.zeros(2, 1)
    expected = {"mse": 4.5, "huber": (0.0 + (3.0 - 0.5)) / 2}[option]  # huber delta 1: |e| - 0.5 above 1
    assert loss(prediction, target).item() == pytest.approx(expected)


@pytest.mark.parametrize("option", options("optimizer"))
def test_optimizer_options(train_config, option: str) -> None:
    cfg = train_config(f"optimizer={option}", "model=small")
    net = build_net(cfg)
    optimizer = instantiate(cfg.optimizer)(params=net.parameters())
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.optimizer.lr)
    assert type(optimizer).__name__.lower() == option.lower()


@pytest.mark.parametrize("option", options("scheduler"))
def test_scheduler_options(train_config, option: str) -> None:
    cfg = train_config(f"scheduler={option}", "model=small")
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
def test_trainer_options(train_config, tmp_path: Path, option: str) -> None:
    overrides = [f"trainer={option}"]
    if option in ("gpu", "ddp") and not torch.cuda.is_available():
        cfg = train_config(*overrides)
        assert cfg.trainer.accelerator == "gpu"
        overrides += NO_GPU_OVERRIDES
    cfg = train_config(*overrides)
    arguments, channels_last = trainer_arguments(cfg.trainer)
    assert channels_last == (option in ("gpu", "ddp"))  # the GPU presets
    trainer = instantiate(arguments, logger=False, callbacks=[], enable_progress_bar=False)
    assert isinstance(trainer, pl.Trainer)
    assert trainer.max_epochs == cfg.trainer.max_epochs
    assert trainer.default_root_dir == str(tmp_path / "out")
    if option == "ddp":
        assert "ddp" in type(trainer.strategy).__name__.lower()


@pytest.mark.parametrize("option", options("logger"))
def test_logger_options(train_config, option: str) -> None:
    cfg = train_config(f"logger={option}", "experiment_name=compose-test", "run_name=r1")
    (run,) = [item for item in instantiate_group(cfg.logger, "logger") if isinstance(item, MlflowRun)]
    assert run._tracking_uri == cfg.tracking_uri  # no run is created here (test_train covers that)
    assert run._experiment_name == "compose-test" and run._run_name == "r1"


@pytest.mark.parametrize("option", options("callbacks"))
def test_callbacks_options(train_config, tmp_path: Path, option: str) -> None:
    cfg = train_config(f"callbacks={option}")
    callbacks = instantiate_group(cfg.callbacks, "callbacks")
    assert all(isinstance(item, pl.Callback) for item in callbacks)
    if option == "default":
        checkpoints = [item for item in callbacks if isinstance(item, ModelCheckpoint)]
        assert {item.monitor for item in checkpoints} == {"val/loss", None}  # best, and last every epoch
        assert {item.dirpath for item in checkpoints} == {str(tmp_path / "out" / "checkpoints")}
        assert any(isinstance(item, EarlyStopping) and item.monitor == "val/loss" for item in callbacks)
    if option == "none":
        assert callbacks == []


@pytest.mark.parametrize("group", ["data", "augmentation"])
def test_data_and_augmentation_options(train_config, group: str) -> None:
    for option in options(group):
        cfg = train_config(f"{group}={option}", "model=small")
        datamodule = build(cfg).datamodule
        assert isinstance(datamodule, pl.LightningDataModule)
        assert datamodule.spec == build_net(cfg).preprocess_spec
        assert datamodule.batch_size == cfg.data.batch_size
        augmentation = datamodule.augmentation
        assert isinstance(augmentation, (BatchAugment, SteeringAugment))
        assert augmentation.flip_prob == cfg.augmentation.flip_prob


@pytest.mark.parametrize("option", options("experiment"))
def test_experiment_presets(train_config, option: str) -> None:
    cfg = train_config(f"experiment={option}")
    job = build(cfg)
    assert job.trainer.max_epochs == cfg.trainer.max_epochs
    plain = train_config()
    assert OmegaConf.to_container(cfg) != OmegaConf.to_container(plain)  # the preset changes something


def test_fast_preset_is_small_and_short(train_config) -> None:
    cfg = train_config("experiment=fast")
    assert cfg.model._target_ == "bc.models.small.SmallNet"
    assert cfg.trainer.limit_train_batches <= 50


def test_presets_override_primary_keys(train_config) -> None:
    cfg = train_config("experiment=pilotnet_lake")
    assert cfg.experiment_name == "pilotnet_lake"  # _self_ first: presets win over train.yaml
    assert cfg.model._target_ == "bc.models.nvidia.PilotNet"
    assert cfg.scheduler._target_.endswith("ReduceLROnPlateau")


# --------------------------------------------------------------------------------------------
# The schemas (bc/core/configs.py): every primary config composes against its own, a wrong type or
# an unknown key is refused while composing, and the scripts say so in one line (exit 2).

PRIMARY = sorted(path.stem for path in CONF_DIR.glob("*.yaml"))
NEEDS = {"video": ["folder=run1"], "benchmark": ["benchmark=loader"],
         "train": ["output_dir=out"], "dagger": ["output_dir=out"],
         "review": ["path=recording"]}  # no Hydra app: no run folder


@pytest.mark.parametrize("name", PRIMARY)
def test_every_config_composes_and_resolves_against_its_schema(compose, name: str) -> None:
    from bc.core.configs import SCHEMAS

    cfg = compose(name, NEEDS.get(name, []))
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=name != "video")  # every value set
    assert OmegaConf.get_type(cfg) is SCHEMAS.get(name, dict)


def test_the_schemas_cover_the_configs_the_issue_names() -> None:
    from bc.core.configs import SCHEMAS

    assert {"train", "dagger", "drive", "simulate", "evaluate", "video"} <= set(SCHEMAS)
    assert set(SCHEMAS) <= set(PRIMARY)


@pytest.mark.parametrize("name", ["drive", "evaluate", "video"])
def test_commands_that_pick_a_model_share_the_run_group(compose, name: str) -> None:
    from bc.core.configs import RunSelection

    cfg = compose(name, [*NEEDS.get(name, []), "run_id=best", "metric=eval/score", "mode=max",
                         "runtime=onnx", "experiment_name=lab"])
    assert isinstance(OmegaConf.to_object(cfg), RunSelection)
    assert (cfg.run_id, cfg.metric, cfg.mode, cfg.runtime, cfg.experiment_name) == (
        "best", "eval/score", "max", "onnx", "lab")
    assert cfg.model_uri is None and cfg.tracking_uri is None
    assert compose(name, NEEDS.get(name, [])).runtime == "torch"  # conf/run/default.yaml


@pytest.mark.parametrize(("name", "override", "key"), [
    ("train", "data.batch_size=abc", "data.batch_size"),
    ("train", "data.balance.bins=1.5", "data.balance.bins"),
    ("train", "speed_loss_weight=heavy", "speed_loss_weight"),
    ("train", "callbacks.closed_loop.every_n_epochs=often", "callbacks.closed_loop.every_n_epochs"),
    ("train", "data.num_wokers=2", "data.num_wokers"),  # a misspelt key
    ("dagger", "beta=[high]", "beta[0]"),
    ("drive", "port=x", "port"),
    ("drive", "max_request_bytes=4MB", "max_request_bytes"),
    ("drive", "controller.kp=abc", "controller.kp"),
    ("simulate", "laps=many", "laps"),
    ("evaluate", "jobs=[2]", "jobs"),
    ("video", "overlay=maybe", "overlay"),
])
def test_a_wrong_type_or_key_is_refused_while_composing_naming_it(compose, name: str,
                                                                  override: str, key: str) -> None:
    from hydra.errors import ConfigCompositionException

    from bc.cli import composition_error

    with pytest.raises(ConfigCompositionException) as raised:
        compose(name, [*NEEDS.get(name, []), override])
    message = composition_error(raised.value)
    assert message.startswith(f"{key}: ") and "\n" not in message, message


def script(tmp_path: Path, name: str, *overrides: str) -> "subprocess.CompletedProcess[str]":
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(CONF_DIR.parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(CONF_DIR.parent / "scripts" / name), *overrides],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("name", "override", "line"), [
    ("train.py", "data.batch_size=abc", "train.py: error: data.batch_size: Value 'abc' of type "
                                        "'str' could not be converted to Integer"),
    ("drive.py", "port=x", "drive.py: error: port: Value 'x' of type 'str' could not be "
                           "converted to Integer"),
    ("simulate.py", "seed=1.5", "simulate.py: error: seed: "),
    ("evaluate.py", "max_steps=some", "evaluate.py: error: max_steps: "),
    ("drive.py", "prot=4567", "drive.py: error: prot: Key 'prot' not in 'DriveConfig'"),
    # retired: its one line names what to write instead
    ("drive.py", "slow_in_bends=true", "drive.py: error: slow_in_bends: retired; use speed_source=bends"),
    ("evaluate.py", "slow_in_bends=false", "evaluate.py: error: slow_in_bends: retired; use "
                                           "speed_source=bends"),
    ("demo.py", "slow_in_bends=true", "demo.py: error: slow_in_bends: retired; use speed_source=bends"),
])
def test_scripts_refuse_a_bad_command_line_in_one_line_exit_2(tmp_path: Path, name: str,
                                                              override: str, line: str) -> None:
    result = script(tmp_path, name, override)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(line), result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing ran: no run folder, no MLflow store


def test_slow_in_bends_is_gone_from_the_code() -> None:
    from bc.drive.controller import SpeedController

    with pytest.raises(TypeError):
        SpeedController(slow_in_bends=True)  # type: ignore[call-arg]
    assert SpeedController(speed_source="bends").target_speed(1.0) < SpeedController().set_speed + 1


def test_no_config_is_read_by_hand() -> None:
    """Settings are attributes of the typed config, not `cfg.get(...)` with a fallback."""
    root = CONF_DIR.parent
    found = [f"{path.relative_to(root)}:{number}" for folder in ("bc", "scripts")
             for path in sorted((root / folder).rglob("*.py"))
             for number, text in enumerate(path.read_text().splitlines(), 1) if "cfg.get(" in text]
    assert found == []
