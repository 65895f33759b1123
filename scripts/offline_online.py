"""Offline vs online: `python scripts/offline_online.py experiment_name=bc sweep=<multirun folder>`.

The command `python -m bc.commands.offline_online` (bc/commands/offline_online.py) under the name the docs show.
"""

from bc.commands.offline_online import main

if __name__ == "__main__":
    main()
