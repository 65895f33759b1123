"""Is training compute-bound? Loader samples/s (with augmentation) vs the model's training step.

On a generated recording it times the training DataLoader of the data and augmentation
configs (conf/data, conf/augmentation; the model's preprocessing): cold (setup, which decodes
every JPEG into the cache, plus the first epoch) and warm (cache filled), then the model's
training step (Adam, MSE) on in-memory tensors, and prints the warm-loader / model ratio
(target >= 1.5).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from bc.settings import integer, setting

TARGET_RATIO = 1.5
MODEL_WARMUP_STEPS = 3


def _epoch(loader: Any) -> tuple[int, float]:
    started, count = time.perf_counter(), 0
    for x, _ in loader:
        count += len(x)
    return count, time.perf_counter() - started


@dataclass
class LoaderBenchmark:
    """The training loader built from `data` + `augmentation` (with `workers` DataLoader
    workers each) on ~`samples` generated samples, against `model_steps` training steps of
    `model`; the three configs are the conf groups the training run composes."""

    data: Mapping[str, Any]
    augmentation: Mapping[str, Any]
    model: Mapping[str, Any]
    samples: int = 3000
    workers: Sequence[int] = (0, 2)
    model_steps: int = 30

    def __post_init__(self) -> None:
        self.samples = setting("samples", self.samples, integer, lambda n: n >= 3,
                               ">= 3 (one row is 3 samples)")
        self.workers = setting("workers", self.workers, lambda counts: [integer(n) for n in counts],
                               lambda counts: counts and min(counts) >= 0,
                               "a list of DataLoader worker counts >= 0")
        self.model_steps = setting("model_steps", self.model_steps, integer, lambda n: n >= 1,
                                   ">= 1")

    def loader_throughput(self, folder: Path, cache_dir: Path, workers: int) -> dict[str, float]:
        """Samples/s of the training loader: setup + first epoch (cold cache) and second
        epoch (warm)."""
        from hydra.utils import instantiate

        datamodule = instantiate(self.data, paths=[str(folder)], num_workers=workers,
                                 cache_dir=str(cache_dir), val_fraction=0.0,
                                 balance={"enabled": False},
                                 augmentation=instantiate(self.augmentation))
        started = time.perf_counter()
        datamodule.setup("fit")  # decodes every JPEG into the cache
        setup_s = time.perf_counter() - started
        loader = datamodule.train_dataloader()
        cold_n, cold_s = _epoch(loader)
        warm_n, warm_s = _epoch(loader)
        return {"cold": cold_n / (cold_s + setup_s), "warm": warm_n / warm_s, "samples": warm_n}

    def model_throughput(self) -> float:
        """Samples/s of training steps (forward, MSE, backward, Adam) on in-memory tensors."""
        import torch

        from bc.models import build_model

        batch_size = int(self.data["batch_size"])
        net = build_model(self.model).train()
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        x = torch.rand(batch_size, *net.input_shape) * 255
        y = torch.rand(batch_size, 1) * 2 - 1
        for step in range(MODEL_WARMUP_STEPS + self.model_steps):
            if step == MODEL_WARMUP_STEPS:
                started = time.perf_counter()
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(net(x), y)
            loss.backward()
            optimizer.step()
        return self.model_steps * batch_size / (time.perf_counter() - started)

    def run(self) -> dict[str, Any]:
        """Time the loaders and the model; print and return the numbers."""
        import torch

        from bc.data.synthetic import write_recording

        results: dict[str, Any] = {"torch_threads": torch.get_num_threads(),
                                   "cpus": os.cpu_count(), "loader": {}}
        with tempfile.TemporaryDirectory(prefix="bc-benchmark-") as tmp:
            folder = write_recording(Path(tmp) / "recording", rows=self.samples // 3, seed=0)
            for count in self.workers:
                # A fresh cache per setting, so every cold number includes decoding every JPEG.
                results["loader"][count] = self.loader_throughput(
                    folder, Path(tmp) / f"cache-{count}", count)
        results["model"] = self.model_throughput()
        best = max(result["warm"] for result in results["loader"].values())
        results["ratio"] = best / results["model"]
        name = self.model["_target_"].rsplit(".", 1)[-1]
        preprocess = self.model["preprocess"]
        print(f"machine: {results['cpus']} CPUs, torch threads {results['torch_threads']}")
        for count, result in results["loader"].items():
            print(f"loader  workers={count}: cold {result['cold']:8.0f} samples/s   warm "
                  f"{result['warm']:8.0f} samples/s   ({result['samples']} samples, "
                  f"{name} {preprocess['height']}x{preprocess['width']} "
                  f"{preprocess['color_space'].upper()})")
        print(f"model   {name} train step (batch {self.data['batch_size']}, Adam, MSE): "
              f"{results['model']:8.0f} samples/s")
        verdict = "ok" if results["ratio"] >= TARGET_RATIO else f"below the {TARGET_RATIO}x target"
        print(f"ratio   best warm loader / model = {results['ratio']:.2f}x ({verdict})")
        return results
