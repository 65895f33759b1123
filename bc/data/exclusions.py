"""Rows of a recording left out of training without touching it: the exclusions sidecar.

`driving_log.exclusions.json` beside a recording's `driving_log.csv` lists ranges of the
log's csv line numbers (1-based, the `row` that error messages and `bc.data.log` use; the
header line of Udacity's sample data is line 1). The log and the frames stay as recorded;
`scripts/review.py` writes the sidecar, and the datamodule drops the rows it names (counted
as `excluded_rows` in the data stats and in the run's MLflow dataset input)::

    {
      "format": "bc-exclusions/1",
      "log": "driving_log.csv",
      "ranges": [
        {"first_row": 120, "last_row": 180, "note": "drove off the road"}
      ]
    }

A range is inclusive at both ends; `note` is optional. Ranges may overlap. A sidecar that
cannot be read is an error naming the file and the field, never a silently ignored file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np
import pandas as pd

from bc.core import udacity
from bc.errors import BcError

SIDECAR_NAME = "driving_log.exclusions.json"
FORMAT = "bc-exclusions/1"
# `table.attrs` keys: rows dropped by the sidecars, in all and per recording folder.
EXCLUDED_ROWS = "excluded_rows"
EXCLUDED_BY_RECORDING = "excluded_rows_by_recording"


class ExclusionsError(BcError, ValueError):
    """A sidecar that cannot be used; the message names the file and the field."""


class Range(NamedTuple):
    """Log lines `first_row`..`last_row` (inclusive) left out of training."""

    first_row: int
    last_row: int
    note: str = ""

    def as_dict(self) -> dict:
        entry = {"first_row": self.first_row, "last_row": self.last_row}
        return {**entry, "note": self.note} if self.note else entry


def sidecar_path(folder: str | os.PathLike) -> Path:
    """The sidecar of a recording folder (or of its `driving_log.csv`)."""
    path = Path(folder)
    if path.suffix.lower() == ".csv":
        path = path.parent
    return path / SIDECAR_NAME


def _range(path: Path, index: int, entry: object) -> Range:
    where = f"{path}: ranges[{index}]"
    if not isinstance(entry, dict):
        raise ExclusionsError(f"{where}: expected {{\"first_row\": n, \"last_row\": m}}, got {entry!r}")
    values = []
    for key in ("first_row", "last_row"):
        value = entry.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ExclusionsError(f"{where}.{key}: expected a csv line number >= 1, got {value!r}")
        values.append(value)
    if values[1] < values[0]:
        raise ExclusionsError(f"{where}: last_row {values[1]} is before first_row {values[0]}")
    note = entry.get("note", "")
    if not isinstance(note, str):
        raise ExclusionsError(f"{where}.note: expected text, got {note!r}")
    return Range(values[0], values[1], note)


def read_exclusions(folder: str | os.PathLike) -> list[Range]:
    """The ranges of a recording's sidecar ([] when it has none)."""
    path = sidecar_path(folder)
    if not path.is_file():
        return []
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ExclusionsError(f"{path}: not a JSON exclusions file ({error})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ExclusionsError(f"{path}: expected an object with \"format\": \"{FORMAT}\"")
    ranges = document.get("ranges")
    if not isinstance(ranges, list):
        raise ExclusionsError(f"{path}: ranges: expected a list, got {ranges!r}")
    return [_range(path, index, entry) for index, entry in enumerate(ranges)]


def write_exclusions(folder: str | os.PathLike, ranges: Iterable[Range]) -> Path:
    """Write the sidecar (atomically: a reader sees the old file or the new one)."""
    path = sidecar_path(folder)
    document = {"format": FORMAT, "log": udacity.LOG_NAME,
                "ranges": [Range(*entry).as_dict() for entry in ranges]}
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


def excluded_mask(rows: np.ndarray, ranges: Sequence[Range]) -> np.ndarray:
    """Which of the csv line numbers `rows` fall in one of `ranges`."""
    rows = np.asarray(rows)
    mask = np.zeros(len(rows), dtype=bool)
    for entry in ranges:
        mask |= (rows >= entry.first_row) & (rows <= entry.last_row)
    return mask


def drop_excluded(table: pd.DataFrame) -> pd.DataFrame:
    """A `bc.data.log` table without the rows its recordings' sidecars exclude; the counts go
    to `attrs` (`excluded_rows`, and per recording folder `excluded_rows_by_recording`)."""
    attrs = dict(table.attrs)
    mask = np.zeros(len(table), dtype=bool)
    counts: dict[str, int] = {}
    recordings = table["recording"].to_numpy()
    for recording in dict.fromkeys(recordings):
        ranges = read_exclusions(recording)
        if not ranges:
            continue
        where = np.flatnonzero(recordings == recording)
        hit = excluded_mask(table["row"].to_numpy()[where], ranges)
        mask[where[hit]] = True
        counts[str(recording)] = int(hit.sum())
    kept = table[~mask].reset_index(drop=True)
    if kept.empty:
        raise ExclusionsError(
            f"every row is excluded by {', '.join(str(sidecar_path(r)) for r in counts)}; "
            "nothing left to train on")
    kept.attrs.update(attrs)
    kept.attrs[EXCLUDED_ROWS] = int(mask.sum())
    kept.attrs[EXCLUDED_BY_RECORDING] = counts
    return kept
