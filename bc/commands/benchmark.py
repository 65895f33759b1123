"""Benchmarks, one command: `python scripts/benchmark.py NAME [key=value ...]`.

  loader   training-loader samples/s (with augmentation) vs the model's training-step samples/s
  sim      rendered camera frames/s on one core and recorded samples/s
  drive    drive-server round trip p50/p99 and replies/s vs the decode+forward floor
  scale    sweep basic vs joblib launcher, DDP vs 1 process, evaluation serial vs parallel
  driving  driving quality: train on lake, evaluate on lake, mountain and random tracks
  review   the review app: open a 30,000-row recording, step one frame (HTTP and Chromium)
  closed_loop  closed-loop evaluation steps/s: serial vs vectorised vs the floor; callback cost

Settings: conf/benchmark/NAME.yaml (`python scripts/benchmark.py NAME --cfg job` shows them);
the code: bc/experiments/benchmarks/. `benchmark.py NAME ...` is short for `benchmark.py benchmark=NAME ...`.
Numbers: docs/benchmarks.md.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from bc.cli import command, run


@command("benchmark", "benchmark.py")
def main(cfg: DictConfig) -> None:
    from hydra.utils import instantiate

    run("benchmark.py", lambda: instantiate(cfg, _convert_="all").run())


def start() -> None:
    """The command line as users type it (a leading positional argument allowed)."""
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-") and "=" not in sys.argv[1]:
        sys.argv[1] = f"benchmark={sys.argv[1]}"
    main()


if __name__ == "__main__":
    start()
