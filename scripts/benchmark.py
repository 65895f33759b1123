"""Benchmarks, one command: `python scripts/benchmark.py NAME [options]`.

  loader   training-loader samples/s (with augmentation) vs PilotNet training-step samples/s
  sim      rendered camera frames/s on one core and recorded samples/s
  drive    drive-server round trip p50/p99 and replies/s vs the decode+forward floor
  driving  driving quality: train on lake, evaluate on lake, mountain and random tracks

`python scripts/benchmark.py NAME --help` lists each one's options. Numbers: README.md.
"""

import runpy
import sys

MODULES = {
    "loader": "bc.data.benchmark",
    "sim": "bc.sim.benchmark",
    "drive": "bc.drive.benchmark",
    "driving": "bc.driving_benchmark",
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in MODULES:
        sys.exit(f"usage: python scripts/benchmark.py {{{'|'.join(MODULES)}}} [options]\n\n{__doc__}")
    name = sys.argv.pop(1)
    sys.argv[0] = f"scripts/benchmark.py {name}"
    runpy.run_module(MODULES[name], run_name="__main__", alter_sys=True)
