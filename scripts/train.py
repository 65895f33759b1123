"""Train a steering network: `python scripts/train.py data.paths=[data/lake] model=nvidia`.

The command `python -m bc.commands.train` (bc/commands/train.py) under the name the docs show.
"""

from bc.commands.train import main

if __name__ == "__main__":
    main()
