"""Lightning datamodule: recordings -> split -> balance -> cameras -> cached, augmented batches.

Batches are `(x, y)`: x float32 N x 3 x H x W with values 0..255 in the model's colour
space (the model normalises), y float32 N x 1 normalised steering (positive = right).
Training uses the configured cameras (left label = steering + correction: seen from the
left camera the car must steer right to get where the centre camera is; right camera
the opposite) and augmentation; validation uses the centre camera only, unaugmented, and
is never balanced, so it measures the driving distribution as recorded.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from bc.data.augment import SteeringAugment
from bc.data.balance import BALANCE_KEYS, balance_from_config
from bc.data.dataset import CACHE_MODES, DrivingDataset, FrameCache, FrameStore, collate_frames
from bc.data.log import CAMERAS, ON_BAD_ROW, read_driving_logs
from bc.data.split import SPLITS, block_rows_for, split_rows
from bc.preprocess import Preprocess

log = logging.getLogger(__name__)

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
    try:
        from omegaconf import OmegaConf
    except ImportError:  # pragma: no cover - hydra is a dependency
        return value
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def as_spec(preprocess: Preprocess | Mapping[str, Any]) -> Preprocess:
    """A Preprocess from the model's spec object or its config section."""
    if isinstance(preprocess, Preprocess):
        return preprocess
    preprocess = _plain(preprocess)
    if not isinstance(preprocess, Mapping):
        raise TypeError(
            "data.preprocess: expected a Preprocess or a mapping, got"
            f" {type(preprocess).__name__}"
        )
    return Preprocess.from_dict(preprocess)


