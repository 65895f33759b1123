"""Built-in headless simulator: record Unity-format training data, or drive against a server.

The command `python -m bc.commands.simulate` (bc/commands/simulate.py) under the name the docs show.
"""

from bc.commands.simulate import main

if __name__ == "__main__":
    main()
