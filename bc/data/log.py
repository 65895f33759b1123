"""Read Udacity simulator recordings (`driving_log.csv` + `IMG/`) into one clean table.

Every real variant loads (see ../shared/design/PROTOCOL.md section 1): the raw Unity log
(no header, absolute paths, Windows backslashes and drive letters from another machine),
Udacity's sample data (header, relative `IMG/...` paths, `", "` separators) and several
recordings merged. Image paths are always resolved **by file name inside
`<recording>/IMG/`**, so a recording copied between machines keeps working.

Bad rows are never dropped silently. A row is bad when it has the wrong number of fields,
a steering/throttle/brake/speed value that is not a finite number, or a camera image that
is missing or not a complete JPEG. JPEGs are checked cheaply here (SOI marker at the start,
EOI marker near the end, which catches empty and truncated files); a JPEG whose body is
corrupt in a way those markers do not show fails later, when it is decoded, with an error
naming the file (`bc.data.images.read_rgb`). By default bad rows raise `DrivingLogError`
naming the csv, the first row numbers and the total count; `on_bad_row="skip"` drops them
and logs a warning with the count. A comma-decimal locale (`0,25`) always raises: it cannot
be parsed unambiguously.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from pathlib import Path, PureWindowsPath
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from bc.errors import BcError

log = logging.getLogger(__name__)

COLUMNS = ("center", "left", "right", "steering", "throttle", "brake", "speed")
CAMERAS = ("center", "left", "right")
NUMERIC_COLUMNS = ("steering", "throttle", "brake", "speed")
LOG_NAME = "driving_log.csv"
IMAGE_DIR = "IMG"
ON_BAD_ROW = ("error", "skip")
# How many bad rows an error message lists before it only counts the rest.
MAX_ROWS_IN_MESSAGE = 5
# JPEG start-of-image marker, and end-of-image marker searched in the file's last bytes
# (some encoders pad after it).
_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_JPEG_TAIL_BYTES = 64
_INTEGER = re.compile(r"^-?\d+([eE][-+]?\d+)?$")


class DrivingLogError(BcError, ValueError):
    """A recording cannot be used as it is; the message names the file, rows and fix."""


def image_name(path: str) -> str:
    """File name of an image path from any OS (`C:\\a\\IMG\\x.jpg`, `/a/IMG/x.jpg`, `IMG/x.jpg`)."""
    # PureWindowsPath splits on both '\\' and '/', and drops a drive letter.
    return PureWindowsPath(path.strip()).name


def jpeg_problem(path: str | os.PathLike) -> str | None:
    """Cheap completeness check of a JPEG file: None if it looks whole, else what is wrong."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(_JPEG_SOI))
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - _JPEG_TAIL_BYTES))
            tail = handle.read()
    except OSError as error:
        return f"cannot read image {path}: {error.strerror or error}"
    if size == 0:
        return f"image {path} is empty"
    if head != _JPEG_SOI:
        return f"image {path} is not a JPEG (no start-of-image marker)"
    if _JPEG_EOI not in tail:
        return f"image {path} is a truncated JPEG (no end-of-image marker)"
    return None


def _log_path(folder: str | os.PathLike) -> tuple[Path, Path]:
    """(recording folder, its driving_log.csv); accepts the folder or the csv itself."""
    path = Path(folder).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":
        return path.parent, path
    if not path.exists():
        raise DrivingLogError(f"recording folder {path} does not exist")
    if not path.is_dir():
        raise DrivingLogError(
            f"recording {path} is not a folder (expected a folder with {LOG_NAME} and {IMAGE_DIR}/)"
        )
    csv_path = path / LOG_NAME
    if not csv_path.is_file():
        raise DrivingLogError(
            f"recording folder {path} has no {LOG_NAME} (expected {LOG_NAME} and {IMAGE_DIR}/ "
            "as written by the simulator's training mode)"
        )
    return path, csv_path


