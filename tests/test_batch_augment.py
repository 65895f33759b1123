"""Augmentation of whole batches (bc.data.batch_augment) on real frames: labels follow the
picture, photometric changes leave labels alone, seeds repeat, colour is bit-exact, and a
training run makes its batches ready on the device (on_after_batch_transfer)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from bc.data.augment import shift_horizontal
from bc.data.batch_augment import (
    BatchAugment,
    BrightnessContrast,
    GaussianBlur,
    GaussianNoise,
    Saturation,
    Shadow,
    color_batch,
    model_batch,
)
from bc.data.datamodule import DrivingDataModule
from bc.data.dataset import FramesBatch
from bc.data.synthetic import HOOD_Y, ROAD_RGB, render_frame, write_recording
from bc.errors import ConfigError
from bc.core.preprocess import Preprocess

NVIDIA = Preprocess()
RGB = Preprocess(color_space="rgb")


def cached(frames: list[np.ndarray]) -> torch.Tensor:
    """Model-resolution RGB frames in the frame cache's layout (uint8 N x W x H x 3)."""
    return torch.from_numpy(np.stack([NVIDIA.geometry(f).transpose(1, 0, 2) for f in frames]))


def pictures(x: torch.Tensor) -> np.ndarray:
    """A float RGB batch N x 3 x H x W back to uint8 N x H x W x 3 pictures."""
    return x.permute(0, 2, 3, 1).round().to(torch.uint8).numpy()


def road_centre(picture: np.ndarray, row: int) -> float:
    distance = np.abs(picture[row].astype(int) - np.array(ROAD_RGB)).sum(axis=1)
    columns = np.flatnonzero(distance < 60)
    assert len(columns) > 5, "no road in the row"
    return float(columns.mean())


def labels(steering: list[float], speed: float = 0.7) -> torch.Tensor:
    return torch.tensor([[value, speed] for value in steering], dtype=torch.float32)


def test_flip_mirrors_the_frame_and_negates_steering_only():
    frames = cached([render_frame(0.4), render_frame(-0.2)])
    x, y = BatchAugment(flip_prob=1.0, seed=0)(frames, labels([0.4, -0.2]))
    plain = pictures(model_batch(frames, labels([0, 0]), RGB)[0])
    assert np.array_equal(pictures(x), plain[:, :, ::-1])
    assert y[:, 0].tolist() == pytest.approx([-0.4, 0.2])
    assert torch.equal(y[:, 1], labels([0, 0])[:, 1])  # the speed target stays


def test_shift_moves_the_road_and_steers_towards_it():
    frame = render_frame(0.0)
    frames = cached([frame] * 24)
    x, y = BatchAugment(flip_prob=0.0, shift_px=15, steering_per_px=0.01, seed=1)(
        frames, labels([0.1] * 24))
    plain = NVIDIA.geometry(frame)
    row = int((HOOD_Y - 5 - NVIDIA.crop_top) * NVIDIA.height / 80)  # a row near the car
    signs = set()
    for picture, steering in zip(pictures(x), y[:, 0].tolist()):
        dx = round((steering - 0.1) / 0.01)
        assert abs(dx) <= 15 and np.array_equal(picture, shift_horizontal(plain, dx))
        if dx:  # the road moved right by dx pixels and steering grew by dx * steering_per_px
            assert road_centre(picture, row) == pytest.approx(road_centre(plain, row) + dx, abs=1.5)
        signs.add(int(np.sign(dx)))
    assert signs >= {-1, 1} and torch.equal(y[:, 1], labels([0.1] * 24)[:, 1])


@pytest.mark.parametrize("transform", [
    BrightnessContrast(brightness=0.3, contrast=0.3, p=1.0),
    Saturation(limit=0.5, p=1.0),
    Shadow(intensity=(0.4, 0.6), p=1.0),
    GaussianBlur(sigma=(0.8, 1.2), kernel=5),
    GaussianNoise(std=(0.05, 0.05)),
], ids=lambda transform: type(transform).__name__)
def test_photometric_changes_leave_labels_alone(transform):
    frames = cached([render_frame(s) for s in (-0.3, 0.0, 0.3)] * 4)
    before = labels([-0.3, 0.0, 0.3] * 4)
    x, y = BatchAugment([transform], flip_prob=0.0, shift_px=0, seed=2)(frames, before)
    plain = model_batch(frames, before, RGB)[0]
    assert torch.equal(y, before) and x.shape == plain.shape and x.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 255
    change = x - plain
    assert (change.abs().flatten(1).mean(1) > 0.5).all()  # every sample changed (p=1) ...
    assert not torch.equal(change[0], change[3])  # ... in its own way (same frame, 0 and 3)


