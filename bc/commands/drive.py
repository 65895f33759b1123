"""Serve a trained steering model to the Udacity simulator (autonomous mode).

    python scripts/drive.py run_id=<id>|<run name>|latest|best [experiment_name=bc]
    python scripts/drive.py run_id=best [metric=val/loss mode=min]
    python scripts/drive.py model_path=model.ts [image_folder=run1] [set_speed=12]

Prints ``serving <source> on http://127.0.0.1:4567 for <W>x<H> frames`` once the port is
open. Configuration: conf/drive.yaml. Imports only what serving needs (no Lightning,
albumentations or mlflow.pytorch; MLflow itself only for run_id).
"""

from __future__ import annotations

from omegaconf import DictConfig

from bc.cli import command, run


@command("drive", "drive.py")
def main(cfg: DictConfig) -> None:
    from bc.drive.server import PROG, run_from_config

    run(PROG, lambda: run_from_config(cfg))


if __name__ == "__main__":
    main()
