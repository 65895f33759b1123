"""Benchmarks, one command: `python scripts/benchmark.py NAME [key=value ...]`.

The command `python -m bc.commands.benchmark` (bc/commands/benchmark.py) under the name the docs show.
"""

from bc.commands.benchmark import start

if __name__ == "__main__":
    start()