def test_shadow_darkens_one_side_of_a_line():
    frames = cached([render_frame(0.0)] * 8)
    x, _ = BatchAugment([Shadow(intensity=(0.5, 0.5), p=1.0)], flip_prob=0.0, seed=3)(
        frames, labels([0.0] * 8))
    plain = model_batch(frames, labels([0.0] * 8), RGB)[0]
    ratio = (x + 1) / (plain + 1)
    dark = ratio < 0.75
    assert dark.any() and (~dark).any() and float(ratio.max()) <= 1.0
    for sample in dark[:, 0]:  # the dark part of each row is one run touching a border
        for row in sample[:: 10]:
            if row.any() and not row.all():
                runs = torch.diff(row.int()).abs().sum()
                assert runs == 1


def test_same_seed_same_batches_another_seed_others(compose):
    augmentation = compose("train", []).augmentation
    frames = cached([render_frame(s) for s in np.linspace(-0.5, 0.5, 16)])
    steering = labels(np.linspace(-0.5, 0.5, 16).tolist())

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        augment = instantiate(augmentation, seed=seed)
        batches = [augment(frames, steering) for _ in range(3)]
        return tuple(torch.cat(part) for part in zip(*batches))

    first, again, other = run(5), run(5), run(6)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])


def test_yuv_on_the_device_is_opencvs_for_every_red_and_green():
    """Every (red, green) pair with blue in steps of 17, 0 to 255 (a million colours; all
    2**24 pass too, in seconds)."""
    red, green, blue = np.meshgrid(np.arange(256), np.arange(256), np.arange(0, 256, 17),
                                   indexing="ij")
    rgb = np.stack([red, green, blue], -1).astype(np.uint8).reshape(256, -1, 3)
    expected = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    converted = color_batch(x, NVIDIA)[0].permute(1, 2, 0)
    assert torch.equal(converted, torch.from_numpy(expected).float())


@pytest.mark.parametrize("kwargs, message", [
    ({"flip_prob": 2}, "augmentation.flip_prob: expected a number in [0, 1], got 2"),
    ({"photometric": [object()]}, "augmentation.photometric: expected transforms of"),
])
def test_bad_settings_name_their_field(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        BatchAugment(**kwargs)
    with pytest.raises(ConfigError, match=r"Shadow.intensity: expected \[low, high\]"):
        Shadow(intensity=[0.6, 0.3])


def test_training_makes_batches_ready_on_the_device(tmp_path, compose):
    """augment_on=device: the loaders hand out uint8 frames; the trainer moves them and the
    datamodule's on_after_batch_transfer augments and converts them, then the step runs."""
    from bc.models import build_model
    from bc.training.module import SteeringModule

    recording = write_recording(tmp_path / "lap", rows=24, seed=3)
    cfg = compose("train", ["model=small"])
    dm = DrivingDataModule([str(recording)], cfg.model.preprocess,
                           augmentation=instantiate(cfg.augmentation, seed=0), batch_size=8,
                           val_fraction=0.25, block_rows=4, cache_dir=str(tmp_path / "cache"),
                           augment_on="device")
    dm.setup("fit")
    raw = next(iter(dm.train_dataloader()))
    assert isinstance(raw, FramesBatch) and raw.frames.dtype == torch.uint8 and raw.augment

    seen = []

    class Recording(SteeringModule):
        def training_step(self, batch, batch_idx):
            seen.append(batch[0])
            return super().training_step(batch, batch_idx)

    net = build_model(cfg.model)
    module = Recording(net, optimizer=lambda params: torch.optim.Adam(params, lr=1e-3))
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    assert seen and all(x.dtype == torch.float32 and tuple(x.shape[1:]) == net.input_shape
                        for x in seen)
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
