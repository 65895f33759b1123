"""Does the data pipeline keep up with training? Samples/s of three loaders and the model.

On one generated recording, in one run, it times (cold: setup, which decodes every JPEG
into a fresh cache, plus the first epoch; warm: the second epoch):

- `tutorial`: the tutorial's generator ported to PyTorch (`tutorial_batches`): per row,
  `cv2.imread` of the center, left and right images, crop, resize to 200x66, random flip,
  in one process, no cache, every epoch;
- `per-sample`: bc's per-sample path (`augmentation=per_sample`: albumentations, frame by
  frame in the DataLoader workers);
- `batched`: bc's default (`conf/augmentation`: `BatchAugment` on whole uint8 batches,
  in the workers on a CPU, on the device on a GPU);

each until it has delivered the model's input (float batches in its colour space, on the
training device). Then PilotNet's (`model`) training step (Adam, MSE) on in-memory tensors,
and the full step: the batched loader, the move to the device, augmentation there, and the
training step. Targets (`TARGETS`): batched warm >= 10x and cold >= 3x the tutorial, and
on a GPU the full step >= 90 % of the in-memory step rate.
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import cv2
import numpy as np

from bc.core import udacity
from bc.core.settings import integer, setting
from bc.data.synthetic import write_recording
from bc.models import build_model

TARGETS = {"warm": 10.0, "cold": 3.0, "full_step": 0.9}
MODEL_WARMUP_STEPS = 3
ROUNDS = 3
TUTORIAL_CORRECTION = 0.2


def tutorial_batches(folder: Path, batch_size: int, rng: np.random.Generator,
                     ) -> Iterator[tuple[Any, Any]]:
    """One epoch of the tutorial's generator: shuffled rows, three camera images each,
    `cv2.imread` + crop + resize + random flip per image, as float NCHW torch batches."""
    import torch

    with open(folder / udacity.LOG_NAME, newline="") as log:
        rows = [row for row in csv.reader(log) if row]
    corrections = {"center": 0.0, "left": TUTORIAL_CORRECTION, "right": -TUTORIAL_CORRECTION}
    images, labels = [], []
    for number in rng.permutation(len(rows)):
        row = rows[number]
        for column, camera in enumerate(udacity.CAMERAS):
            image = cv2.imread(str(folder / udacity.IMAGE_DIR / Path(row[column].strip()).name))
            image = cv2.resize(image[60:-20], (200, 66))
            steering = float(row[3]) + corrections[camera]
            if rng.random() < 0.5:
                image, steering = cv2.flip(image, 1), -steering
            images.append(image)
            labels.append(steering)
            if len(images) == batch_size:
                yield (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float(),
                       torch.tensor(labels).unsqueeze(1))
                images, labels = [], []
    if images:
        yield (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float(),
               torch.tensor(labels).unsqueeze(1))


def _epoch(batches: Any, ready: Any = lambda batch: batch) -> tuple[int, float]:
    started, count = time.perf_counter(), 0
    for batch in batches:
        x, _ = ready(batch)
        count += len(x)
    return count, time.perf_counter() - started


def _rate(count: int, seconds: float) -> float:
    return count / seconds


def _best_of_rounds(timers: Mapping[Any, Callable[[], float]]) -> dict[Any, float]:
    """The best rate of each timer over `ROUNDS` rounds, the timers taking turns."""
    best = dict.fromkeys(timers, 0.0)
    for _ in range(ROUNDS):
        for key, timer in timers.items():
            best[key] = max(best[key], timer())
    return best


@dataclass
class LoaderBenchmark:
    """The three loaders on ~`samples` generated samples (bc's with each DataLoader worker
    count of `workers`), `model_steps` training steps of `model`, on `device` (auto: cuda
    when there is one). `data`, `augmentation`, `per_sample` and `model` are the config
    groups a training run composes."""

    data: Mapping[str, Any]
    augmentation: Mapping[str, Any]
    per_sample: Mapping[str, Any]
    model: Mapping[str, Any]
    samples: int = 3000
    workers: Sequence[int] = (2,)
    model_steps: int = 30
    device: str = "auto"

    def __post_init__(self) -> None:
        self.samples = setting("samples", self.samples, integer, lambda n: n >= 3,
                               ">= 3 (one row is 3 samples)")
        self.workers = setting("workers", self.workers, lambda counts: [integer(n) for n in counts],
                               lambda counts: counts and min(counts) >= 0,
                               "a list of DataLoader worker counts >= 0")
        self.model_steps = setting("model_steps", self.model_steps, integer, lambda n: n >= 1,
                                   ">= 1")
        self.device = setting("device", self.device, str, lambda v: v in ("auto", "cpu", "cuda"),
                              "auto, cpu or cuda")

    @property
    def batch_size(self) -> int:
        return int(self.data["batch_size"])

    def _torch_device(self) -> Any:
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def datamodule(self, folder: Path, cache_dir: Path, workers: int,
                   augmentation: Mapping[str, Any]) -> Any:
        from hydra.utils import instantiate

        on_device = self._torch_device().type != "cpu"
        return instantiate(self.data, paths=[str(folder)], num_workers=workers,
                           cache_dir=str(cache_dir), val_fraction=0.0,
                           balance={"enabled": False}, pin_memory=on_device,
                           augment_on="device" if on_device else "loader",
                           augmentation=instantiate(augmentation))

    def _ready(self, datamodule: Any) -> Any:
        """What training does with a loader's batch: to the device, then the hook."""
        from lightning_fabric.utilities.apply_func import move_data_to_device

        device = self._torch_device()
        return lambda batch: datamodule.on_after_batch_transfer(
            move_data_to_device(batch, device), 0)

    def bc_loader(self, folder: Path, cache_dir: Path, workers: int,
                  augmentation: Mapping[str, Any]) -> tuple[float, Callable[[], float]]:
        """Samples/s of a bc training loader cold (setup + first epoch), and a function that
        times one more (warm) epoch."""
        datamodule = self.datamodule(folder, cache_dir, workers, augmentation)
        started = time.perf_counter()
        datamodule.setup("fit")  # decodes every JPEG into the cache
        setup_s = time.perf_counter() - started
        loader, ready = datamodule.train_dataloader(), self._ready(datamodule)
        count, seconds = _epoch(loader, ready)
        return count / (seconds + setup_s), lambda: _rate(*_epoch(loader, ready))

    def tutorial(self, folder: Path) -> Callable[[], float]:
        """A function that times one epoch of the tutorial's generator (each decodes)."""
        from lightning_fabric.utilities.apply_func import move_data_to_device

        device, rng = self._torch_device(), np.random.default_rng(0)
        ready = lambda batch: move_data_to_device(batch, device)  # noqa: E731
        return lambda: _rate(*_epoch(tutorial_batches(folder, self.batch_size, rng), ready))

    def _net(self) -> tuple[Any, Any]:
        import torch


        net = build_model(self.model).to(self._torch_device()).train()
        return net, torch.optim.Adam(net.parameters(), lr=1e-3)

    def _steps(self, batches: Iterator[tuple[Any, Any]]) -> Callable[[], float]:
        """A function that times `model_steps` training steps (forward, MSE, backward, Adam)
        of a fresh `model` on `batches` (after a few untimed ones)."""
        import torch

        net, optimizer = self._net()

        def step() -> int:
            x, y = next(batches)
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(net(x)[:, :1], y[:, :1]).backward()
            optimizer.step()
            return len(x)

        for _ in range(MODEL_WARMUP_STEPS):
            step()

        def timed() -> float:
            self._sync()
            started = time.perf_counter()
            count = sum(step() for _ in range(self.model_steps))
            self._sync()
            return _rate(count, time.perf_counter() - started)

        return timed

    def _sync(self) -> None:
        import torch

        if self._torch_device().type == "cuda":
            torch.cuda.synchronize()

    def in_memory_steps(self) -> Callable[[], float]:
        """Training steps on one in-memory random batch on the device."""
        import itertools

        import torch

        device, shape = self._torch_device(), self._net()[0].input_shape
        x = torch.rand(self.batch_size, *shape, device=device) * 255
        y = torch.rand(self.batch_size, 1, device=device) * 2 - 1
        return self._steps(itertools.repeat((x, y)))

    def loader_steps(self, folder: Path, cache_dir: Path, workers: int) -> Callable[[], float]:
        """Training steps fed by the batched loader (warm cache), moved to the device and
        augmented there, as training runs them."""
        datamodule = self.datamodule(folder, cache_dir, workers, self.augmentation)
        datamodule.setup("fit")
        loader, ready = datamodule.train_dataloader(), self._ready(datamodule)

        def batches() -> Iterator[tuple[Any, Any]]:
            while True:
                for batch in loader:
                    yield ready(batch)

        return self._steps(batches())

    def run(self) -> dict[str, Any]:
        """Time everything; print and return the numbers. Cold numbers are one epoch each,
        back to back; warm ones and the steps the best of `ROUNDS` rounds taken in turn, so a
        busy spell on a shared machine slows no contender alone."""
        import torch


        device = self._torch_device()
        results: dict[str, Any] = {"torch_threads": torch.get_num_threads(),
                                   "cpus": os.cpu_count(), "device": str(device),
                                   "loader": {}, "per_sample": {}}
        with tempfile.TemporaryDirectory(prefix="bc-benchmark-") as tmp:
            folder = write_recording(Path(tmp) / "recording", rows=self.samples // 3, seed=0)
            tutorial = self.tutorial(folder)
            samples = self.samples // 3 * 3  # per epoch
            results["tutorial"] = {"cold": tutorial(), "samples": samples}
            warm: dict[tuple[str, Any], Callable[[], float]] = {("tutorial", None): tutorial}
            for count in self.workers:
                for kind, augmentation in (("per_sample", self.per_sample),
                                           ("loader", self.augmentation)):
                    # A fresh cache each, so every cold number includes decoding every JPEG.
                    cold, warm[kind, count] = self.bc_loader(
                        folder, Path(tmp) / f"{kind}-{count}", count, augmentation)
                    results[kind][count] = {"cold": cold, "samples": samples}
            for (kind, count), rate in _best_of_rounds(warm).items():
                (results[kind] if count is None else results[kind][count])["warm"] = rate
            workers = max(self.workers)
            steps = _best_of_rounds({
                "model": self.in_memory_steps(),
                "full_step": self.loader_steps(folder, Path(tmp) / f"loader-{workers}", workers)})
            results.update(steps)
        self.report(results)
        return results

    def report(self, results: dict[str, Any]) -> None:
        name = self.model["_target_"].rsplit(".", 1)[-1]
        tutorial = results["tutorial"]
        gpu = f" ({torch_device_name()})" if results["device"].startswith("cuda") else ""
        print(f"machine: {results['cpus']} CPUs, torch threads {results['torch_threads']}, "
              f"device {results['device']}{gpu}, batch {self.batch_size}, "
              f"{tutorial['samples']} samples an epoch; warm and steps: best of {ROUNDS} rounds")

        def line(label: str, result: Mapping[str, float]) -> None:
            cold, warm = result["cold"], result["warm"]
            print(f"{label:<28} cold {cold:8.0f}/s ({cold / tutorial['cold']:5.2f}x)"
                  f"   warm {warm:8.0f}/s ({warm / tutorial['warm']:5.2f}x)")

        line("tutorial generator", tutorial)
        for count in self.workers:
            line(f"bc per-sample, workers={count}", results["per_sample"][count])
            line(f"bc batched, workers={count}", results["loader"][count])
        batched = results["loader"].values()
        ratios = {key: max(result[key] for result in batched) / tutorial[key]
                  for key in ("warm", "cold")}  # the best worker count of each
        ratios["full_step"] = results["full_step"] / results["model"]
        results["ratios"] = ratios
        print(f"{name + ' step, in-memory':<28} {results['model']:8.0f}/s")
        print(f"{name + ' step, batched loader':<28} {results['full_step']:8.0f}/s "
              f"({ratios['full_step']:.2f} of in-memory)")
        for key, label in (("warm", "batched warm / tutorial"),
                           ("cold", "batched cold / tutorial"),
                           ("full_step", "full step / in-memory step")):
            met = ratios[key] >= TARGETS[key]
            note = "" if key != "full_step" or results["device"] != "cpu" else " (a GPU target)"
            print(f"target  {label:<28} {ratios[key]:6.2f}  (>= {TARGETS[key]:g}: "
                  f"{'met' if met else 'not met'}){note}")


def torch_device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
