"""A recording as the review app shows it: every row as recorded (bad ones too), its frames'
files, its suspicious stretches, and its exclusions sidecar (the only file the app writes).

Opening reads the log and lists `IMG/` (no image is opened), so a 30,000-row recording opens
in well under a second; the near-duplicate check decodes every center frame at 1/8 size and
runs in a background thread, its stretches joining the others when it is done.
"""

from __future__ import annotations

import atexit
import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from bc.core import udacity
from bc.data.exclusions import Range, read_exclusions, sidecar_path, write_exclusions
from bc.data.log import read_driving_log_as_is
from bc.review import flags


BACKGROUND_NICENESS = 10


def lower_priority() -> None:
    """Run the calling (background) thread at a lower priority, so the app's answers stay
    quick while it works (Linux sets niceness per thread; elsewhere nothing changes)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)
    except (AttributeError, OSError):
        pass


def _finite(values: np.ndarray, digits: int = 4) -> list:
    """Numbers for JSON: rounded, NaN/inf as null."""
    rounded = np.round(values.astype(np.float64), digits)
    return [value if math.isfinite(value) else None for value in rounded.tolist()]


class Recording:
    """One recording folder (`driving_log.csv` + `IMG/`), read as it is."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.table, self.problems = read_driving_log_as_is(folder)
        self.folder = Path(self.table["recording"].iat[0])
        self.image_dir = (self.folder / udacity.IMAGE_DIR).resolve()
        self.rows = self.table["row"].to_numpy()
        self.paths = {camera: self.table[camera].tolist() for camera in udacity.CAMERAS}
        self.rate_hz = udacity.SAMPLE_RATE_HZ
        self._lock = threading.Lock()
        self.exclusions = read_exclusions(self.folder)
        self.stretches = [*flags.bad_rows(self.problems, self.rows),
                          *flags.standstills(self.table["speed"].to_numpy(), self.rate_hz),
                          *flags.spikes(self.table["steering"].to_numpy())]
        self.duplicates: list[flags.Stretch] | None = None
        self.duplicates_checked = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._find_duplicates, name="review-duplicates",
                                        daemon=True)
        self._thread.start()
        atexit.register(self.close)  # a thread inside OpenCV at exit aborts the interpreter

    def __len__(self) -> int:
        return len(self.table)

    def _find_duplicates(self) -> None:
        lower_priority()
        def progress(count: int) -> None:
            self.duplicates_checked = count

        found = flags.duplicates(self.paths["center"], progress, self._stop)
        if found is not None:
            self.duplicates_checked = len(self)
            self.duplicates = found

    def close(self) -> None:
        """Stop the background check (it is daemonic, but must not be inside OpenCV at exit)."""
        self._stop.set()
        self._thread.join(timeout=5)

    def frame_path(self, camera: str, index: int) -> Path | None:
        """The JPEG of a camera at a row, only ever a file inside this recording's `IMG/`."""
        if camera not in self.paths or not 0 <= index < len(self):
            return None
        name = self.paths[camera][index]
        if not name:
            return None
        path = Path(name).resolve()  # a link out of IMG/ is not followed out
        if not path.is_relative_to(self.image_dir) or not path.is_file():
            return None
        return path

    def payload(self) -> dict[str, Any]:
        """Everything the page draws, in one JSON document (columns as arrays)."""
        table = self.table
        return {
            "kind": "recording",
            "name": self.folder.name,
            "folder": str(self.folder),
            "sidecar": str(sidecar_path(self.folder)),
            "rate_hz": self.rate_hz,
            "rows": self.rows.tolist(),
            "columns": {name: _finite(table[name].to_numpy()) for name in udacity.NUMERIC_COLUMNS},
            "label_ranges": {name: [low, high if math.isfinite(high) else None]
                             for name, (low, high) in udacity.LABEL_RANGES.items()},
            "cameras": [camera for camera in udacity.CAMERAS if any(self.paths[camera])],
            "problems": {str(index): reason for index, reason in self.problems.items()},
            "exclusions": [entry.as_dict() for entry in self.exclusions],
            **self.flags_payload(),
        }

    def flags_payload(self) -> dict[str, Any]:
        duplicates = self.duplicates
        stretches = self.stretches + (duplicates or [])
        return {"stretches": [entry.as_dict() for entry in sorted(stretches, key=lambda s: s.first)],
                "duplicates_done": duplicates is not None,
                "duplicates_checked": self.duplicates_checked}

    def exclude(self, first: int, last: int, note: str = "") -> list[dict]:
        """Exclude table rows `first`..`last` (their csv lines go to the sidecar)."""
        first, last = sorted((int(first), int(last)))
        if not (0 <= first and last < len(self)):
            raise IndexError(f"rows {first}..{last} are outside 0..{len(self) - 1}")
        entry = Range(int(self.rows[first]), int(self.rows[last]), str(note)[:200])
        with self._lock:
            self.exclusions = [*read_exclusions(self.folder), entry]
            write_exclusions(self.folder, self.exclusions)
        return [entry.as_dict() for entry in self.exclusions]

    def undo(self, position: int | None = None) -> list[dict]:
        """Remove one range (the last one by default) from the sidecar."""
        with self._lock:
            current = read_exclusions(self.folder)
            if current:
                index = len(current) - 1 if position is None else int(position)
                if not 0 <= index < len(current):
                    raise IndexError(f"no exclusion {index} (there are {len(current)})")
                del current[index]
                write_exclusions(self.folder, current)
            self.exclusions = current
        return [entry.as_dict() for entry in self.exclusions]
