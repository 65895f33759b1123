"""Frame cache, datasets, augmentation signs, splits, balancing and the configs, on real JPEGs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import CONF_DIR
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from bc.cli import bc_error_in, composition_error
from bc.data.augment import SteeringAugment, shift_horizontal
from bc.data.batch_augment import BatchAugment
from bc.data.balance import balance_from_config, balance_indices
from bc.data.datamodule import DrivingDataModule
from bc.data.split import block_ids, split_rows
from bc.data.synthetic import HOOD_Y, ROAD_RGB, render_frame, write_recording
from bc.errors import ConfigError
from bc.core.images import read_rgb
from bc.core.preprocess import Preprocess

NVIDIA = Preprocess()  # 66x200 YUV, the PilotNet default
PLAIN = {"enabled": False}


def option_names(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def road_centre_column(rgb: np.ndarray, row: int) -> float:
    """Mean column of road-coloured pixels in one image row (the road's position in the picture)."""
    distance = np.abs(rgb[row].astype(int) - np.array(ROAD_RGB)).sum(axis=1)
    columns = np.flatnonzero(distance < 60)
    assert len(columns) > 5, "no road found in the row"
    return float(columns.mean())


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    root = tmp_path_factory.mktemp("recordings")
    return [
        write_recording(root / "lap1", rows=48, seed=0),
        write_recording(root / "lap2", rows=36, variant="windows", seed=1),
    ]


def datamodule(paths, tmp_path, **overrides) -> DrivingDataModule:
    settings = dict(
        preprocess=NVIDIA,
        val_fraction=0.0,
        balance=PLAIN,
        batch_size=16,
        cache_dir=tmp_path / "cache",
    )
    settings.update(overrides)
    return DrivingDataModule([str(path) for path in paths], **settings)


@pytest.mark.parametrize("model", option_names("model"))
def test_batches_match_each_models_declared_input(model, recordings, tmp_path, compose):
    cfg = compose(
        "train",
        [
            f"model={model}",
            f"data.paths=[{recordings[0]}]",
            f"data.cache_dir={tmp_path}",
            "data.num_workers=0",
            "data.block_rows=8",
        ],
    )
    net = instantiate(cfg.model)
    dm = instantiate(cfg.data, augmentation=instantiate(cfg.augmentation))
    assert dm.spec == net.preprocess_spec  # data.preprocess is the model's (${model.preprocess})
    dm.setup("fit")
    assert dm.spec == net.preprocess_spec.with_frame_size(320, 160)  # taken from the frames
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        x, y = next(iter(loader))
        assert x.dtype == torch.float32 and y.dtype == torch.float32
        assert (
            tuple(x.shape[1:]) == net.input_shape and x.shape[0] == y.shape[0] and y.shape[1] == 1
        )
        assert 0.0 <= float(x.min()) and float(x.max()) <= 255.0 and float(x.max()) > 100
        assert net(x).shape == y.shape
    x, y = dm.train_set[0]
    assert tuple(x.shape) == net.input_shape and tuple(y.shape) == (1,)


def test_side_cameras_get_corrections_with_the_right_sign(recordings, tmp_path):
    dm = datamodule(
        recordings[:1], tmp_path, cameras=["center", "left", "right"], steering_correction=0.25
    )
    dm.setup()
    rows = dm.stats["train_rows_balanced"]
    centre, left, right = (dm.train_set.steering[i * rows : (i + 1) * rows] for i in range(3))
    assert np.allclose(left, centre + 0.25) and np.allclose(right, centre - 0.25)
    # The physical picture agrees: the left camera sees the road further right, as a car left of
    # the lane centre does, and positive steering = turn right.
    table = dm.table
    near = HOOD_Y - 5
    for index in range(0, len(table), 7):
        c, l, r = (
            road_centre_column(read_rgb(table[camera][index]), near)
            for camera in ("center", "left", "right")
        )
        assert l > c + 5 and r < c - 5


def test_flip_negates_steering_and_mirrors_the_picture():
    frame = NVIDIA.geometry(render_frame(0.4))
    image, steering = SteeringAugment(flip_prob=1.0)(frame, 0.4)
    assert steering == pytest.approx(-0.4)
    assert np.array_equal(image, frame[:, ::-1])
    unchanged, same = SteeringAugment(flip_prob=0.0)(frame, 0.4)
    assert same == 0.4 and np.array_equal(unchanged, frame)


def test_shift_right_means_steer_right():
    rgb = render_frame(0.0)
    row = HOOD_Y - 5
    shifted = shift_horizontal(rgb, 12)
    assert road_centre_column(shifted, row) == pytest.approx(
        road_centre_column(rgb, row) + 12, abs=1.5
    )
    # The synthetic scene of a car that must steer right shows the road further right: same sign.
    assert road_centre_column(render_frame(0.3), row) > road_centre_column(rgb, row)
    assert np.array_equal(shifted[:, :12], np.repeat(rgb[:, :1], 12, axis=1))  # border replicated

    frame = NVIDIA.geometry(rgb)
    augment = SteeringAugment(flip_prob=0.0, shift_px=15, steering_per_px=0.01, seed=1)
    seen = set()
    for _ in range(40):
        image, steering = augment(frame, 0.1)
        dx = round((steering - 0.1) / 0.01)
        assert abs(dx) <= 15 and np.array_equal(image, shift_horizontal(frame, dx))
        seen.add(np.sign(dx))
    assert seen >= {-1, 1}


def test_per_sample_photometric_pipeline_runs_and_keeps_labels(compose):
    cfg = compose("train", ["augmentation=per_sample"])
    augment = instantiate(cfg.augmentation)
    augment.flip_prob, augment.shift_px = 0.0, 0
    frame = NVIDIA.geometry(render_frame(0.2))
    outputs = [augment(frame, 0.2) for _ in range(10)]
    assert all(
        steering == 0.2 and image.shape == frame.shape and image.dtype == np.uint8
        for image, steering in outputs
    )
    assert any(not np.array_equal(image, frame) for image, _ in outputs)


def test_block_split_has_no_overlap_and_keeps_blocks_whole():
    recordings = np.array(["a"] * 95 + ["b"] * 50)
    is_val = split_rows(recordings, "blocks", val_fraction=0.25, block_rows=10, seed=3)
    blocks = block_ids(recordings, 10)
    assert len(np.unique(blocks)) == 10 + 5  # blocks never span two recordings
    for block in np.unique(blocks):
        assert len(set(is_val[blocks == block])) == 1  # a block is wholly val or wholly train
    assert 0.2 <= is_val.mean() <= 0.35 and (~is_val).any()
    assert np.array_equal(is_val, split_rows(recordings, "blocks", 0.25, 10, seed=3))  # seeded
    assert not np.array_equal(is_val, split_rows(recordings, "blocks", 0.25, 10, seed=4))
    by_recording = split_rows(recordings, "recording", 0.3, seed=0)
    assert {frozenset(by_recording[recordings == name]) for name in "ab"} == {
        frozenset({True}),
        frozenset({False}),
    }
    with pytest.raises(
        ConfigError, match="data.val_fraction: cannot hold out 20% .* only one recording"
    ):
        split_rows(np.array(["a"] * 20), "recording", 0.2)


def test_datamodule_train_and_val_rows_are_disjoint(recordings, tmp_path):
    dm = datamodule(recordings, tmp_path, val_fraction=0.3, block_rows=6, balance=None)
    dm.setup()
    val = set(dm.val_set.frame_index.tolist())
    train_rows = set((dm.train_set.frame_index // 3).tolist())
    assert val and not train_rows & {index // 3 for index in val}
    assert dm.val_set.frame_index.tolist() == sorted(val) and all(
        index % 3 == 0 for index in val
    )  # centre only


def test_balance_reduces_the_near_zero_bin():
    rng = np.random.default_rng(0)
    steering = np.concatenate(
        [np.zeros(600), rng.uniform(0.05, 0.8, 400) * rng.choice([-1, 1], 400)]
    )
    kept = balance_indices(steering, bins=20, max_per_bin=1.0, zero_threshold=0.01, seed=0)
    before, after = (np.abs(steering) <= 0.01).sum(), (np.abs(steering[kept]) <= 0.01).sum()
    assert after < before / 5 and after > 0
    assert (np.abs(steering[kept]) > 0.01).sum() == 400  # the turns are all kept
    assert len(balance_indices(steering, cap=50, zero_threshold=0.01)) == 450
    assert len(balance_from_config(steering, {"enabled": False})) == 1000


def test_cache_decodes_each_frame_once_and_is_reused(recordings, tmp_path):
    dm = datamodule(
        recordings, tmp_path, val_fraction=0.25, block_rows=6, augmentation=SteeringAugment(seed=0)
    )
    dm.setup()  # decodes every frame the samples use, once
    frames = len(set(dm.train_set.frame_index.tolist()) | set(dm.val_set.frame_index.tolist()))
    assert dm.frames.decodes == frames
    for _ in range(2):
        for loader in (dm.train_dataloader(), dm.val_dataloader()):
            for _batch in loader:
                pass
    assert dm.frames.decodes == frames  # training decodes nothing
    # A later run on the same recordings and preprocessing reuses the cache file: no decoding.
    again = datamodule(recordings, tmp_path, val_fraction=0.25, block_rows=6)
    again.setup()
    first = [batch[0] for batch in again.val_dataloader()]
    assert again.frames.decodes == 0
    # Frames really come from the cache: with every JPEG gone, batches still load identically.
    for folder in recordings:
        for image in (folder / "IMG").glob("*.jpg"):
            os.rename(image, image.with_suffix(".moved"))
    try:
        assert all(torch.equal(a, b[0]) for a, b in zip(first, again.val_dataloader()))
    finally:
        for folder in recordings:
            for image in (folder / "IMG").glob("*.moved"):
                os.rename(image, image.with_suffix(".jpg"))


def test_cache_is_shared_with_worker_processes(recordings, tmp_path):
    dm = datamodule(recordings[1:], tmp_path, num_workers=2, cameras=["center"], batch_size=8)
    dm.setup()
    decoded = dm.frames.decodes
    assert decoded == len(dm.train_set)
    from_workers = [batch[0] for batch in dm._loader(dm.train_set, shuffle=False)]
    dm.num_workers = 0
    in_process = [batch[0] for batch in dm._loader(dm.train_set, shuffle=False)]
    # The workers read the frames the setup decoded into the shared file: same bytes, no decoding.
    assert len(from_workers) == len(in_process) > 1
    assert all(torch.equal(a, b) for a, b in zip(from_workers, in_process))
    assert dm.frames.decodes == decoded


def test_without_cache_every_access_decodes(recordings, tmp_path):
    dm = datamodule(recordings[:1], tmp_path, cache="none", cameras=["center"])
    dm.setup()  # checks every frame once
    for _ in range(2):
        for _batch in dm.train_dataloader():
            pass
    assert dm.frames.decodes == 3 * len(dm.train_set)
    assert not (tmp_path / "cache").exists()


def test_skip_mode_trains_on_the_good_rows(tmp_path):
    folder = write_recording(tmp_path / "holes", rows=10)
    next((folder / "IMG").glob("left_*")).unlink()
    with pytest.raises(Exception, match="1 bad row"):
        datamodule([folder], tmp_path).setup()
    dm = datamodule([folder], tmp_path, on_bad_row="skip")
    dm.setup()
    assert dm.stats["rows"] == 9
    centre_only = datamodule([folder], tmp_path, cameras=["center"])
    centre_only.setup()  # the missing left image does not matter without the left camera
    assert centre_only.stats["rows"] == 10


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"val_fraction": 1.0}, r"data.val_fraction: expected a number in \[0, 1\), got 1.0"),
        ({"val_fraction": -0.1}, "data.val_fraction"),
        ({"val_fraction": "abc"}, r"data.val_fraction: expected a number in \[0, 1\), got 'abc'"),
        ({"cameras": ["center", "roof"]}, "data.cameras: expected distinct names"),
        ({"cameras": []}, "data.cameras"),
        ({"split": "random"}, "data.split: expected one of"),
        ({"batch_size": 0}, "data.batch_size: expected an integer >= 1, got 0"),
        ({"batch_size": 2.5}, "data.batch_size: expected an integer >= 1, got 2.5"),
        ({"num_workers": True}, "data.num_workers"),
        ({"steering_correction": float("nan")}, "data.steering_correction: expected a finite"),
        ({"balance": {"bins": 10, "zero": 0.1}}, "data.balance: unknown key"),
        ({"balance": {"bins": 0}}, "data.balance.bins: expected an integer >= 1, got 0"),
        ({"balance": {"max_per_bin": "lots"}}, "data.balance.max_per_bin"),
        ({"balance": {"enabled": "yes"}}, "data.balance.enabled: expected true or false"),
        ({"on_bad_row": "ignore"}, "data.on_bad_row"),
        ({"cache": "ram"}, "data.cache"),
        ({"block_seconds": 0}, "data.block_seconds"),
        ({"block_rows": 0}, "data.block_rows"),
        ({"verify_images": "no"}, "data.verify_images"),
        ({"augment_on": "gpu"}, r"data.augment_on: expected one of \['auto', 'loader', 'device'\]"),
        ({"augmentation": lambda frame, steering: (frame, steering)},
         "augmentation: expected a BatchAugment or SteeringAugment"),
        ({"preprocess": {"height": 66, "colour": "yuv"}}, "unknown field"),
        ({"preprocess": None}, "data.preprocess"),
    ],
)
def test_bad_settings_are_config_errors_naming_the_field(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        datamodule(["somewhere"], tmp_path, **overrides)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "augmentation.flip_prob=abc",
            "augmentation.flip_prob: expected a number in [0, 1], got 'abc'",
        ),
        (
            "augmentation.flip_prob=1.5",
            "augmentation.flip_prob: expected a number in [0, 1], got 1.5",
        ),
        (
            "augmentation.shift_px=-3",
            "augmentation.shift_px: expected a number of pixels >= 0, got -3",
        ),
        # A shift as wide as the model input (small: 100 columns) would fail mid-epoch.
        (
            "augmentation.shift_px=100",
            "augmentation.shift_px: expected fewer pixels than the model"
            " input is wide (100), got 100",
        ),
    ],
)
def test_bad_augmentation_settings_are_config_errors(override, message, compose, tmp_path):
    cfg = compose("train", ["model=small", override, f"data.paths=[{tmp_path}]"])
    with pytest.raises(Exception) as info:
        instantiate(cfg.data, augmentation=instantiate(cfg.augmentation))
    found = bc_error_in(info.value)
    assert isinstance(found, ConfigError) and str(found) == message


