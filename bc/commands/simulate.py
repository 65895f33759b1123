"""Built-in headless simulator: record Unity-format training data, or drive against a server.

    python scripts/simulate.py mode=record track=lake laps=3 out=data/lake seed=0
    python scripts/simulate.py mode=autonomous track=lake laps=2 port=4567

Configuration: conf/simulate.yaml (see bc/sim/).
"""

from __future__ import annotations

from omegaconf import DictConfig

from bc.cli import command, run

MODES = ("record", "autonomous")


def simulate(cfg: DictConfig) -> None:
    """Build the mode's object from the config (its settings are checked there), then run it."""
    from hydra.utils import instantiate

    from bc.errors import ConfigError
    from bc.sim.env import resolve_track

    if cfg.mode not in MODES:
        raise ConfigError(f"mode: expected one of {MODES}, got {cfg.mode!r}")
    if cfg.mode == "record":
        recorder = instantiate(cfg.recorder)
        recorder.record(resolve_track(str(cfg.track), seed=cfg.seed), cfg.out)
    else:
        instantiate(cfg.autonomous).run(resolve_track(str(cfg.track), seed=cfg.seed))


@command("simulate", "simulate.py")
def main(cfg: DictConfig) -> None:
    run("simulate.py", lambda: simulate(cfg))


if __name__ == "__main__":
    main()
