"""The main job, end to end: record the lake track with the noisy expert, train PilotNet on it,

The command `python -m bc.commands.demo` (bc/commands/demo.py) under the name the docs show.
"""

from bc.commands.demo import main

if __name__ == "__main__":
    main()
