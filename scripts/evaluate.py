"""Closed-loop evaluation of a trained run: `scripts/evaluate.py run_id=... track=lake laps=2`.

The command `python -m bc.commands.evaluate` (bc/commands/evaluate.py) under the name the docs show.
"""

from bc.commands.evaluate import main

if __name__ == "__main__":
    main()
