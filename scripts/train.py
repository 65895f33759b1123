"""Train a steering network: `python scripts/train.py data.paths=[data/lake] model=nvidia`.

Sweeps: `python scripts/train.py -m model=nvidia,small data.paths=[data/lake]` (one MLflow run
per job). Continue a killed run: `python scripts/train.py resume=<run id>`. All options live
in conf/ (see conf/train.yaml); the work is done by bc.train.train.
"""

import os

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> str:
    from bc.cli import run  # imported here so --help and --cfg stay fast
    from bc.train import train

    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return train(cfg)  # Hydra records a failed job and goes on with the sweep's other jobs
    return run("train.py", lambda: train(cfg))


if __name__ == "__main__":
    main()
