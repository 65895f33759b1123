"""Offline vs online: `python scripts/offline_online.py experiment_name=bc sweep=<multirun folder>`.

Plots each epoch's val/loss against its closed-loop eval/score (runs trained with
`callbacks.closed_loop.every_n_epochs=1`), with Spearman's rank correlation, and logs the plot
to a new MLflow run: why bc selects checkpoints by how they drive. Settings:
conf/offline_online.yaml; the work: bc/offline_online.py.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="offline_online")
def main(cfg: DictConfig) -> None:
    from hydra.utils import instantiate

    from bc.cli import run

    run("offline_online.py", lambda: instantiate(cfg, _convert_="all").run())


if __name__ == "__main__":
    main()
