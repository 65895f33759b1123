"""Serve a trained steering model to the Udacity simulator (autonomous mode).

    python scripts/drive.py run_id=<id>|best [experiment=bc metric=val/loss mode=min]
    python scripts/drive.py model_path=model.ts [image_folder=run1] [set_speed=12]

Prints ``serving <source> on http://127.0.0.1:4567`` once the port is open. Configuration:
conf/drive.yaml. Imports only what serving needs (no Lightning, albumentations or
mlflow.pytorch; MLflow itself only for run_id).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

EXIT_USAGE = 2


@hydra.main(version_base="1.3", config_path="../conf", config_name="drive")
def main(cfg: DictConfig) -> None:
    from hydra.errors import InstantiationException

    from bc.drive.recorder import FolderNotEmptyError
    from bc.drive.server import run_from_config
    from bc.tracking import TrackingError

    try:
        run_from_config(cfg)
    except (TrackingError, FolderNotEmptyError, OSError, ValueError,
            InstantiationException) as error:
        cause = error.__cause__ if isinstance(error, InstantiationException) else None
        print(f"drive.py: error: {cause or error}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()
