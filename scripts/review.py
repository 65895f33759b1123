"""Look at data in the browser: `python scripts/review.py <folder> [run_id=... | model_uri=...]`.

The command `python -m bc.commands.review` (bc/commands/review.py) under the name the docs show.
"""

from bc.commands.review import start

if __name__ == "__main__":
    start()
