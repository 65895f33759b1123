"""Train/serve parity and camera frame sizes: the datamodule's batches are made by the same
`Preprocess` the drive predictor runs, down to the last bit, for any camera frame size."""

from __future__ import annotations

import pytest
import torch
from conftest import CONF_DIR
from hydra.utils import instantiate

from bc.data.datamodule import DrivingDataModule
from bc.data.log import DrivingLogError, detect_frame_size
from bc.data.synthetic import write_recording
from bc.inference.predictor import Predictor
from bc.core.images import read_rgb
from bc.core.preprocess import Preprocess
from bc.inference.artifact import LoadedModel

MODELS = sorted(path.stem for path in (CONF_DIR / "model").glob("*.yaml"))


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    return write_recording(tmp_path_factory.mktemp("parity") / "lap", rows=30, seed=4)


@pytest.mark.parametrize("augment_on", ["loader", "device"])
@pytest.mark.parametrize("model", MODELS)
def test_train_serve_parity(model, augment_on, recording, tmp_path, compose):
    """A validation sample of the real datamodule equals (bit for bit) what the drive
    predictor feeds the net for the same JPEG, whether the batch is made ready in the loader
    or on the training device (`on_after_batch_transfer`, here the CPU)."""
    cfg = compose(
        "train",
        [
            f"model={model}",
            "augmentation=none",
            "data.cameras=[center]",
            f"data.paths=[{recording}]",
            f"data.cache_dir={tmp_path}",
            "data.num_workers=0",
            "data.block_rows=5",
            "data.batch_size=4",
            f"data.augment_on={augment_on}",
        ],
    )
    net = instantiate(cfg.model)
    dm = instantiate(cfg.data, augmentation=instantiate(cfg.augmentation))
    dm.setup("fit")
    # What training stores with the model: its preprocessing plus the frames' size.
    spec = net.preprocess_spec.with_frame_size(*detect_frame_size(cfg.data.paths, ["center"]))
    assert dm.spec == spec
    predictor = Predictor(LoadedModel(net=net, spec=spec, source="test"))

    val_files = dm.table.loc[dm.table["split"] == "val", "center"].tolist()
    assert len(val_files) == len(dm.val_set) >= 5
    checked = 0
    for batch_number, batch in enumerate(dm.val_dataloader()):
        x, _ = dm.on_after_batch_transfer(batch, 0)
        for position in range(len(x)):
            jpeg = val_files[batch_number * dm.batch_size + position]
            served = predictor.model_input(read_rgb(jpeg))  # the JPEG decoded as the server does
            assert served.dtype == x.dtype and served.shape == (1, *net.input_shape)
            assert torch.equal(x[position : position + 1], served), jpeg
            checked += 1
    assert checked == len(val_files)


def test_frames_of_another_simulator_train_at_their_own_size(tmp_path):
    folder = write_recording(
        tmp_path / "square", rows=24, frame_size=(96, 96), cameras=("center",), seed=2
    )
    spec = Preprocess(crop_top=0, crop_bottom=12, height=33, width=100)
    dm = DrivingDataModule(
        [str(folder)],
        spec.to_dict(),
        cameras=["center"],
        val_fraction=0.25,
        block_rows=4,
        cache_dir=str(tmp_path / "cache"),
        balance={"enabled": False},
    )
    dm.setup()
    assert dm.spec.frame_size == (96, 96) and dm.spec == spec.with_frame_size(96, 96)
    x, y = next(iter(dm.train_dataloader()))
    assert tuple(x.shape[1:]) == (3, 33, 100) and float(x.max()) > 100
    # A model trained on 320x160 frames refuses this recording when the log is loaded,
    # naming the file, the row and both sizes.
    udacity_model = DrivingDataModule(
        [str(folder)],
        spec.with_frame_size(320, 160),
        cameras=["center"],
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(DrivingLogError) as info:
        udacity_model.setup()
    message = str(info.value)
    assert f"{folder / 'driving_log.csv'} row 1: center image center_" in message
    assert "is 96x96, but the model's frame size" in message and "is 320x160" in message


def test_without_image_checks_a_frame_of_another_size_is_still_named_at_setup(tmp_path):
    folder = write_recording(tmp_path / "lap", rows=6, cameras=("center",))
    odd = write_recording(tmp_path / "odd", rows=1, frame_size=(96, 96), cameras=("center",))
    victim = sorted((folder / "IMG").glob("center_*"))[4]
    victim.write_bytes(next((odd / "IMG").glob("center_*")).read_bytes())
    dm = DrivingDataModule(
        [str(folder)],
        Preprocess(frame_width=320, frame_height=160),
        cameras=["center"],
        val_fraction=0.0,
        verify_images=False,
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(DrivingLogError, match=rf"driving_log.csv row 5: .*{victim.name}.*96x96"):
        dm.setup()
    assert read_rgb(victim).shape == (96, 96, 3)  # the swapped-in frame really is 96x96
