"""`InsightPlots`: the pictures of a training run, as PNGs under the run's `plots/` artifacts.

At the start of training (after the sanity check, so what training really sees):
- `steering_histogram.png`: the training labels per camera before and after balancing
  (camera corrections included);
- `augmentation_preview.png`: the same training frames before and after the training
  augmentation, with their labels and what each frame got (flip, shift, the photometric
  transforms drawn for it). "After" is made the way training makes it: the training
  dataset's own batch fetch, then the trainer's move to the device (the batch-transfer hooks
  of the module and the datamodule), with a copy of the augmentation and the random state
  restored after, so the preview does not change what training draws.
At the end of fit, for the network that is logged (the best checkpoint's weights):
- `predicted_vs_recorded.png`: the longest held-out validation block as a time series, and
  every validation frame as predicted against recorded, with the identity line;
- `saliency.png`: a few validation camera frames with VisualBackProp (`bc.insight.saliency`).

Needs a `bc.data.datamodule.DrivingDataModule` (others are skipped with a log line); logs to
every MLflow logger of the trainer, and keeps the files in `folder` when one is given.
"""

from __future__ import annotations

import copy
import logging
import random
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import MLFlowLogger

from bc.core import udacity
from bc.core.images import read_rgb
from bc.core.settings import integer, optional, setting
from bc.data.batch_augment import BatchAugment
from bc.data.datamodule import DrivingDataModule
from bc.data.datamodule import camera_corrections
from bc.data.dataset import collate_frames
from bc.insight.plots import image_grid
from bc.insight.plots import predicted_vs_recorded
from bc.insight.plots import steering_histograms
from bc.insight.saliency import MASK_GAMMA, OVERLAY_COLORMAP_NAME, VisualBackProp, draw_saliency
from bc.training.mlflow_run import best_checkpoint, load_net_weights

log = logging.getLogger(__name__)

ARTIFACT_DIR = "plots"
HISTOGRAM = "steering_histogram.png"
AUGMENTATION = "augmentation_preview.png"
PREDICTIONS = "predicted_vs_recorded.png"
SALIENCY = "saliency.png"
# Model colour space -> RGB, to show model inputs (bc.core.preprocess converts RGB to these).
TO_RGB = {"rgb": None, "yuv": cv2.COLOR_YUV2RGB, "hsv": cv2.COLOR_HSV2RGB,
          "lab": cv2.COLOR_LAB2RGB}
PREDICT_BATCH = 256


@contextmanager
def preserved_random_state() -> Iterator[None]:
    """Run a block without moving the random streams training draws from (torch, numpy,
    Python's `random`), so the preview leaves the training run as it would be without it."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)


def to_rgb(batch: torch.Tensor, color_space: str) -> list[np.ndarray]:
    """A model-input batch (N x 3 x H x W, 0..255, the model's colour space) as RGB uint8 images."""
    images = batch.detach().float().clamp(0, 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    conversion = TO_RGB[color_space]
    return [image if conversion is None else cv2.cvtColor(np.ascontiguousarray(image), conversion)
            for image in images]


def contiguous_blocks(recordings: np.ndarray, rows: np.ndarray) -> list[slice]:
    """Runs of consecutive log rows of one recording, in order."""
    if len(rows) == 0:
        return []
    breaks = np.flatnonzero((np.diff(rows) != 1) | (recordings[1:] != recordings[:-1])) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(rows)]])
    return [slice(int(start), int(end)) for start, end in zip(starts, ends)]


class Batch(NamedTuple):
    """Training samples as the network gets them: x N x 3 x H x W, y N x outputs, the
    camera each frame comes from, and (augmented batches) the changes each frame got."""

    x: torch.Tensor
    y: torch.Tensor
    cameras: list[str]
    changes: list[list[str]] | None = None


def _leaves(transforms: list[Any]) -> Iterator[Any]:
    """The photometric transforms that change pixels (a `OneOf`'s choices, not the `OneOf`)."""
    for transform in transforms:
        inner = getattr(transform, "transforms", None)
        yield from (_leaves(inner) if inner is not None else [transform])


