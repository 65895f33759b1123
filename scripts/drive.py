"""Serve a trained steering model to the Udacity simulator (autonomous mode).

The command `python -m bc.commands.drive` (bc/commands/drive.py) under the name the docs show.
"""

from bc.commands.drive import main

if __name__ == "__main__":
    main()
