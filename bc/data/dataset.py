"""Decode-once frame cache and the torch dataset built on it.

Decoding a camera JPEG and resizing it costs far more than augmenting the small
model-resolution frame, so each camera image is decoded **once**: RGB decode
(one bounded read of the file: header and size checked, then decoded; `bc.core.images`) ->
`Preprocess.geometry` (model resolution, still RGB) -> uint8 slot in a cache file. A slot holds the frame **transposed**, W x H x 3: each picture column is
contiguous, so a flip or a shift of a whole batch is one gather of columns
(`bc.data.batch_augment`). Batches then leave the cache as uint8 (N x W x H x 3) and
`bc.data.batch_augment.model_batch` augments them and converts their colour: together the
same `Preprocess` the drive server applies.

The datamodule fills the cache while it sets up (`FrameCache.fill`, one decoding thread per
CPU, with a progress bar), so a JPEG that cannot be decoded (corrupt scan data passes every
header check) is found then and handled by `data.on_bad_row`, never in the middle of
training, and the first epoch reads from the cache like every other.

The cache is a memory-mapped file per recording in `cache_dir` (default
`$BC_CACHE_DIR` or `~/.cache/bc/frames`), keyed by the preprocessing and the image
files (names, sizes, modification times): recordings larger than RAM work (the OS pages the
file), a later run or sweep job reuses it without decoding, and DataLoader workers share
it (they map the same file). A one-byte flag per slot, written after the frame, says which
slots are filled. `cache="none"` keeps nothing: setup decodes every frame once to check it,
and every access decodes again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from bc.data.batch_augment import BatchAugment, model_batch
from bc.errors import BcError
from bc.core.images import ImageError, decode_jpeg, jpeg_problem, jpeg_size, read_image_file
from bc.core.preprocess import FrameSizeError, Preprocess

CACHE_MODES = ("disk", "none")
CACHE_VERSION = 2  # bump when the cached bytes change meaning (2: frames transposed)
_PAGE = 4096  # frames start page-aligned after the fill flags
_FILLED = 1


def default_cache_dir() -> Path:
    """`$BC_CACHE_DIR`, else `$XDG_CACHE_HOME/bc/frames` (normally `~/.cache/bc/frames`)."""
    if os.environ.get("BC_CACHE_DIR"):
        return Path(os.environ["BC_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bc" / "frames"


def _cache_key(paths: Sequence[str], spec: Preprocess) -> str:
    """Hash of everything the cached bytes depend on: version, spec, and each file's identity."""
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, spec.to_dict()]).encode())
    for path in paths:
        try:
            stat = os.stat(path)
            identity = f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
        except OSError:
            identity = f"{path}\0missing\n"
        digest.update(identity.encode())
    return digest.hexdigest()[:20]


class FrameOfAnotherSize(FrameSizeError):
    """A frame file whose header declares another size than the frames of its recordings."""

    def __init__(self, path: str, size: tuple[int, int], expected: tuple[int, int]) -> None:
        super().__init__(f"image file {path}: is {size[0]}x{size[1]}, but the frames are "
                         f"{expected[0]}x{expected[1]}")
        self.size = size


