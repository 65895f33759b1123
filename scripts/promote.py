"""Set a registry alias (``champion``) on the registered version with the best closed-loop score.

The command `python -m bc.commands.promote` (bc/commands/promote.py) under the name the docs show.
"""

from bc.commands.promote import main

if __name__ == "__main__":
    main()
