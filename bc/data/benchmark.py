"""Is training compute-bound? Loader samples/s (with augmentation) vs the model's training step.

Run `python -m bc.data.benchmark [--samples 3000] [--workers 0 2]`. On a generated
recording it times the training DataLoader of the default data + augmentation configs with
the NVIDIA preprocessing: cold (setup, which decodes every JPEG into the cache, plus the
first epoch) and warm (cache filled), then PilotNet's training step (batch 32, Adam, MSE)
on in-memory tensors, and prints the warm-loader / model ratio (target >= 1.5).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
TARGET_RATIO = 1.5
BATCH_SIZE = 32
MODEL_WARMUP_STEPS = 3


def _configs(batch_size: int) -> tuple[Any, Any, Any]:
    """The real default data, augmentation and NVIDIA model configs."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose(
            overrides=[
                "+data=default",
                "+augmentation=default",
                "+model=nvidia",
                f"data.batch_size={batch_size}",
            ]
        )
    return cfg.data, cfg.augmentation, cfg.model


def _epoch(loader) -> tuple[int, float]:
    start, count = time.perf_counter(), 0
    for x, _ in loader:
        count += len(x)
    return count, time.perf_counter() - start


def loader_throughput(
    folder: Path, cache_dir: Path, workers: int, batch_size: int = BATCH_SIZE
) -> dict[str, float]:
    """Samples/s of the default training loader: setup + first epoch (cold cache) and second
    epoch (warm)."""
    from hydra.utils import instantiate

    from bc.preprocess import Preprocess

    data_cfg, augmentation_cfg, model_cfg = _configs(batch_size)
    spec = Preprocess.from_dict(dict(model_cfg.preprocess))
    dm = instantiate(
        data_cfg,
        paths=[str(folder)],
        num_workers=workers,
        cache_dir=str(cache_dir),
        val_fraction=0.0,
        balance={"enabled": False},
        preprocess=spec,
        augmentation=instantiate(augmentation_cfg),
    )
    start = time.perf_counter()
    dm.setup("fit")  # decodes every JPEG into the cache
    setup_s = time.perf_counter() - start
    loader = dm.train_dataloader()
    cold_n, cold_s = _epoch(loader)
    cold_s += setup_s
    warm_n, warm_s = _epoch(loader)
    return {"cold": cold_n / cold_s, "warm": warm_n / warm_s, "samples": warm_n}


def model_throughput(steps: int = 30, batch_size: int = BATCH_SIZE) -> float:
    """Samples/s of PilotNet training steps (forward, MSE, backward, Adam) on in-memory tensors."""
    from hydra.utils import instantiate

    _, _, model_cfg = _configs(batch_size)
    net = instantiate(model_cfg)
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(batch_size, *net.input_shape) * 255
    y = torch.rand(batch_size, 1) * 2 - 1
    for step in range(MODEL_WARMUP_STEPS + steps):
        if step == MODEL_WARMUP_STEPS:
            start = time.perf_counter()
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - start)


def run_benchmark(
    samples: int = 3000, workers: Sequence[int] | int = (0, 2), model_steps: int = 30
) -> dict[str, Any]:
    """Time loaders and model on a generated recording of ~`samples` samples; print and return."""
    from bc.data.synthetic import write_recording

    workers = [workers] if isinstance(workers, int) else list(workers)
    results: dict[str, Any] = {
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "loader": {},
    }
    with tempfile.TemporaryDirectory(prefix="bc-benchmark-") as tmp:
        folder = write_recording(Path(tmp) / "recording", rows=max(1, samples // 3), seed=0)
        for count in workers:
            # A fresh cache per setting, so every cold number includes decoding every JPEG.
            results["loader"][count] = loader_throughput(
                folder, Path(tmp) / f"cache-{count}", count
            )
    results["model"] = model_throughput(model_steps)
    best = max(results["loader"].values(), key=lambda r: r["warm"])["warm"]
    results["ratio"] = best / results["model"]
    print(f"machine: {results['cpus']} CPUs, torch threads {results['torch_threads']}")
    for count, r in results["loader"].items():
        print(
            f"loader  workers={count}: cold {r['cold']:8.0f} samples/s   warm {r['warm']:8.0f}"
            f" samples/s   ({r['samples']} samples, default augmentation, NVIDIA 66x200 YUV)"
        )
    print(
        f"model   PilotNet train step (batch {BATCH_SIZE}, Adam, MSE): {results['model']:8.0f}"
        " samples/s"
    )
    verdict = "ok" if results["ratio"] >= TARGET_RATIO else f"below the {TARGET_RATIO}x target"
    print(f"ratio   best warm loader / model = {results['ratio']:.2f}x ({verdict})")
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--samples", type=int, default=3000, help="training samples to generate (3 per row)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[0, 2],
        help="DataLoader num_workers settings to time",
    )
    parser.add_argument("--model-steps", type=int, default=30)
    args = parser.parse_args(argv)
    run_benchmark(args.samples, args.workers, args.model_steps)


if __name__ == "__main__":
    main()
