"""Lightning datamodule: recordings -> split -> balance -> cameras -> cached, augmented batches.

Batches are `(x, y)`: x float32 N x 3 x H x W with values 0..255 in the model's colour
space (the model normalises), y float32 N x 1 normalised steering (positive = right), or
N x 2 when the model also predicts speed (`outputs: ${model.outputs}`): the second column is
the row's `speed` (mph) as a target (`bc.models.base.speed_to_target`, mph / 30).
Training uses the configured cameras (left label = steering + correction: seen from the
left camera the car must steer right to get where the centre camera is; right camera
the opposite; every camera keeps the row's speed) and augmentation (which changes the
steering only); validation uses the centre camera only, unaugmented, and is never
balanced, so it measures the driving distribution as recorded.

Batches leave the frame cache as uint8 and are augmented and colour-converted whole
(`bc.data.batch_augment.model_batch`) where `augment_on` says: `loader` (in the DataLoader
workers, the CPU's cores; `auto` on a CPU), or `device` (`auto` on a GPU: the uint8 batch is
moved there, from pinned memory without blocking, and made ready in
`on_after_batch_transfer`, so the CPU does little more than copy cached bytes).

Length: one Lightning datamodule whose setup is one pipeline (read, exclude, split, balance,
cameras, cache); its steps share the table they pass along, so they stay together.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from bc.core import udacity
from bc.data.augment import SteeringAugment
from bc.data.batch_augment import BatchAugment, model_batch
from bc.data.balance import BALANCE_KEYS, balance_from_config
from bc.data.dataset import (
    CACHE_MODES,
    DrivingDataset,
    FrameCache,
    FrameOfAnotherSize,
    FramesBatch,
    FrameStore,
    collate_frames,
)
from bc.data.exclusions import EXCLUDED_BY_RECORDING, EXCLUDED_ROWS, drop_excluded
from bc.data.log import (
    ON_BAD_ROW,
    SKIPPED_ROWS,
    DrivingLogError,
    FrameSize,
    first_frame_size,
    fit_frame_size,
    read_driving_logs,
    summarize,
)
from bc.core.settings import flag, integer, number, optional, setting
from bc.data.split import SPLITS, block_rows_for, split_rows
from bc.errors import ConfigError
from bc.models.base import DEFAULT_OUTPUTS, check_outputs, speed_to_target
from bc.core.preprocess import Preprocess

log = logging.getLogger(__name__)

AUGMENT_ON = ("auto", "loader", "device")

DEFAULT_BALANCE = {
    "enabled": True,
    "bins": 25,
    "max_per_bin": 1.0,
    "cap": None,
    "zero_threshold": 0.01,
}


def camera_corrections(correction: float) -> dict[str, float]:
    """Label offset per camera: left sees the car as too far left (steer right, +)."""
    return {"center": 0.0, "left": +correction, "right": -correction}


def _plain(value: Any) -> Any:
    """OmegaConf containers (what Hydra passes) to plain Python."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def as_spec(preprocess: Preprocess | Mapping[str, Any]) -> Preprocess:
    """A Preprocess from the model's spec object or its config section (`${model.preprocess}`)."""
    if isinstance(preprocess, Preprocess):
        return preprocess
    preprocess = _plain(preprocess)
    if not isinstance(preprocess, Mapping):
        raise ConfigError(
            "data.preprocess: expected the model's preprocess section (${model.preprocess}) or a"
            f" Preprocess, got {preprocess!r}"
        )
    return Preprocess.from_dict(preprocess)



def worker_context() -> multiprocessing.context.BaseContext | None:
    """The start method for DataLoader workers: the default one, unless this process runs
    inside a joblib (loky) worker (hydra/launcher=parallel). There the default start method is
    loky's own, whose process launcher only starts loky's process class; the DataLoader's plain
    `Process` then fails (`'Process' object has no attribute 'env'`). So use the platform's
    standard default there (the first of `get_all_start_methods()`)."""
    standard = multiprocessing.get_all_start_methods()
    if multiprocessing.get_start_method(allow_none=True) in (None, *standard):
        return None  # torch's usual choice
    return multiprocessing.get_context(standard[0])