class FrameCache:
    """Crop-resized RGB uint8 frames of a list of image files, each decoded at most once,
    stored transposed (W x H x 3)."""

    def __init__(
        self,
        paths: Sequence[str],
        spec: Preprocess,
        mode: str = "disk",
        cache_dir: str | os.PathLike | None = None,
        name: str = "frames",
    ) -> None:
        self.paths = list(paths)
        self.spec = spec
        self.mode = mode
        self.shape = (spec.width, spec.height, 3)  # transposed
        self.decodes = 0  # JPEGs decoded by this process (tests and benchmarks read it)
        self.file: Path | None = None
        if mode == "disk":
            folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
            self.file = folder / f"{name}-{_cache_key(self.paths, spec)}.u8"
        self._flags_bytes = -(-len(self.paths) // _PAGE) * _PAGE
        self._map: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def nbytes(self) -> int:
        """Size of the cache file (sparse on disk until filled)."""
        return self._flags_bytes + len(self.paths) * int(np.prod(self.shape))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_map"] = None  # each process maps the file itself
        return state

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        """(fill flags, frames) views of the shared cache file, created sparse if new."""
        if self._map is None:
            assert self.file is not None
            self.file.parent.mkdir(parents=True, exist_ok=True)
            size = self.nbytes
            try:
                handle = os.open(self.file, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if (
                    self.file.stat().st_size < size
                ):  # a creator is still sizing it: same size, harmless
                    os.truncate(self.file, size)
            else:
                os.ftruncate(handle, size)
                os.close(handle)
            self._map = np.memmap(self.file, dtype=np.uint8, mode="r+", shape=(size,))
        flags = self._map[: len(self.paths)]
        frames = self._map[self._flags_bytes :].reshape(len(self.paths), *self.shape)
        return flags, frames

    def _checked_bytes(self, index: int) -> bytes:
        """The JPEG of slot `index`, read once (bounded: `bc.core.images.read_image_file`), whole and
        with a header declaring the model's frame size (`FrameSizeError` otherwise)."""
        path = self.paths[index]
        data = read_image_file(path)
        problem = jpeg_problem(data)
        if problem:
            raise ImageError(f"image file {path}: {problem}")
        try:
            size = jpeg_size(data)
        except ImageError as error:
            raise ImageError(f"image file {path}: {error}") from None
        if self.spec.frame_width is not None and size != self.spec.frame_size:
            raise FrameOfAnotherSize(path, size, self.spec.frame_size)
        return data

    def _read(self, index: int) -> np.ndarray:
        """Slot `index` decoded and crop-resized, from one read of its file."""
        data = self._checked_bytes(index)
        try:
            rgb = decode_jpeg(data)
        except ImageError as error:
            raise ImageError(f"image file {self.paths[index]}: {error}") from None
        return self.spec.geometry(rgb).transpose(1, 0, 2)

    def decode(self, index: int) -> np.ndarray:
        """Read, check and crop-resize one frame from its JPEG (no cache), transposed."""
        self.decodes += 1
        return self._read(index)

    def get_many(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Frames at `indices` as a new N x W x H x 3 uint8 array, decoding only unfilled slots."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.mode == "none":
            return (
                np.stack([self.decode(int(i)) for i in indices]) if len(indices) else self._empty()
            )
        flags, frames = self._open()
        batch = frames[indices]  # fancy indexing copies out of the map
        for position in np.flatnonzero(flags[indices] != _FILLED):
            index = int(indices[position])
            batch[position] = frames[index] = self.decode(index)
            flags[index] = _FILLED
        return batch

    def fill(self, indices: Sequence[int] | np.ndarray, threads: int = 1,
             progress: Callable[[int], Any] | None = None,
             check_only: Sequence[int] | np.ndarray = ()) -> dict[int, BcError]:
        """Decode the unfilled slots at `indices` into the cache (with `cache="none"`: decode
        them once to check them) and check the files of the unfilled slots `check_only` (whole
        JPEG of the frame size, not decoded), each file read once, calling `progress(1)` per
        file; returns {slot: why it cannot be used} (an `ImageError` or `FrameSizeError`)."""
        indices = np.unique(np.asarray(indices, dtype=np.int64))
        checks = np.setdiff1d(np.asarray(check_only, dtype=np.int64), indices)
        frames = None
        if self.mode == "disk":
            flags, frames = self._open()
            indices = indices[flags[indices] != _FILLED]
            checks = checks[flags[checks] != _FILLED]
        problems: dict[int, BcError] = {}

        def fill_one(index: int) -> None:
            try:
                frame = self._read(index)
            except BcError as error:  # ImageError, FrameSizeError
                problems[index] = error
                return
            if frames is not None:
                frames[index] = frame
                flags[index] = _FILLED

        def check_one(index: int) -> None:
            try:
                self._checked_bytes(index)
            except BcError as error:
                problems[index] = error

        work = [(fill_one, index) for index in indices.tolist()]
        work += [(check_one, index) for index in checks.tolist()]
        with ThreadPoolExecutor(max(1, threads)) as pool:  # reading and decoding release the GIL
            for _ in pool.map(lambda item: item[0](item[1]), work):
                if progress is not None:
                    progress(1)
        self.decodes += len(indices)
        return problems

    def _empty(self) -> np.ndarray:
        return np.empty((0, *self.shape), np.uint8)


class FrameStore:
    """Several recordings' `FrameCache`s addressed by one global frame index."""

    def __init__(self, caches: Sequence[FrameCache]) -> None:
        self.caches = list(caches)
        self.offsets = np.cumsum([0] + [len(cache) for cache in self.caches])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def decodes(self) -> int:
        return sum(cache.decodes for cache in self.caches)

    def _split(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        return indices, np.searchsorted(self.offsets, indices, side="right") - 1

    def get_many(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        indices, which = self._split(indices)
        out = np.empty((len(indices), *self.caches[0].shape), np.uint8)
        for cache_index in np.unique(which):
            positions = np.flatnonzero(which == cache_index)
            local = indices[positions] - self.offsets[cache_index]
            out[positions] = self.caches[cache_index].get_many(local)
        return out

    def fill(self, indices: Sequence[int] | np.ndarray, threads: int = 1,
             check_only: Sequence[int] | np.ndarray = ()) -> dict[int, BcError]:
        """`FrameCache.fill` over global indices, with a progress bar on a terminal; returns
        {global index: problem}."""
        from tqdm.auto import tqdm

        indices, which = self._split(np.unique(np.asarray(indices, dtype=np.int64)))
        checks = np.setdiff1d(np.asarray(check_only, dtype=np.int64), indices)
        checks, checks_in = self._split(checks)
        problems: dict[int, BcError] = {}
        with tqdm(total=len(indices) + len(checks), desc="reading frames", unit="frame",
                  disable=None, leave=False) as bar:
            for cache_index in np.unique(np.concatenate([which, checks_in])):
                offset = int(self.offsets[cache_index])
                found = self.caches[cache_index].fill(
                    indices[which == cache_index] - offset, threads, bar.update,
                    check_only=checks[checks_in == cache_index] - offset)
                problems.update({offset + local: problem for local, problem in found.items()})
        return problems


class FrameBatch(NamedTuple):
    """A ready batch: x float32 N x 3 x H x W in 0..255, y float32 N x 1 (steering) or
    N x 2 (steering, speed target)."""

    x: torch.Tensor
    y: torch.Tensor


class FramesBatch(NamedTuple):
    """A batch still to be made ready on the training device (`DrivingDataset.for_device`):
    cached frames uint8 N x W x H x 3, labels as in `FrameBatch`, and whether it is to be
    augmented."""

    frames: torch.Tensor
    y: torch.Tensor
    augment: bool


class DrivingDataset(Dataset):
    """(frame, steering[, speed]) samples over a `FrameStore`. `speed` (speed targets,
    `bc.models.base.speed_to_target`), when given, is a second label column that augmentation
    leaves alone: a mirrored or shifted frame needs another steering, not another speed.

    Batches are fetched whole (`__getitems__`: one read of the cache per batch; use
    `collate_frames` as the DataLoader's collate_fn) and made ready by
    `bc.data.batch_augment.model_batch`: augmented (`augmentation`: a `BatchAugment` for the
    batch, or the per-sample `SteeringAugment`, applied as frames are read) and colour
    converted. `for_device()` is the same dataset handing out the cached uint8 frames
    (`FramesBatch`) for the training device to make ready.
    """

    def __init__(
        self,
        frames: FrameStore,
        frame_index: np.ndarray,
        steering: np.ndarray,
        spec: Preprocess,
        augmentation: Any | None = None,
        sources: Sequence[str] | None = None,
        speed: np.ndarray | None = None,
    ) -> None:
        if len(frame_index) != len(steering):
            raise ValueError(
                f"{len(frame_index)} frame indices but {len(steering)} steering labels"
            )
        if speed is not None and len(speed) != len(steering):
            raise ValueError(f"{len(steering)} steering labels but {len(speed)} speed labels")
        self.frames = frames
        self.frame_index = np.asarray(frame_index, dtype=np.int64)
        self.steering = np.asarray(steering, dtype=np.float32)
        self.speed = None if speed is None else np.asarray(speed, dtype=np.float32)
        self.spec = spec
        self.augmentation = augmentation
        self.sources = sources  # per sample: "<csv> row N", for error messages
        self.deferred = False

    def __len__(self) -> int:
        return len(self.frame_index)

    def for_device(self) -> "DrivingDataset":
        """This dataset handing out `FramesBatch`es (uint8, made ready on the device)."""
        deferred = copy.copy(self)
        deferred.deferred = True
        return deferred

    @property
    def batch_augment(self) -> BatchAugment | None:
        """The augmentation of whole batches, if any (None for the per-sample kind)."""
        augmentation = self.augmentation
        if isinstance(augmentation, BatchAugment) and not augmentation.is_identity:
            return augmentation
        return None

    def read(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached frames (uint8 N x W x H x 3) and labels (N x 1 or N x 2) of `indices`, the
        per-sample augmentation applied if that is the kind configured."""
        indices = np.asarray(indices, dtype=np.int64)
        try:
            batch = self.frames.get_many(self.frame_index[indices])
        except ImageError as error:
            where = ""
            if self.sources is not None:
                where = (
                    " (samples from "
                    + ", ".join(self.sources[int(i)] for i in indices[:3])
                    + " ...)"
                )
            raise ImageError(f"{error}{where}") from error
        labels = self.steering[indices].copy()
        per_sample = self.augmentation
        if per_sample is not None and not isinstance(per_sample, BatchAugment) and not getattr(
            per_sample, "is_identity", False
        ):
            for position in range(len(batch)):  # the frame as H x W x 3, written back transposed
                image, labels[position] = per_sample(
                    batch[position].transpose(1, 0, 2), float(labels[position])
                )
                batch[position] = image.transpose(1, 0, 2)
        if self.speed is not None:
            labels = np.stack([labels, self.speed[indices]], axis=1)
        return torch.from_numpy(batch), torch.from_numpy(labels).reshape(len(indices), -1)

    def __getitems__(self, indices: Sequence[int]) -> FrameBatch | FramesBatch:
        frames, labels = self.read(indices)
        if self.deferred:
            return FramesBatch(frames, labels, self.batch_augment is not None)
        return FrameBatch(*model_batch(frames, labels, self.spec, self.batch_augment))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One ready sample: x float32 3 x H x W (0..255), y float32 shape (1,) or (2,)."""
        x, y = model_batch(*self.read([index]), self.spec, self.batch_augment)
        return x[0], y[0]


def collate_frames(
    data: FrameBatch | FramesBatch | list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor] | FramesBatch:
    """collate_fn for `DrivingDataset`: passes batched fetches through, stacks single ones."""
    if isinstance(data, FramesBatch):
        return data
    if isinstance(data, FrameBatch):
        return data.x, data.y
    xs, ys = zip(*data)
    return torch.stack(xs), torch.stack(ys)