@pytest.mark.parametrize("paths", [[], [None], {"lap": "data/lap"}])
def test_paths_must_be_a_list_of_folders(paths):
    with pytest.raises(ConfigError, match="data.paths: expected a list of recording folders"):
        DrivingDataModule(paths, NVIDIA)


def test_settings_are_checked_from_the_config_before_any_data_is_read(compose, tmp_path):
    cfg = compose("train", ["model=small", f"data.paths=[{tmp_path / 'missing'}]"])
    assert isinstance(instantiate(cfg.data), DrivingDataModule)  # no data read, no run needed
    with pytest.raises(ConfigCompositionException) as info:  # the type: bc/core/configs.py's schema
        compose("train", ["data.val_fraction=abc", f"data.paths=[{tmp_path / 'missing'}]"])
    assert composition_error(info.value).startswith("data.val_fraction: ")  # what scripts print
    bad = compose("train", ["data.val_fraction=1.5", f"data.paths=[{tmp_path / 'missing'}]"])
    with pytest.raises(Exception) as info:
        instantiate(bad.data)
    found = bc_error_in(info.value)  # the range: the datamodule (one line, bc.cli)
    assert isinstance(found, ConfigError)
    assert str(found) == "data.val_fraction: expected a number in [0, 1), got 1.5"


@pytest.mark.parametrize("data_option", option_names("data"))
@pytest.mark.parametrize("augmentation_option", option_names("augmentation"))
def test_every_data_and_augmentation_option_composes_and_instantiates(
    data_option, augmentation_option, recordings, tmp_path, compose
):
    cfg = compose(
        "train",
        [
            f"data={data_option}",
            f"augmentation={augmentation_option}",
            "model=small",
            f"data.paths=[{recordings[0]},{recordings[1]}]",
            f"data.cache_dir={tmp_path}",
            "data.num_workers=0",
            "data.block_rows=6",
        ],
    )
    augmentation = instantiate(cfg.augmentation)
    kind = SteeringAugment if augmentation_option == "per_sample" else BatchAugment
    assert isinstance(augmentation, kind)
    dm = instantiate(cfg.data, augmentation=augmentation)
    assert isinstance(dm, DrivingDataModule) and dm.augmentation is augmentation
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert tuple(x.shape[1:]) == (3, cfg.model.preprocess.height, cfg.model.preprocess.width)
    assert len(dm.val_set) > 0
