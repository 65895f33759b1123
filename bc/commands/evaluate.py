"""Closed-loop evaluation of a trained run: `scripts/evaluate.py run_id=... track=lake laps=2`.

Starts scripts/drive.py for the run's model, drives the built-in simulator against it over
Socket.IO on each track (`jobs=N`: N tracks at once, each against its own server), prints the
metrics of every track in one table and logs them (eval/<track>/...) to the run.
`vectorized=true`: no server; every track at once in-process, batched, lockstep (fast).
Configuration: conf/evaluate.yaml.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig

from bc.cli import command, run


def evaluate_run(cfg: DictConfig) -> None:
    """Check the settings, find the run, evaluate it on every track."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from bc.evaluation.evaluate import evaluate, tracks_table
    from bc.tracking import find_run

    autonomous = instantiate(cfg.autonomous)
    tracks = list(cfg.track) if isinstance(cfg.track, ListConfig) else [str(cfg.track)]
    if cfg.model_uri:  # a registered version: its source run's model, metrics logged there
        from bc.tracking.registry import run_of

        run_id = run_of(str(cfg.model_uri), cfg.tracking_uri)
    else:
        run_id = find_run(str(cfg.run_id), cfg.experiment_name, cfg.metric, cfg.mode, cfg.tracking_uri)
    out = Path(cfg.out) if cfg.out else Path(HydraConfig.get().runtime.output_dir)
    print(f"evaluating MLflow run {run_id} on {', '.join(tracks)} ({cfg.laps:g} laps at "
          f"{cfg.set_speed} mph); outputs in {out}", flush=True)
    if cfg.vectorized:
        from bc.errors import ConfigError
        from bc.evaluation.evaluate import evaluate_vectorised

        if cfg.saliency:
            raise ConfigError("vectorized: true writes no video to draw saliency on; "
                              "drop saliency=true or vectorized=true")
        results = evaluate_vectorised(
            run_id, tracks, autonomous, out=out, set_speed=cfg.set_speed,
            speed_source=cfg.speed_source, runtime=cfg.runtime,
            tracking_uri=cfg.tracking_uri)
    else:
        results = evaluate(run_id, tracks, autonomous, out=out,
                           server_overrides=list(cfg.drive_server),
                           tracking_uri=cfg.tracking_uri, jobs=cfg.jobs, saliency=cfg.saliency)
    print(tracks_table(results))
    print(f"metrics logged to MLflow run {run_id} (eval/<track>/...); outputs in {out}")


@command("evaluate", "evaluate.py")
def main(cfg: DictConfig) -> None:
    run("evaluate.py", lambda: evaluate_run(cfg))


if __name__ == "__main__":
    main()
