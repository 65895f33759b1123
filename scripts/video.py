"""Make ``<folder>.mp4`` from a drive run saved with ``drive.py image_folder=<folder>``.

The command `python -m bc.commands.video` (bc/commands/video.py) under the name the docs show.
"""

from bc.commands.video import start

if __name__ == "__main__":
    start()
