"""Train a steering network: `python scripts/train.py data.paths=[data/lake] model=nvidia`.

Sweeps: `python scripts/train.py -m model=nvidia,small data.paths=[data/lake]` (one MLflow run
per job). All options live in conf/ (see conf/train.yaml); the work is done by bc.train.train.
"""

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> str:
    from bc.train import ConfigError, train  # imported here so --help and --cfg stay fast

    try:
        return train(cfg)
    except ConfigError as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra records this job as failed and goes on with the sweep's other jobs
        sys.exit(f"Config error: {error}")  # a bad value on the command line: the message, no traceback


if __name__ == "__main__":
    main()
