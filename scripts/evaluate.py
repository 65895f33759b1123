"""Closed-loop evaluation of a trained run: `python scripts/evaluate.py run_id=... track=lake laps=2`.

Starts scripts/drive.py for the run's model, drives the built-in simulator against it over
Socket.IO on each track, prints the metrics and logs them (eval/<track>/...) to the run.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from bc.drive.launch import DriveServerError
    from bc.evaluate import evaluate
    from bc.tracking import find_run
    from bc.sim.autonomous import AutonomousError
    from bc.tracking import TrackingError

    tracks = list(cfg.track) if isinstance(cfg.track, ListConfig) else [str(cfg.track)]
    try:
        run_id = find_run(str(cfg.run_id), cfg.experiment_name, cfg.metric, cfg.mode, cfg.tracking_uri)
        out = Path(cfg.out) if cfg.out else Path(HydraConfig.get().runtime.output_dir)
        print(f"evaluating MLflow run {run_id} on {', '.join(tracks)} ({cfg.laps} laps at "
              f"{cfg.set_speed} mph); outputs in {out}")
        evaluate(run_id, tracks, laps=cfg.laps, seed=cfg.seed, set_speed=cfg.set_speed,
                 slow_in_bends=cfg.slow_in_bends, tracking_uri=cfg.tracking_uri, out=out,
                 video=cfg.video, max_steps=cfg.max_steps, realtime=cfg.realtime,
                 progress=cfg.progress)
    except (DriveServerError, AutonomousError, TrackingError) as error:
        sys.exit(f"evaluate: {error}")
    print(f"metrics logged to MLflow run {run_id} (eval/<track>/...); outputs in {out}")


if __name__ == "__main__":
    main()