class DrivingDataModule(pl.LightningDataModule):
    """Udacity recordings (`paths`) to train/val DataLoaders for one model's preprocessing."""

    def __init__(
        self,
        paths: Sequence[str],
        preprocess: Preprocess | Mapping[str, Any],
        augmentation: SteeringAugment | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.2,
        split: str = "blocks",
        block_seconds: float | None = 10.0,
        block_rows: int | None = None,
        cameras: Sequence[str] = CAMERAS,
        steering_correction: float = 0.2,
        balance: Mapping[str, Any] | None = None,
        seed: int = 0,
        on_bad_row: str = "error",
        verify_images: bool = True,
        cache: str = "disk",
        cache_dir: str | None = None,
        warm_cache: bool = False,
        pin_memory: bool = False,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        paths = _plain(paths)
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [str(Path(path).expanduser()) for path in paths]
        self.spec = as_spec(preprocess)
        self.augmentation = augmentation
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.val_fraction = float(val_fraction)
        self.split = split
        self.block_rows = block_rows_for(block_seconds, block_rows)
        self.cameras = tuple(_plain(cameras))
        self.steering_correction = float(steering_correction)
        self.balance = {**DEFAULT_BALANCE, **dict(_plain(balance) or {})}
        self.seed = int(seed)
        self.on_bad_row = on_bad_row
        self.verify_images = bool(verify_images)
        self.cache = cache
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.warm_cache = bool(warm_cache)
        self.pin_memory = bool(pin_memory)
        self.drop_last = bool(drop_last)
        self._validate()
        self.table = None
        self.frames: FrameStore | None = None
        self.train_set: DrivingDataset | None = None
        self.val_set: DrivingDataset | None = None
        self.stats: dict[str, int] = {}

    def _validate(self) -> None:
        if not self.paths:
            raise ValueError("data.paths: expected at least one recording folder")
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size: expected >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers: expected >= 0, got {self.num_workers}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(
                f"data.val_fraction: expected a fraction in [0, 1), got {self.val_fraction}"
            )
        if self.split not in SPLITS:
            raise ValueError(f"data.split: expected one of {list(SPLITS)}, got {self.split!r}")
        unknown = [camera for camera in self.cameras if camera not in CAMERAS]
        if unknown or not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(
                f"data.cameras: expected distinct names from {list(CAMERAS)}, got"
                f" {list(self.cameras)}"
            )
        if not math.isfinite(self.steering_correction):
            raise ValueError(
                "data.steering_correction: expected a finite number, got"
                f" {self.steering_correction}"
            )
        unknown = sorted(set(self.balance) - set(BALANCE_KEYS))
        if unknown:
            raise ValueError(
                f"data.balance: unknown key(s) {unknown}; expected some of {list(BALANCE_KEYS)}"
            )
        if self.on_bad_row not in ON_BAD_ROW:
            raise ValueError(
                f"data.on_bad_row: expected one of {list(ON_BAD_ROW)}, got {self.on_bad_row!r}"
            )
        if self.cache not in CACHE_MODES:
            raise ValueError(f"data.cache: expected one of {list(CACHE_MODES)}, got {self.cache!r}")
        if self.augmentation is not None and not callable(self.augmentation):
            raise TypeError(
                "augmentation: expected a SteeringAugment (callable), got"
                f" {type(self.augmentation).__name__}"
            )

    def setup(self, stage: str | None = None) -> None:
        """Read the logs, split, balance and index frames (once; later calls reuse it)."""
        if self.train_set is not None:
            return
        needed = tuple(camera for camera in CAMERAS if camera in self.cameras or camera == "center")
        table = read_driving_logs(self.paths, self.on_bad_row, needed, self.verify_images)
        is_val = split_rows(
            table["recording"].to_numpy(), self.split, self.val_fraction, self.block_rows, self.seed
        )

        # One cache per recording, slot = row * 3 + camera, so the cache does not depend on cameras.
        caches, slot_base = [], np.empty(len(table), dtype=np.int64)
        offset = 0
        recordings = table["recording"].to_numpy()
        for recording in dict.fromkeys(recordings):  # in order of appearance
            rows = np.flatnonzero(recordings == recording)
            slot_base[rows] = offset + np.arange(len(rows)) * len(CAMERAS)
            paths = table.loc[rows, list(CAMERAS)].to_numpy().reshape(-1).tolist()
            caches.append(
                FrameCache(paths, self.spec, self.cache, self.cache_dir, name=Path(recording).name)
            )
            offset += len(paths)
        self.frames = FrameStore(caches)

        steering = table["steering"].to_numpy(np.float32)
        sources = (table["recording"] + "/driving_log.csv row " + table["row"].astype(str)).tolist()
        train_rows = np.flatnonzero(~is_val)
        kept = train_rows[balance_from_config(steering[train_rows], self.balance, self.seed)]
        corrections = camera_corrections(self.steering_correction)
        frame_index, labels, train_sources = [], [], []
        for camera in self.cameras:
            frame_index.append(slot_base[kept] + CAMERAS.index(camera))
            labels.append(steering[kept] + corrections[camera])
            train_sources += [f"{sources[row]} ({camera})" for row in kept]
        val_rows = np.flatnonzero(is_val)
        self.train_set = DrivingDataset(
            self.frames,
            np.concatenate(frame_index),
            np.concatenate(labels),
            self.spec,
            self.augmentation,
            train_sources,
        )
        self.val_set = DrivingDataset(
            self.frames,
            slot_base[val_rows] + CAMERAS.index("center"),
            steering[val_rows],
            self.spec,
            None,
            [sources[row] for row in val_rows],
        )
        self.table = table.assign(split=np.where(is_val, "val", "train"))
        self.stats = {
            "rows": len(table),
            "train_rows": len(train_rows),
            "train_rows_balanced": len(kept),
            "val_rows": len(val_rows),
            "train_samples": len(self.train_set),
            "val_samples": len(self.val_set),
            "recordings": len(caches),
        }
        log.info("data: %s", self.stats)
        if self.warm_cache:
            decoded = self.frames.warm(
                np.unique(np.concatenate([self.train_set.frame_index, self.val_set.frame_index]))
            )
            log.info("data: warmed the frame cache (%d frames decoded)", decoded)

    def _loader(self, dataset: DrivingDataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_frames,
            pin_memory=self.pin_memory,
            drop_last=self.drop_last and shuffle,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.val_set, shuffle=False)
