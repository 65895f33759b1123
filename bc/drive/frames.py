"""Saving an inference run: every received frame as the JPEG bytes the simulator sent (no
re-encode), named by UTC time as in the reference ``drive.py``, plus a CSV of what the
server answered.

Files are written by one background OS thread, so the socket loop only enqueues bytes.
"""

from __future__ import annotations

import csv
import logging
import queue
import shutil
import threading
from datetime import datetime, timezone
from pathlib import Path
from bc.errors import BcError

LOG = logging.getLogger(__name__)

CSV_NAME = "drive_log.csv"
CSV_COLUMNS = ("time", "image", "steering", "throttle", "speed")
FRAME_SUFFIX = ".jpg"
# The reference's name: utcnow().strftime('%Y_%m_%d_%H_%M_%S_%f')[:-3] + '.jpg' (milliseconds).
TIME_FORMAT = "%Y_%m_%d_%H_%M_%S_%f"
_STOP = None


class FolderNotEmptyError(BcError, RuntimeError):
    """The image folder already holds files and ``overwrite`` was not given."""


def frame_stem(when: datetime) -> str:
    """File stem of a frame received at ``when`` (UTC, millisecond resolution)."""
    return when.strftime(TIME_FORMAT)[:-3]


def check_folder(folder: Path, overwrite: bool = False) -> bool:
    """Whether ``folder`` holds files that ``prepare_folder`` would delete; raises when it
    may not (without ``overwrite``, or for the working directory, its parents or home)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FolderNotEmptyError(f"image_folder {folder} exists and is not a folder")
    if not (folder.is_dir() and any(folder.iterdir())):
        return False
    if not overwrite:
        raise FolderNotEmptyError(
            f"image_folder {folder} is not empty; choose another folder or pass "
            "overwrite=true to delete its contents")
    resolved, cwd = folder.resolve(), Path.cwd().resolve()
    if resolved in (cwd, *cwd.parents, Path.home().resolve()):
        raise FolderNotEmptyError(
            f"image_folder {folder} is the working directory, one of its parents or the "
            "home folder; refusing to delete it even with overwrite=true")
    return True


def prepare_folder(folder: Path, overwrite: bool = False) -> Path:
    """Create ``folder``; refuse a non-empty one unless ``overwrite`` (then empty it)."""
    folder = Path(folder)
    if check_folder(folder, overwrite):
        LOG.warning("overwrite=true: deleting the contents of %s", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class FrameRecorder:
    """Writes frames and CSV rows in a background thread; ``close()`` flushes everything."""

    def __init__(self, folder: Path | str, overwrite: bool = False) -> None:
        self.folder = prepare_folder(Path(folder), overwrite)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._last_stem = ""
        self._repeat = 0
        self._csv_file = open(self.folder / CSV_NAME, "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(CSV_COLUMNS)
        self._csv_file.flush()
        self._thread = threading.Thread(target=self._run, name="frame-recorder", daemon=True)
        self._thread.start()
        self.frames = 0

    def _unique_stem(self, when: datetime) -> str:
        """Two frames in one millisecond would share a name; suffix ``_1``, ``_2``... (these
        sort after the plain name, so name order stays time order)."""
        stem = frame_stem(when)
        if stem == self._last_stem:
            self._repeat += 1
            return f"{stem}_{self._repeat}"
        self._last_stem, self._repeat = stem, 0
        return stem

    def record(self, jpeg: bytes, steering: float, throttle: float, speed: float) -> str:
        """Queue one frame (bytes as received) and its CSV row; returns the file name."""
        when = datetime.now(timezone.utc)
        name = self._unique_stem(when) + FRAME_SUFFIX
        row = (when.isoformat(timespec="milliseconds"), name, f"{steering:.6f}",
               f"{throttle:.6f}", f"{speed:.4f}")
        self._queue.put((name, jpeg, row))
        self.frames += 1
        return name

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            name, jpeg, row = item
            try:
                (self.folder / name).write_bytes(jpeg)
                self._csv.writerow(row)
                if self._queue.empty():
                    self._csv_file.flush()
            except OSError as error:  # a full disk must not stop the car
                LOG.warning("could not save frame %s in %s: %s", name, self.folder, error)

    def close(self) -> None:
        """Write everything still queued and close the CSV."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        if not self._csv_file.closed:
            self._csv_file.close()
