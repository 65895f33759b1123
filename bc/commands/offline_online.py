"""Offline vs online: `python scripts/offline_online.py experiment_name=bc sweep=<multirun folder>`.

Plots each epoch's val/loss against its closed-loop eval/score (runs trained with
`callbacks.closed_loop.every_n_epochs=1`), with Spearman's rank correlation, and logs the plot
to a new MLflow run: why bc selects checkpoints by how they drive. Settings:
conf/offline_online.yaml; the work: bc/experiments/offline_online.py.
"""

from omegaconf import DictConfig

from bc.cli import command, run


@command("offline_online", "offline_online.py")
def main(cfg: DictConfig) -> None:
    from hydra.utils import instantiate

    run("offline_online.py", lambda: instantiate(cfg, _convert_="all").run())


if __name__ == "__main__":
    main()
