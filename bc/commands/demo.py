"""The main job, end to end: record the lake track with the noisy expert, train PilotNet on it,
let it drive the lake track closed-loop through scripts/drive.py, and show the numbers.

Every step is the same command a user would type (printed before it runs); all runs land in
one MLflow experiment (`demo`). Settings: conf/demo.yaml (e.g. `epochs=3 record_laps=2`);
the work: bc/experiments/pipeline.py.
"""

from __future__ import annotations

from omegaconf import DictConfig

from bc.cli import command, run


@command("demo", "demo.py")
def main(cfg: DictConfig) -> None:
    from hydra.utils import instantiate

    run("demo.py", lambda: instantiate(cfg, _convert_="all").run())


if __name__ == "__main__":
    main()
