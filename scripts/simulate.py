"""Built-in headless simulator: record Unity-format training data, or drive against a server.

    python scripts/simulate.py mode=record track=lake laps=3 out=data/lake seed=0
    python scripts/simulate.py mode=autonomous track=lake laps=2 port=4567

Configuration: conf/simulate.yaml (see bc/sim/).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

EXIT_USAGE = 2
MODES = ("record", "autonomous")


@hydra.main(version_base="1.3", config_path="../conf", config_name="simulate")
def main(cfg: DictConfig) -> None:
    from bc.sim.autonomous import AutonomousError
    from bc.sim.track import TrackError
    from bc.tracking import TrackingError

    try:
        if cfg.mode == "record":
            from bc.sim.recorder import record
            from bc.sim.track import load_track

            record(
                load_track(str(cfg.track), seed=int(cfg.seed)),
                cfg.out,
                laps=float(cfg.laps),
                seed=int(cfg.seed),
                speed_mph=float(cfg.speed_mph),
                noise=OmegaConf.to_container(cfg.noise) if cfg.noise else False,
                recovery=OmegaConf.to_container(cfg.recovery) if cfg.recovery else False,
                dt=float(cfg.dt),
                progress=bool(cfg.progress),
                jpeg_quality=int(cfg.jpeg_quality),
                max_rows=None if cfg.max_rows is None else int(cfg.max_rows),
            )
        elif cfg.mode == "autonomous":
            from bc.sim.autonomous import main as autonomous_main

            autonomous_main(cfg)
        else:
            raise ValueError(f"mode: expected one of {MODES}, got {cfg.mode!r}")
    except (TrackError, OSError, ValueError, AutonomousError, TrackingError) as error:
        print(f"simulate.py: error: {error}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()