@contextmanager
def recorded_changes(augments: list[Any]) -> Iterator[list[list[str]]]:
    """While the block runs, what each `BatchAugment` in `augments` does to each sample of the
    batch it augments: transform names, ``flip``, ``shift <dx> px`` (one list per sample,
    filled when a batch goes through). The draws are observed, not changed: the flip and
    shift draws are replayed from a copy of the generator's state, the transforms' own
    `apply` calls report which samples they were given."""

    changes: list[list[str]] = []
    patched: list[tuple[Any, str]] = []

    def ensure(count: int) -> None:
        if len(changes) < count:
            changes.extend([] for _ in range(count - len(changes)))

    def watch_flip_and_shift(augment: Any) -> None:
        original = augment._flip_and_shift

        def flip_and_shift(frames: torch.Tensor, labels: torch.Tensor,
                           generator: torch.Generator) -> torch.Tensor:
            state = generator.get_state()
            out = original(frames, labels, generator)
            replay = torch.Generator(device=generator.device)
            replay.set_state(state)
            count, shift, device = len(frames), int(augment.shift_px), frames.device
            ensure(count)
            dx = (torch.randint(-shift, shift + 1, (count,), generator=replay, device=device)
                  if shift > 0 else torch.zeros(count, dtype=torch.long))
            flip = (torch.rand(count, generator=replay, device=device) < augment.flip_prob
                    if augment.flip_prob > 0 else torch.zeros(count, dtype=torch.bool))
            for sample, (flipped, moved) in enumerate(zip(flip.tolist(), dx.tolist())):
                changes[sample] += (["flip"] if flipped else []) + ([f"shift {moved:+d} px"] if moved else [])
            return out

        augment._flip_and_shift = flip_and_shift
        patched.append((augment, "_flip_and_shift"))

    def watch(transform: Any) -> None:
        original = transform.apply

        def apply(x: torch.Tensor, picked: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            ensure(len(x))
            for sample in picked.nonzero().flatten().tolist():
                changes[sample].append(type(transform).__name__)
            return original(x, picked, generator)

        transform.apply = apply
        patched.append((transform, "apply"))

    for augment in {id(item): item for item in augments if isinstance(item, BatchAugment)}.values():
        watch_flip_and_shift(augment)
        for transform in _leaves(augment.photometric):
            watch(transform)
    try:
        yield changes
    finally:
        for owner, name in patched:
            vars(owner).pop(name, None)


def labels_per_camera(datamodule: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The steering labels of each training camera (its correction included) before
    balancing (every training row) and after (what the training set holds)."""

    table = datamodule.table
    recorded = table.loc[table["split"] == "train", "steering"].to_numpy(np.float64)
    corrections = camera_corrections(datamodule.steering_correction)
    dataset = datamodule.train_set
    # A frame's slot is row * len(CAMERAS) + camera (DrivingDataModule._index_frames).
    camera_of = dataset.frame_index % len(udacity.CAMERAS)
    before = {camera: recorded + corrections[camera] for camera in datamodule.cameras}
    after = {camera: dataset.steering[camera_of == udacity.CAMERAS.index(camera)]
             for camera in datamodule.cameras}
    return before, after


def augmentation_pairs(datamodule: Any, count: int, seed: int = 0,
                       to_device: Callable[[Any], Any] | None = None) -> tuple[Batch, Batch]:
    """`count` training samples (chosen with `seed`) without augmentation, and the same ones
    augmented the way training does it: the training dataset's own batch fetch, then
    `to_device` (in training `trainer.strategy.batch_to_device`: the batch-transfer hooks of
    the module and the datamodule). Training's random streams are left where they were."""

    move = to_device or (lambda batch: batch)
    dataset = datamodule.train_set
    count = min(count, len(dataset))
    indices = np.sort(np.random.default_rng(seed).choice(len(dataset), count, replace=False))
    plain = copy.copy(dataset)
    plain.augmentation = None
    augmented = copy.copy(dataset)  # its own copy of the augmentation's random streams
    augmented.augmentation = copy.deepcopy(dataset.augmentation)
    with preserved_random_state():
        x_before, y_before = move(collate_frames(plain.__getitems__(indices)))
        # the copy augments in the loader; the training set's own one on the device
        with recorded_changes([augmented.augmentation, dataset.augmentation]) as changes:
            x_after, y_after = move(collate_frames(augmented.__getitems__(indices)))
    cameras = [udacity.CAMERAS[slot % len(udacity.CAMERAS)]
               for slot in dataset.frame_index[indices]]
    recorded = [changes[sample] if sample < len(changes) else [] for sample in range(count)] \
        if changes else None
    return Batch(x_before, y_before, cameras), Batch(x_after, y_after, cameras, recorded)


def describe_changes(changes: list[str] | None, per_line: int = 2) -> str:
    """A preview caption: the changes a frame got, two to a line ("none" if none)."""
    if changes is None:
        return "augmented"
    if not changes:
        return "no change drawn"
    return "\n".join(", ".join(changes[first:first + per_line])
                     for first in range(0, len(changes), per_line))


def validation_predictions(datamodule: Any, net: torch.nn.Module) -> np.ndarray:
    """The network's steering for every validation sample, in the validation set's order."""
    dataset = datamodule.val_set
    device = next(net.parameters()).device
    predicted = [np.zeros(0, np.float32)]
    with torch.inference_mode():
        for first in range(0, len(dataset), PREDICT_BATCH):
            x, _ = dataset.__getitems__(np.arange(first, min(first + PREDICT_BATCH, len(dataset))))
            predicted.append(net(x.to(device))[:, 0].float().cpu().numpy())
    return np.concatenate(predicted)


def held_out_block(datamodule: Any, max_frames: int | None) -> tuple[slice, str]:
    """The longest run of consecutive validation rows of one recording (its first
    `max_frames`), as a slice of the validation set, and its name."""
    val = datamodule.table[datamodule.table["split"] == "val"]
    recordings, rows = val["recording"].to_numpy(), val["row"].to_numpy()
    block = max(contiguous_blocks(recordings, rows), key=lambda part: part.stop - part.start)
    if max_frames is not None and block.stop - block.start > max_frames:
        block = slice(block.start, block.start + max_frames)
    name = (f"{Path(str(recordings[block.start])).name} rows {rows[block.start]}-"
            f"{rows[block.stop - 1]}")
    return block, name


class InsightPlots(pl.Callback):
    """Plots of the data, the augmentation and the predictions of a run (module doc)."""

    def __init__(self, folder: str | None = None, artifact_dir: str = ARTIFACT_DIR,
                 preview_frames: int = 8, saliency_frames: int = 4,
                 max_block_frames: int | None = 450, seed: int = 0) -> None:
        self.folder = None if folder is None else Path(folder)
        self.artifact_dir = artifact_dir
        self.preview_frames = setting("preview_frames", preview_frames,
                                      integer, lambda v: v >= 0, "an integer >= 0")
        self.saliency_frames = setting("saliency_frames", saliency_frames,
                                       integer, lambda v: v >= 0, "an integer >= 0")
        self.max_block_frames = setting("max_block_frames", max_block_frames,
                                        optional(integer), lambda v: v is None or v >= 2,
                                        "an integer >= 2 (or null: the whole block)")
        self.seed = setting("seed", seed, integer, lambda v: v >= 0,
                            "an integer >= 0")

    # -- hooks ------------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = self._datamodule(trainer)
        if datamodule is None or not trainer.is_global_zero:
            return
        with self._output() as folder:
            files = [self.histogram(datamodule, folder / HISTOGRAM)]
            if self.preview_frames and len(datamodule.train_set):
                files.append(self.augmentation_preview(datamodule, trainer,
                                                       folder / AUGMENTATION))
            self._log(trainer, files)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = self._datamodule(trainer)
        if datamodule is None or not trainer.is_global_zero or not len(datamodule.val_set):
            return
        net = self.logged_network(trainer, pl_module)
        with self._output() as folder:
            files = [self.predictions(datamodule, net, folder / PREDICTIONS)]
            if self.saliency_frames:
                files.append(self.saliency(datamodule, net, folder / SALIENCY))
            self._log(trainer, files)

    # -- the pictures -----------------------------------------------------------------------

    def histogram(self, datamodule: Any, path: Path) -> Path:
        """Training labels per camera, before and after balancing."""

        before, after = labels_per_camera(datamodule)
        balance = datamodule.balance
        how = (f"near-zero bin (|steering| <= {balance['zero_threshold']}) capped"
               if balance["zero_threshold"] is not None else "every bin capped")
        title = ("Training steering labels per camera (camera corrections included); "
                 + (f"balancing: {how}" if balance["enabled"] else "balancing off"))
        return steering_histograms(before, after, path, title)

    def augmentation_preview(self, datamodule: Any, trainer: pl.Trainer, path: Path) -> Path:
        """The same training frames before and after the training augmentation."""

        before, after = augmentation_pairs(datamodule, self.preview_frames, self.seed,
                                           lambda batch: trainer.strategy.batch_to_device(batch))
        color_space = datamodule.spec.color_space
        changes = after.changes or [None] * len(before.cameras)
        pairs = [((image_before, f"{camera} camera, steering {label_before:+.3f}"),
                  (image_after, f"steering {label_after:+.3f}\n" + describe_changes(change)))
                 for image_before, image_after, label_before, label_after, camera, change
                 in zip(to_rgb(before.x, color_space), to_rgb(after.x, color_space),
                        before.y[:, 0].tolist(), after.y[:, 0].tolist(), before.cameras, changes)]
        per_row = 2 if len(pairs) > 3 else 1
        rows = [[cell for pair in pairs[first:first + per_row] for cell in pair]
                for first in range(0, len(pairs), per_row)]
        rows = [row for row in rows if len(row) == len(rows[0])]
        return image_grid(rows, path, "Training frames (model input) before and after "
                          "augmentation, with their steering labels",
                          ["recorded", "augmented"] * per_row)

    def predictions(self, datamodule: Any, net: torch.nn.Module, path: Path) -> Path:
        """Predicted against recorded steering on the validation split."""

        block, name = held_out_block(datamodule, self.max_block_frames)
        return predicted_vs_recorded(datamodule.val_set.steering,
                                     validation_predictions(datamodule, net), block, path,
                                     block_name=name,
                                     title="Validation steering (center camera) of the "
                                           "logged network")

    def saliency(self, datamodule: Any, net: torch.nn.Module, path: Path) -> Path:
        """A few validation camera frames with the network's VisualBackProp mask."""

        val = datamodule.table[datamodule.table["split"] == "val"]
        count = min(self.saliency_frames, len(val))
        picks = np.linspace(0, len(val) - 1, count).round().astype(int)
        frames = [read_rgb(path) for path in val["center"].to_numpy()[picks]]
        spec = datamodule.spec
        masks, outputs = VisualBackProp(net).frames(frames, spec)
        recorded = val["steering"].to_numpy()[picks]
        cells = [cell for frame, mask, output, label in zip(frames, masks, outputs, recorded)
                 for cell in ((frame, f"recorded {label:+.3f}"),
                              (draw_saliency(frame, mask, spec), f"predicted {output[0]:+.3f}"))]
        per_row = 4 if count > 1 else 2
        rows = [cells[first:first + per_row] for first in range(0, len(cells), per_row)]
        rows = [row for row in rows if len(row) == len(rows[0])]
        return image_grid(rows, path, "VisualBackProp: where the network looks "
                          "(validation frames; dimmed rows are cropped off)",
                          ["camera frame", "saliency"] * (per_row // 2),
                          colour_bar={"cmap": OVERLAY_COLORMAP_NAME, "gamma": MASK_GAMMA,
                                      "label": "saliency (1: the frame's most salient pixel; "
                                               "also shown as opacity)"})

    # -- plumbing ---------------------------------------------------------------------------

    @staticmethod
    def logged_network(trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.nn.Module:
        """A copy of the network with the weights the run logs: the best checkpoint's when a
        checkpoint monitors a metric (as `bc.training.mlflow_run.MlflowRun` does), else the current."""

        net = copy.deepcopy(pl_module.net)
        checkpoint, _, monitor = best_checkpoint(trainer)
        if monitor and checkpoint:
            try:
                load_net_weights(net, checkpoint)
            except Exception as error:  # the run logs the current weights then too
                log.warning("plots use the last weights: %s is unreadable (%s)", checkpoint, error)
        return net.eval()

    @staticmethod
    def _datamodule(trainer: pl.Trainer) -> Any:

        datamodule = trainer.datamodule
        if not isinstance(datamodule, DrivingDataModule) or datamodule.table is None:
            log.info("plots: skipped (the datamodule is not a set-up DrivingDataModule)")
            return None
        return datamodule

    @contextmanager
    def _output(self) -> Iterator[Path]:
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            yield self.folder
            return
        with tempfile.TemporaryDirectory(prefix="bc-plots-") as folder:
            yield Path(folder)

    def _log(self, trainer: pl.Trainer, files: list[Path]) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                for path in files:
                    logger.experiment.log_artifact(logger.run_id, str(path), self.artifact_dir)
        log.info("plots: %s", ", ".join(str(path) for path in files))