def _comma_decimal_message(csv_path: Path, line: int, fields: list[str]) -> str:
    shown = ",".join(fields[3:])
    return (
        f"{csv_path} row {line}: {len(fields)} fields where {len(COLUMNS)} are expected "
        f"({','.join(COLUMNS)}), and the numbers look like they use a comma as the decimal "
        f"separator ({shown!r}, e.g. '0,25' for 0.25). The recording was written on a "
        "comma-decimal locale and cannot be parsed unambiguously. Re-record with a '.'-decimal "
        "system locale (e.g. English (United States) region format), or rewrite the numbers "
        "with '.' decimals."
    )


def _field_counts(csv_path: Path) -> tuple[list[int], list[list[str]], str]:
    """Fields per line (0 for blank lines), the split lines and the text, one record per line."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DrivingLogError(
            f"{csv_path} is not UTF-8 text ({error}); is it a driving log?"
        ) from error
    records = list(csv.reader(text.splitlines(), skipinitialspace=True, quoting=csv.QUOTE_NONE))
    counts = [0 if not "".join(fields).strip() else len(fields) for fields in records]
    return counts, records, text


def _has_header(first_fields: list[str]) -> bool:
    return bool(first_fields) and first_fields[0].strip().lower() == COLUMNS[0]


def read_driving_log(
    folder: str | os.PathLike,
    on_bad_row: str = "error",
    cameras: Sequence[str] = CAMERAS,
    verify_images: bool = True,
) -> pd.DataFrame:
    """Load one recording folder's driving log with images resolved inside `<folder>/IMG/`.

    Returns columns center, left, right (absolute path strings), steering, throttle, brake,
    speed (float), recording (folder) and row (1-based csv line). Only the `cameras` listed
    must have an existing, complete image for a row to be good.
    """
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row: expected one of {list(ON_BAD_ROW)}, got {on_bad_row!r}")
    unknown = [camera for camera in cameras if camera not in CAMERAS]
    if unknown:
        raise ValueError(f"cameras: unknown camera(s) {unknown}; expected some of {list(CAMERAS)}")
    folder_path, csv_path = _log_path(folder)
    folder_path = folder_path.resolve()
    image_dir = folder_path / IMAGE_DIR
    if not image_dir.is_dir():
        raise DrivingLogError(
            f"recording folder {folder_path} has no {IMAGE_DIR}/ folder next to {csv_path.name}"
        )

    counts, records, text = _field_counts(csv_path)
    lines = [index + 1 for index, count in enumerate(counts) if count > 0]
    if not lines:
        raise DrivingLogError(f"{csv_path} has no rows")

    # Header: Udacity's sample data names the columns; the raw Unity log does not.
    column_order = list(COLUMNS)
    first = records[lines[0] - 1]
    if _has_header(first):
        names = [name.strip().lower() for name in first]
        if sorted(names) != sorted(COLUMNS):
            raise DrivingLogError(
                f"{csv_path} row {lines[0]}: header {first} does not name the columns"
                f" {list(COLUMNS)}"
            )
        column_order = names
        lines = lines[1:]

    # Comma-decimal locale: extra fields that are all integers ('0,25' split in two).
    for line in lines:
        fields = records[line - 1]
        if len(fields) > len(COLUMNS) and all(
            _INTEGER.match(value.strip()) for value in fields[3:]
        ):
            raise DrivingLogError(_comma_decimal_message(csv_path, line, fields))
    if len(lines) and all(
        counts[line - 1] == 1 and ";" in records[line - 1][0] for line in lines[:10]
    ):
        raise DrivingLogError(
            f"{csv_path}: rows are separated by ';' (a spreadsheet export on a comma-decimal"
            f" locale?); expected the simulator's ',' separated {','.join(COLUMNS)} with '.'"
            " decimals"
        )

    width = max(max(counts), len(COLUMNS))
    table = pd.read_csv(
        csv_path,
        header=None,
        names=range(width),
        dtype=str,
        keep_default_na=False,
        skip_blank_lines=False,
        skipinitialspace=True,
        quoting=csv.QUOTE_NONE,
        encoding="utf-8-sig",
    )
    if len(table) != len(counts):  # pandas and csv must agree line for line
        raise DrivingLogError(
            f"{csv_path}: could not split the file into lines consistently; is it a driving log?"
        )
    table = table.iloc[[line - 1 for line in lines], : len(COLUMNS)]
    table.columns = column_order
    table = table[list(COLUMNS)].reset_index(drop=True)

    frame = pd.DataFrame({"row": np.asarray(lines, dtype=np.int64)})
    problems: dict[int, str] = {}

    def flag(mask: np.ndarray, reason) -> None:
        for index in np.flatnonzero(mask):
            problems.setdefault(int(index), reason(int(index)))

    field_count = np.asarray([counts[line - 1] for line in lines])
    flag(
        field_count != len(COLUMNS),
        lambda i: f"{field_count[i]} fields, expected {len(COLUMNS)} ({','.join(COLUMNS)})",
    )

    for name in NUMERIC_COLUMNS:
        raw = table[name].astype(str)
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        frame[name] = values
        flag(
            ~np.isfinite(values),
            lambda i, name=name, raw=raw: f"{name} {raw.iloc[i]!r} is not a finite number",
        )

    available = set(os.listdir(image_dir))
    for camera in CAMERAS:
        names = [image_name(value) for value in table[camera].astype(str)]
        frame[camera] = [str(image_dir / name) if name else "" for name in names]
        if camera not in cameras:
            continue
        missing = np.asarray([not name or name not in available for name in names])
        flag(
            missing,
            lambda i, camera=camera, names=names: (
                f"{camera} image missing: {table[camera].iloc[i]!r} (looked for"
                f" {names[i] or '<empty>'} in {image_dir})"
            ),
        )
        if verify_images:
            for index, path in enumerate(frame[camera].tolist()):
                if index not in problems:
                    problem = jpeg_problem(path)
                    if problem:
                        problems[index] = problem

    frame["recording"] = str(folder_path)
    frame = frame[list(COLUMNS) + ["recording", "row"]]

    if problems:
        bad = sorted(problems)
        summary = "; ".join(
            f"row {frame['row'].iat[i]}: {problems[i]}" for i in bad[:MAX_ROWS_IN_MESSAGE]
        )
        more = (
            f"; ... and {len(bad) - MAX_ROWS_IN_MESSAGE} more"
            if len(bad) > MAX_ROWS_IN_MESSAGE
            else ""
        )
        message = f"{csv_path}: {len(bad)} bad row(s) of {len(frame)}: {summary}{more}"
        if on_bad_row == "error":
            raise DrivingLogError(
                f"{message}. Fix the recording, or skip these rows with on_bad_row='skip' "
                "(data.on_bad_row=skip)."
            )
        log.warning("skipping %s", message)
        frame = frame.drop(index=bad).reset_index(drop=True)
        if frame.empty:
            raise DrivingLogError(
                f"{csv_path}: every row is bad ({len(bad)}); nothing left to train on"
            )
    return frame


def read_driving_logs(
    folders: str | os.PathLike | Iterable[str | os.PathLike],
    on_bad_row: str = "error",
    cameras: Sequence[str] = CAMERAS,
    verify_images: bool = True,
) -> pd.DataFrame:
    """Load and merge several recordings (one table, `recording` tells them apart)."""
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    folders = list(folders)
    if not folders:
        raise DrivingLogError("no recording folders given (data.paths is empty)")
    tables = [read_driving_log(folder, on_bad_row, cameras, verify_images) for folder in folders]
    seen = [table["recording"].iat[0] for table in tables]
    duplicates = sorted({name for name in seen if seen.count(name) > 1})
    if duplicates:
        raise DrivingLogError(f"recording folder(s) listed more than once: {duplicates}")
    return pd.concat(tables, ignore_index=True)
