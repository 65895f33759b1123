"""The target-speed output (`model.outputs=[steering,speed]`): the model option, its labels,
loss and metric, how it is saved, and `scripts/drive.py speed_source=model` following the
predicted speed over the simulator's real Socket.IO protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import compose_config
from hydra.utils import instantiate
from mlflow import MlflowClient
from omegaconf import OmegaConf
from unity_client import UnityClient, telemetry

from bc.inference import store
from bc.inference import artifact

from bc.core import udacity
from bc.data.augment import SteeringAugment
from bc.data.datamodule import DrivingDataModule
from bc.data.synthetic import render_frame, speed_mph, write_recording
from bc.drive.launch import drive_server
from bc.inference.predictor import Predictor
from bc.errors import ConfigError
from bc.core.images import encode_jpeg
from bc.models import build_model
from bc.models.base import check_outputs
from bc.models.small import SmallNet
from bc.training.module import SteeringModule
from bc.core.preprocess import Preprocess
from bc.training.train import train

BOTH = ["steering", "speed"]
SMALL = Preprocess(height=33, width=100)
EXPERIMENT = "speed"
MEASURED_MPH = 25.0  # the car's speed in every served frame
BEND = 0.7  # the synthetic recording's sharpest steering


@pytest.mark.parametrize("model", ["commaai", "nvidia", "small"])
def test_every_model_predicts_steering_or_steering_and_speed(model):
    config = compose_config("train", [f"model={model}"]).model
    assert list(config.outputs) == ["steering"]  # the default: models and runs saved before
    x = torch.rand(3, *build_model(config).input_shape) * 255
    assert build_model(config).eval()(x).shape == (3, 1)
    both = compose_config("train", [f"model={model}", "model.outputs=[steering,speed]"]).model
    net = build_model(both).eval()
    assert net.outputs == ("steering", "speed") and net(x).shape == (3, 2)


@pytest.mark.parametrize("bad", [["speed"], ["steering", "throttle"], "steering",
                                 ["speed", "steering"], ["steering", "speed", "speed"]])
def test_outputs_other_than_steering_then_speed_are_refused(bad):
    with pytest.raises(ConfigError, match=r"^model.outputs: expected \[steering\] or "
                                          r"\[steering, speed\], got "):
        check_outputs(bad, "model.outputs")
    with pytest.raises(ConfigError, match=r"^outputs: expected"):
        SmallNet(SMALL, outputs=bad)


def test_datamodule_gives_every_camera_and_augmentation_the_rows_speed(tmp_path):
    recording = write_recording(tmp_path / "lap", rows=30, seed=2)
    flip_and_shift = SteeringAugment(flip_prob=1.0, shift_px=10, steering_per_px=0.01, seed=0)
    dm = DrivingDataModule([str(recording)], SMALL, augmentation=flip_and_shift,
                           val_fraction=0.2, block_rows=5, balance={"enabled": False},
                           cache_dir=str(tmp_path / "cache"), outputs=BOTH)
    dm.setup()
    recorded = dm.table[["steering", "speed"]].to_numpy(np.float32)
    assert recorded[:, 1].min() < 20.0 < 29.0 < recorded[:, 1].max()  # speed varies with bends
    labels = {}
    for name, dataset, cameras in (("train", dm.train_set, {0, 1, 2}), ("val", dm.val_set, {0})):
        _, y = dataset.__getitems__(list(range(len(dataset))))
        # One recording: a sample's frame slot is row * 3 + camera.
        rows, camera = np.divmod(dataset.frame_index, len(udacity.CAMERAS))
        assert set(camera.tolist()) == cameras and y.shape == (len(dataset), 2)
        assert torch.allclose(y[:, 1], torch.from_numpy(recorded[rows, 1] / udacity.TOP_SPEED_MPH))
        labels[name] = (y[:, 0].numpy(), recorded[rows, 0] + np.array([0.0, 0.2, -0.2])[camera])
    # Training steering labels were flipped (negated, then shifted by at most 0.1) and got the
    # side cameras' correction, while the speed labels above stayed the row's.
    flipped, corrected = labels["train"]
    assert np.abs(flipped + corrected).max() <= 0.1 + 1e-6 and np.abs(flipped).max() > 0.3
    assert np.allclose(*labels["val"])  # validation: centre camera, unaugmented
    # Steering-only models get N x 1 labels, as before.
    steering_only = DrivingDataModule([str(recording)], SMALL, val_fraction=0.2, block_rows=5,
                                      cache_dir=str(tmp_path / "cache"))
    steering_only.setup()
    assert next(iter(steering_only.val_dataloader()))[1].shape[1] == 1
    # The composed config hands the model's outputs to the datamodule.
    cfg = compose_config("train", ["model=small", "model.outputs=[steering,speed]",
                                   f"data.paths=[{recording}]"])
    assert instantiate(cfg.data).outputs == ("steering", "speed")


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)` but the `self.trainer`")
def test_module_adds_the_weighted_speed_loss_and_reports_the_speed_error_in_mph():
    torch.manual_seed(0)
    net = SmallNet(SMALL, outputs=BOTH)
    x = torch.rand(4, *net.input_shape) * 255
    y = torch.tensor([[0.5, 0.9], [-0.5, 0.6], [0.0, 1.0], [0.25, 0.8]])
    module = SteeringModule(net, optimizer=torch.optim.Adam, speed_loss_weight=0.25)
    with torch.no_grad():
        prediction = net(x)
        expected = (torch.mean((prediction[:, 0] - y[:, 0]) ** 2)
                    + 0.25 * torch.mean((prediction[:, 1] - y[:, 1]) ** 2))
        assert module.training_step((x, y), 0).item() == pytest.approx(expected.item(), rel=1e-5)
        module.validation_step((x, y), 0)
    speed_error = (prediction[:, 1] - y[:, 1]).abs().mean() * udacity.TOP_SPEED_MPH
    assert module.val_speed_mae.compute().item() == pytest.approx(speed_error.item(), rel=1e-5)
    steering_error = (prediction[:, 0] - y[:, 0]).abs().mean()
    assert module.val_mae.compute().item() == pytest.approx(steering_error.item(), rel=1e-5)
    with pytest.raises(ValueError, match=r"expected N x 2 targets \(steering, speed"):
        module.training_step((x, y[:, :1]), 0)
    with pytest.raises(ConfigError, match=r"^speed_loss_weight: expected a number >= 0, got -1"):
        SteeringModule(net, optimizer=torch.optim.Adam, speed_loss_weight=-1)


@pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")
def test_models_saved_before_the_speed_output_still_load_as_steering_models(tmp_path):
    config = OmegaConf.to_container(compose_config("train", ["model=small"]).model)
    net = build_model(config).eval()
    folder = artifact.save_model(net, config, tmp_path / "old")
    old_config = yaml.safe_load((folder / artifact.CONFIG_FILE).read_text())
    assert old_config.pop("outputs") == ["steering"]
    (folder / artifact.CONFIG_FILE).write_text(yaml.safe_dump(old_config))  # as saved before
    assert artifact.load_model_folder(folder).outputs == ("steering",)
    old_export = tmp_path / "old.ts"  # a TorchScript export with only the preprocessing
    traced = torch.jit.trace(net, torch.zeros(1, *net.input_shape))
    torch.jit.save(traced, str(old_export), _extra_files={
        artifact.SPEC_EXTRA_FILE: json.dumps(net.preprocess_spec.to_dict())})
    assert artifact.load_exported(old_export).outputs == ("steering",)


# --------------------------------------------------------------------------------------------
# End to end: a speed model trained on a recording whose speed drops in bends, then served.


@pytest.fixture(scope="module")
def speed_run(tmp_path_factory):
    """A SmallNet with the speed output trained by `bc.training.train` on 160 generated rows; mirrored
    frames (flips keep the speed) make up for a recording that bends more one way."""
    root = tmp_path_factory.mktemp("speed")
    recording = write_recording(root / "rec", rows=160, seed=3, cameras=("center",))
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    cfg = compose_config("train", [
        "model=small", "model.outputs=[steering,speed]", "augmentation=none",
        "augmentation.flip_prob=0.5",
        f"data.paths=[{recording}]", "data.cameras=[center]", "data.num_workers=0",
        "data.balance.enabled=false", "data.block_rows=10", "data.batch_size=8",
        f"data.cache_dir={root / 'cache'}", "optimizer.lr=3e-3", "trainer.max_epochs=8",
        "callbacks.early_stopping.patience=100", f"experiment_name={EXPERIMENT}",
        f"tracking_uri={uri}", f"output_dir={root / 'out'}"])
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", "")  # MLflow's logger exports it
        run_id = train(cfg)
    return {"root": root, "uri": uri, "run_id": run_id}


def test_a_speed_model_logs_its_speed_error_and_saves_both_outputs(speed_run):
    client = MlflowClient(tracking_uri=speed_run["uri"])
    run = client.get_run(speed_run["run_id"])
    assert run.data.params["model.outputs"] == '["steering", "speed"]'
    speed_errors = [m.value for m in client.get_metric_history(run.info.run_id, "val/speed_mae")]
    assert len(speed_errors) == 8 and "val/mae" in run.data.metrics
    # It learned the speed: the recorded speeds span 30 * (1 - 0.6 * 0.7) = 17.4 .. 30 mph.
    assert min(speed_errors) < 1.5 < speed_errors[0], speed_errors
    loaded = store.load_model(run.info.run_id, speed_run["uri"])
    assert loaded.outputs == ("steering", "speed")
    model_ts = next((speed_run["root"] / "mlruns").rglob(artifact.TORCHSCRIPT_FILE))
    exported = artifact.load_exported(model_ts)
    assert exported.outputs == ("steering", "speed") and exported.spec == loaded.spec
    batch = torch.rand(3, *loaded.spec.input_shape, generator=torch.Generator().manual_seed(0))
    batch *= 255
    with torch.no_grad():
        assert exported.net(batch).shape == (3, 2)
        assert torch.allclose(exported.net(batch), loaded.net(batch), atol=1e-5)


def test_drive_py_throttles_towards_the_speed_the_model_predicts(speed_run):
    """At the same 25 mph, a straight frame accelerates and a sharp bend brakes, each by the
    PI step towards exactly the target speed the model predicts for that frame."""
    controller = compose_config("drive").controller
    predictor = Predictor(store.load_model(speed_run["run_id"], speed_run["uri"]))
    overrides = [f"run_id={speed_run['run_id']}", f"tracking_uri={speed_run['uri']}",
                 "speed_source=model"]
    rng = np.random.default_rng(5)
    throttles = {}
    with drive_server(overrides, speed_run["root"]) as server:
        assert "speed_source=model" in server["log"].read_text()
        for steering in (0.0, -BEND, BEND):
            jpeg = encode_jpeg(render_frame(steering, rng), udacity.UNITY_JPEG_QUALITY)
            with UnityClient(server["port"]) as client:  # a fresh PI: the server resets it
                event, data = client.send_telemetry(telemetry(jpeg, speed=MEASURED_MPH))
            assert event == "steer" and set(data) == {"steering_angle", "throttle"}
            target = predictor.predict_jpeg(jpeg).target_speed
            assert target == pytest.approx(speed_mph(steering), abs=3.0)
            target = min(udacity.TOP_SPEED_MPH, max(controller.min_speed, target))
            error = target - MEASURED_MPH
            expected = max(-1.0, min(1.0, (controller.kp + controller.ki) * error))
            throttles[steering] = float(data["throttle"])
            assert throttles[steering] == pytest.approx(expected, abs=1e-5)
    assert throttles[0.0] > 0.2 and throttles[-BEND] < -0.2 and throttles[BEND] < -0.2, throttles
