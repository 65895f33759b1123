"""Saving an inference run (``drive.py image_folder=...``): every received frame as the JPEG
bytes the simulator sent (no re-encode), named by UTC time as in the reference ``drive.py``
(docs/PROTOCOL.md section 2), plus ``drive_log.csv`` of what the server answered.

Files are written by one background OS thread, so the socket loop only enqueues bytes.
"""

from __future__ import annotations

import csv
import logging
import queue
import re
import threading
from datetime import datetime, timezone
from pathlib import Path

from bc.errors import BcError, ConfigError

LOG = logging.getLogger(__name__)

CSV_NAME = "drive_log.csv"
CSV_COLUMNS = ("time", "image", "steering", "throttle", "speed")
FRAME_SUFFIX = ".jpg"
# The reference's name: utcnow().strftime('%Y_%m_%d_%H_%M_%S_%f')[:-3] + '.jpg' (milliseconds),
# plus "_<n>" for a second frame within one millisecond.
TIME_FORMAT = "%Y_%m_%d_%H_%M_%S_%f"
FRAME_NAME = re.compile(r"\d{4}(_\d{2}){5}_\d{3}(_\d+)?" + re.escape(FRAME_SUFFIX))
_STOP = None


class FolderNotEmptyError(BcError, RuntimeError):
    """The image folder holds files that ``overwrite`` may not (or was not asked to) delete."""


def frame_stem(when: datetime) -> str:
    """File stem of a frame received at ``when`` (UTC, millisecond resolution)."""
    return when.strftime(TIME_FORMAT)[:-3]


def is_frame_file(path: Path) -> bool:
    """Whether ``path`` is a file this recorder writes (``drive_log.csv`` or a named frame)."""
    return path.is_file() and (path.name == CSV_NAME or FRAME_NAME.fullmatch(path.name) is not None)


def recorded_files(folder: Path, overwrite: bool) -> list[Path]:
    """The files of ``folder`` that starting a recording there would delete.

    Raises ``FolderNotEmptyError`` when the folder is not empty and either ``overwrite`` is
    off or the folder holds anything this recorder did not write (a copied recording's
    ``driving_log.csv`` and ``IMG/``, say): ``overwrite`` only ever deletes a drive's frames.
    """
    if folder.exists() and not folder.is_dir():
        raise FolderNotEmptyError(f"image_folder {folder} exists and is not a folder")
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    if not entries:
        return []
    if not overwrite:
        raise FolderNotEmptyError(
            f"image_folder {folder} is not empty; choose another folder or pass "
            "overwrite=true to delete the frames of an earlier drive there")
    foreign = [entry.name for entry in entries if not is_frame_file(entry)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise FolderNotEmptyError(
            f"image_folder {folder} holds {shown}, which drive.py did not write; overwrite=true "
            f"only deletes a drive's {CSV_NAME} and frames, so choose another folder")
    return entries


class FrameRecorder:
    """Frames and CSV rows of one drive, written in a background thread.

    Built from conf/drive.yaml; the constructor only checks the folder (nothing is deleted
    before the model has loaded), ``start()`` empties it and opens ``drive_log.csv``,
    ``close()`` flushes everything. Also a context manager (start / close).
    """

    def __init__(self, folder: Path | str, overwrite: bool) -> None:
        if not str(folder).strip():
            raise ConfigError("image_folder: expected a folder path, got an empty string")
        self.folder = Path(folder)
        self.overwrite = bool(overwrite)
        recorded_files(self.folder, self.overwrite)
        self.frames = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._last_stem = ""
        self._repeat = 0
        self._csv_file = None
        self._thread: threading.Thread | None = None

    def start(self) -> "FrameRecorder":
        """Delete an earlier drive's files (``overwrite``), open the CSV, start the writer."""
        stale = recorded_files(self.folder, self.overwrite)
        if stale:
            LOG.warning("overwrite=true: deleting %d file(s) of an earlier drive in %s",
                        len(stale), self.folder)
            for path in stale:
                path.unlink()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._csv_file = open(self.folder / CSV_NAME, "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(CSV_COLUMNS)
        self._csv_file.flush()
        self._thread = threading.Thread(target=self._run, name="frame-recorder", daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> "FrameRecorder":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        """Write everything still queued and close the CSV (safe to call twice)."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        if self._csv_file is not None and not self._csv_file.closed:
            self._csv_file.close()