class DrivingDataModule(pl.LightningDataModule):
    """Udacity recordings (`paths`) to train/val DataLoaders for one model's preprocessing.

    Every setting is checked here, in the constructor (a `ConfigError` naming `data.<field>`),
    so a bad value fails before a training run starts; `setup` then reads the data.
    """

    def __init__(
        self,
        paths: Sequence[str],
        preprocess: Preprocess | Mapping[str, Any],
        augmentation: BatchAugment | SteeringAugment | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.2,
        split: str = "blocks",
        block_seconds: float | None = 10.0,
        block_rows: int | None = None,
        cameras: Sequence[str] = udacity.CAMERAS,
        steering_correction: float = 0.2,
        balance: Mapping[str, Any] | None = None,
        seed: int = 0,
        on_bad_row: str = "error",
        verify_images: bool = True,
        cache: str = "disk",
        cache_dir: str | os.PathLike | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        outputs: Sequence[str] = DEFAULT_OUTPUTS,
        augment_on: str = "auto",
    ) -> None:
        super().__init__()
        paths = _plain(paths)
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        if (
            not isinstance(paths, (list, tuple))
            or not paths
            or not all(isinstance(path, (str, os.PathLike)) for path in paths)
        ):
            raise ConfigError(f"data.paths: expected a list of recording folders, got {paths!r}")
        self.paths = [str(Path(path).expanduser()) for path in paths]
        self.spec = as_spec(preprocess)
        kinds = (BatchAugment, SteeringAugment)
        if augmentation is not None and not isinstance(augmentation, kinds):
            raise ConfigError(
                "augmentation: expected a BatchAugment or SteeringAugment (choose one with"
                f" augmentation=...), got {type(augmentation).__name__}"
            )
        shift = getattr(augmentation, "shift_px", 0)
        if shift >= self.spec.width:
            raise ConfigError(
                f"augmentation.shift_px: expected fewer pixels than the model input is wide"
                f" ({self.spec.width}), got {shift:g}"
            )
        self.augmentation = augmentation
        self.batch_size = setting(
            "data.batch_size", batch_size, integer, lambda v: v >= 1, "an integer >= 1"
        )
        self.num_workers = setting(
            "data.num_workers", num_workers, integer, lambda v: v >= 0, "an integer >= 0"
        )
        self.val_fraction = setting(
            "data.val_fraction", val_fraction, number, lambda v: 0 <= v < 1, "a number in [0, 1)"
        )
        self.split = setting(
            "data.split", split, str, lambda v: v in SPLITS, f"one of {list(SPLITS)}"
        )
        block_seconds = setting(
            "data.block_seconds",
            block_seconds,
            optional(number),
            lambda v: v is None or v > 0,
            "a number of seconds > 0 (or null with block_rows)",
        )
        block_rows = setting(
            "data.block_rows",
            block_rows,
            optional(integer),
            lambda v: v is None or v >= 1,
            "an integer >= 1 (or null)",
        )
        if block_rows is None and block_seconds is None:
            raise ConfigError(
                "data.block_seconds: expected a number of seconds > 0 when"
                " data.block_rows is null, got None"
            )
        self.block_rows = block_rows_for(block_seconds, block_rows)
        cameras = _plain(cameras)
        self.cameras = setting(
            "data.cameras",
            cameras,
            tuple,
            lambda v: v and len(set(v)) == len(v) and set(v) <= set(udacity.CAMERAS),
            f"distinct names from {list(udacity.CAMERAS)}",
        )
        self.steering_correction = setting(
            "data.steering_correction",
            steering_correction,
            number,
            lambda v: True,
            "a finite number",
        )
        self.balance = self._check_balance(_plain(balance))
        self.seed = setting("data.seed", seed, integer, lambda v: v >= 0, "an integer >= 0")
        self.on_bad_row = setting(
            "data.on_bad_row",
            on_bad_row,
            str,
            lambda v: v in ON_BAD_ROW,
            f"one of {list(ON_BAD_ROW)}",
        )
        self.verify_images = flag("data.verify_images", verify_images)
        self.cache = setting(
            "data.cache", cache, str, lambda v: v in CACHE_MODES, f"one of {list(CACHE_MODES)}"
        )
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.pin_memory = flag("data.pin_memory", pin_memory)
        self.drop_last = flag("data.drop_last", drop_last)
        self.augment_on = setting(
            "data.augment_on", augment_on, str, lambda v: v in AUGMENT_ON,
            f"one of {list(AUGMENT_ON)}",
        )
        try:
            self.outputs = check_outputs(_plain(outputs), "data.outputs")
        except ConfigError as error:  # the config sets it to ${model.outputs}: say so
            raise ConfigError(f"{error} (data.outputs follows model.outputs)") from None
        self.table = None
        self.frames: FrameStore | None = None
        self.train_set: DrivingDataset | None = None
        self.val_set: DrivingDataset | None = None
        self.stats: dict[str, int] = {}

    @staticmethod
    def _check_balance(balance: Mapping[str, Any] | None) -> dict[str, Any]:
        if balance is not None and not isinstance(balance, Mapping):
            raise ConfigError(
                f"data.balance: expected a mapping of {list(BALANCE_KEYS)}, got {balance!r}"
            )
        balance = {**DEFAULT_BALANCE, **dict(balance or {})}
        unknown = sorted(set(balance) - set(BALANCE_KEYS))
        if unknown:
            raise ConfigError(
                f"data.balance: unknown key(s) {unknown}; expected some of {list(BALANCE_KEYS)}"
            )
        return {
            "enabled": flag("data.balance.enabled", balance["enabled"]),
            "bins": setting(
                "data.balance.bins", balance["bins"], integer, lambda v: v >= 1, "an integer >= 1"
            ),
            "max_per_bin": setting(
                "data.balance.max_per_bin",
                balance["max_per_bin"],
                number,
                lambda v: v > 0,
                "a number > 0",
            ),
            "cap": setting(
                "data.balance.cap",
                balance["cap"],
                optional(integer),
                lambda v: v is None or v >= 1,
                "an integer >= 1 (or null)",
            ),
            "zero_threshold": setting(
                "data.balance.zero_threshold",
                balance["zero_threshold"],
                optional(number),
                lambda v: v is None or v >= 0,
                "a number >= 0 (or null)",
            ),
        }

    def _frame_size(self, cameras: Sequence[str]) -> FrameSize:
        """The frame size every frame must have: the model's, or the recordings' first frame's
        (then the preprocessing takes it, as training stores it with the model)."""
        if self.spec.frame_width is not None:
            source = "the model's frame size (preprocess.frame_width x frame_height)"
            size = FrameSize(*self.spec.frame_size, source)
            first_frame_size(self.paths, cameras, size)  # the first frame's header: named early
            return size
        size = first_frame_size(self.paths, cameras)
        self.spec = fit_frame_size(self.spec, size)
        return size

    def setup(self, stage: str | None = None) -> None:
        """Read the logs, split, balance, index frames and decode them into the cache (once;
        later calls reuse it)."""
        if self.train_set is not None:
            return
        needed = tuple(
            camera for camera in udacity.CAMERAS if camera in self.cameras or camera == "center"
        )
        size = self._frame_size(needed)
        # fields and file names only: each frame is read once, below, when it is checked
        # (and decoded, if a sample uses it)
        table = read_driving_logs(self.paths, self.on_bad_row, needed, False, size)
        table = drop_excluded(table)  # the review app's sidecars (bc.data.exclusions)
        is_val = split_rows(
            table["recording"].to_numpy(), self.split, self.val_fraction, self.block_rows, self.seed
        )

        slot_base = self._index_frames(table)
        steering = table["steering"].to_numpy(np.float32)
        speed = speed_to_target(table["speed"].to_numpy(np.float32))
        sources = (
            table["recording"] + f"/{udacity.LOG_NAME} row " + table["row"].astype(str)
        ).tolist()
        train_rows = np.flatnonzero(~is_val)
        kept = train_rows[balance_from_config(steering[train_rows], self.balance, self.seed)]
        val_rows = np.flatnonzero(is_val)
        samples = {
            "train": [(kept, camera) for camera in self.cameras],
            "val": [(val_rows, "center")],
        }
        bad = self._fill_cache(samples, slot_base, table, sources, needed, size)
        corrections = camera_corrections(self.steering_correction)

        def dataset(split: str, augmentation: Any) -> DrivingDataset:
            parts = [(rows[~bad[rows]], camera) for rows, camera in samples[split]]
            return DrivingDataset(
                self.frames,
                np.concatenate(
                    [slot_base[rows] + udacity.CAMERAS.index(camera) for rows, camera in parts]
                ),
                np.concatenate([steering[rows] + corrections[camera] for rows, camera in parts]),
                self.spec,
                augmentation,
                [f"{sources[row]} ({camera})" for rows, camera in parts for row in rows],
                np.concatenate([speed[rows] for rows, _ in parts]) if "speed" in self.outputs
                else None,
            )

        self.train_set = dataset("train", self.augmentation)
        self.val_set = dataset("val", None)
        self.table = table.assign(split=np.where(is_val, "val", "train"))[~bad].reset_index(
            drop=True
        )
        self.table.attrs[EXCLUDED_BY_RECORDING] = table.attrs[EXCLUDED_BY_RECORDING]
        self.stats = {
            "rows": int((~bad).sum()),
            "skipped_rows": table.attrs.get(SKIPPED_ROWS, 0) + int(bad.sum()),
            "excluded_rows": table.attrs[EXCLUDED_ROWS],
            "train_rows": int((~bad[train_rows]).sum()),
            "train_rows_balanced": int((~bad[kept]).sum()),
            "val_rows": int((~bad[val_rows]).sum()),
            "train_samples": len(self.train_set),
            "val_samples": len(self.val_set),
            "recordings": len(self.frames.caches),
        }
        log.info("data: %s", self.stats)

    def _index_frames(self, table: Any) -> np.ndarray:
        """Build `self.frames`: one cache per recording, slot = row * 3 + camera (so a cache
        does not depend on the cameras used); returns each row's first slot."""
        slot_base = np.empty(len(table), dtype=np.int64)
        caches, offset = [], 0
        recordings = table["recording"].to_numpy()
        for recording in dict.fromkeys(recordings):  # in order of appearance
            rows = np.flatnonzero(recordings == recording)
            slot_base[rows] = offset + np.arange(len(rows)) * len(udacity.CAMERAS)
            paths = table.loc[rows, list(udacity.CAMERAS)].to_numpy().reshape(-1).tolist()
            name = Path(recording).name
            caches.append(FrameCache(paths, self.spec, self.cache, self.cache_dir, name=name))
            offset += len(paths)
        self.frames = FrameStore(caches)
        return slot_base

    def _fill_cache(
        self, samples: Mapping[str, list], slot_base: np.ndarray, table: Any,
        sources: Sequence[str], cameras: Sequence[str], size: FrameSize,
    ) -> np.ndarray:
        """Decode every frame the samples use and (with verify_images) check every other frame
        of the `cameras` (whole JPEG, frame size), each file read once; returns the mask of
        rows with a frame that cannot be used (raises `DrivingLogError` for them unless
        on_bad_row is skip). A frame of another size is always an error."""
        slots = np.concatenate(
            [
                slot_base[rows] + udacity.CAMERAS.index(camera)
                for parts in samples.values()
                for rows, camera in parts
            ]
        )
        checks = (np.concatenate([slot_base + udacity.CAMERAS.index(camera) for camera in cameras])
                  if self.verify_images else np.empty(0, np.int64))
        threads = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
        log.info("data: decoding %d frames into the cache (%s)", len(np.unique(slots)), self.cache)
        problems = self.frames.fill(slots, threads, check_only=checks)
        bad = np.zeros(len(table), dtype=bool)
        if not problems:
            return bad
        bad_slots = np.asarray(sorted(problems), dtype=np.int64)
        rows = np.searchsorted(slot_base, bad_slots, side="right") - 1  # slot_base is increasing
        for slot, row in zip(bad_slots.tolist(), rows.tolist()):
            problem = problems[slot]
            if isinstance(problem, FrameOfAnotherSize):
                camera = udacity.CAMERAS[slot - int(slot_base[row])]
                path = Path(table[camera].iat[row])
                raise DrivingLogError(
                    f"{sources[row]}: {camera} image {path.name} is {problem.size[0]}x"
                    f"{problem.size[1]}, but {size.source} is"
                    f" {size}; all frames must have one size (the camera frame size the model is"
                    " trained on)"
                )
        reasons = {row: f"{udacity.CAMERAS[slot - int(slot_base[row])]}: {problems[slot]}"
                   for slot, row in zip(bad_slots.tolist(), rows.tolist())}
        bad[list(reasons)] = True
        listed = summarize([(sources[row], reason) for row, reason in reasons.items()])
        message = f"{len(reasons)} row(s) with a frame that cannot be used: {listed}"
        if self.on_bad_row == "error":
            raise DrivingLogError(
                f"{message}. Fix the recording, or skip these rows with data.on_bad_row=skip."
            )
        log.warning("skipping %s", message)
        if bad.all():
            raise DrivingLogError(
                f"every row has a frame that cannot be used ({message}); nothing left to train on"
            )
        return bad

    def _device(self) -> torch.device:
        """The training device: the trainer's, CPU without one."""
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def batches_on_device(self) -> bool:
        """Whether batches are made ready on the training device (else in the loader)."""
        if self.augment_on == "auto":
            return self._device().type != "cpu"
        return self.augment_on == "device"

    def _loader(self, dataset: DrivingDataset, shuffle: bool) -> DataLoader:
        on_device = self.batches_on_device()
        return DataLoader(
            dataset.for_device() if on_device else dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_frames,
            pin_memory=self.pin_memory or (on_device and self._device().type == "cuda"),
            drop_last=self.drop_last and shuffle,
            persistent_workers=self.num_workers > 0,
            multiprocessing_context=worker_context() if self.num_workers > 0 else None,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Make a `FramesBatch` (uint8, on the device now) the model's input: augmented (a
        training batch) and colour-converted, on the device. Ready batches pass through."""
        if not isinstance(batch, FramesBatch):
            return batch
        augment = self.train_set.batch_augment if batch.augment else None
        return model_batch(batch.frames, batch.y, self.spec, augment)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.val_set, shuffle=False)
