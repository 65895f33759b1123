"""DAgger with the built-in expert: `python scripts/dagger.py rounds=3 model=small`.

The command `python -m bc.commands.dagger` (bc/commands/dagger.py) under the name the docs show.
"""

from bc.commands.dagger import main

if __name__ == "__main__":
    main()
