"""Train a steering network: `python scripts/train.py data.paths=[data/lake] model=nvidia`.

Sweeps: `python scripts/train.py -m model=nvidia,small data.paths=[data/lake]` (one MLflow run
per job; parallel with hydra/launcher=joblib, on Slurm with hydra/launcher=slurm; Optuna with
hparams_search=optuna). Continue a killed run: `python scripts/train.py resume=<run id>`. All
options live in conf/ (see conf/train.yaml); the work is done by bc.training.train.train.

Returns the run id, or with `optimized_metric=<metric>` that metric's value: the objective a
sweeper such as Optuna optimizes.
"""

import os
import warnings

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from bc.cli import command, run

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# hydra-optuna-sweeper 1.3 (the last release) calls Optuna APIs deprecated until Optuna 6;
# requirements.txt pins Optuna 5, where they work.
warnings.filterwarnings("ignore", message=r".* deprecated in v[345]\.\d+\.\d+\. .* removed in v6",
                        category=FutureWarning)


@command("train", "train.py")
def main(cfg: DictConfig) -> str | float | None:
    from bc.training.train import objective, train

    def job() -> str | float | None:
        run_id = train(cfg)
        return objective(cfg, run_id) if cfg.optimized_metric else run_id

    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return job()  # Hydra records a failed job and goes on with the sweep's other jobs
    return run("train.py", job)


if __name__ == "__main__":
    main()
