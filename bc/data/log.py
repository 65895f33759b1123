"""Read Udacity simulator recordings (`driving_log.csv` + `IMG/`) into one clean table.

Every real variant loads (docs/PROTOCOL.md section 1): the raw Unity log (no header,
absolute paths, Windows backslashes and drive letters from another machine), Udacity's
sample data (header, relative `IMG/...` paths, `", "` separators) and several recordings
merged. Image paths are always resolved **by file name inside `<recording>/IMG/`**, so a
recording copied between machines keeps working.

Bad rows are never dropped silently. A row is bad when it has the wrong number of fields,
a steering/throttle/brake/speed value that is not a finite number or lies outside its
range (`bc.core.udacity.LABEL_RANGES`), or a camera image that is missing, not a complete JPEG
or has an unreadable header. By default bad rows raise `DrivingLogError` naming the csv,
the first row numbers and the total count; `on_bad_row="skip"` drops them and logs a
warning with the count. Two things are never skipped, because skipping would hide a wrong
recording rather than a damaged row: a comma-decimal locale (`0,25` cannot be parsed
unambiguously) and frames of another size than the others (or than the model's).
A JPEG whose scan data is corrupt only shows when it is decoded: the datamodule decodes
every frame when it builds its frame cache (`bc.data.dataset.FrameCache.fill`).

Length: the Udacity log's variants (header or not, Windows paths, comma decimals, sample
data's separators) and every bad-row rule with its one-line message live in one reader.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import re
from pathlib import Path, PureWindowsPath
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd

from bc.core import udacity
from bc.errors import BcError, ConfigError
from bc.core.images import ImageError, jpeg_problem, jpeg_size, read_image_file
from bc.core.preprocess import Preprocess

log = logging.getLogger(__name__)

ON_BAD_ROW = ("error", "skip")
# How many bad rows an error message lists before it only counts the rest.
MAX_ROWS_IN_MESSAGE = 5
# `table.attrs` key: rows dropped by on_bad_row="skip" while reading.
SKIPPED_ROWS = "skipped_rows"
_INTEGER = re.compile(r"^-?\d+([eE][-+]?\d+)?$")

Paths = str | os.PathLike | Iterable[str | os.PathLike]


class DrivingLogError(BcError, ValueError):
    """A recording cannot be used as it is; the message names the file, rows and fix."""


class FrameSize(NamedTuple):
    """A camera frame size and where it comes from (for error messages)."""

    width: int
    height: int
    source: str = "the expected frame size"

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


def file_name_from_log_path(path: str) -> str:
    """File name of an image path from any OS (`C:\\a\\IMG\\x.jpg`, `/a/IMG/x.jpg`, `IMG/x.jpg`)."""
    # PureWindowsPath splits on both '\\' and '/', and drops a drive letter. An ordinary
    # last component is taken with string operations (a 30,000-row log names 90,000 images).
    text = path.strip()
    name = text.replace("\\", "/").rsplit("/", 1)[-1]
    if name and name not in (".", "..") and ":" not in name and not text.startswith(("//", "\\\\")):
        return name
    return PureWindowsPath(text).name


def check_cameras(cameras: Sequence[str]) -> tuple[str, ...]:
    """`cameras` as a tuple of distinct simulator camera names, else `DrivingLogError`."""
    cameras = tuple(cameras)
    if (
        not cameras
        or any(c not in udacity.CAMERAS for c in cameras)
        or len(set(cameras)) < len(cameras)
    ):
        raise DrivingLogError(
            f"cameras: expected distinct names from {list(udacity.CAMERAS)}, got {list(cameras)}"
        )
    return cameras


def _log_path(folder: str | os.PathLike) -> tuple[Path, Path]:
    """(recording folder, its driving_log.csv); accepts the folder or the csv itself."""
    path = Path(folder).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":
        return path.parent, path
    if not path.exists():
        raise DrivingLogError(f"recording folder {path} does not exist")
    expected = f"{udacity.LOG_NAME} and {udacity.IMAGE_DIR}/"
    if not path.is_dir():
        raise DrivingLogError(
            f"recording {path} is not a folder (expected a folder with {expected})"
        )
    csv_path = path / udacity.LOG_NAME
    if not csv_path.is_file():
        raise DrivingLogError(
            f"recording folder {path} has no {udacity.LOG_NAME} (expected {expected} as written "
            "by the simulator's training mode)"
        )
    return path, csv_path


def _comma_decimal_message(csv_path: Path, line: int, fields: list[str]) -> str:
    columns = udacity.LOG_COLUMNS
    return (
        f"{csv_path} row {line}: {len(fields)} fields where {len(columns)} are expected "
        f"({','.join(columns)}), and the numbers look like they use a comma as the decimal "
        f"separator ({','.join(fields[3:])!r}, e.g. '0,25' for 0.25). The recording was written "
        "on a comma-decimal locale and cannot be parsed unambiguously. Re-record with a "
        "'.'-decimal system locale (e.g. English (United States) region format), or rewrite the "
        "numbers with '.' decimals."
    )


def _records(csv_path: Path, data: bytes | None = None) -> tuple[list[int], list[list[str]]]:
    """Fields per line (0 for blank lines) and the split lines, one record per line."""
    try:
        text = (csv_path.read_bytes() if data is None else data).decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DrivingLogError(
            f"{csv_path} is not UTF-8 text ({error}); is it a driving log?"
        ) from error
    reader = csv.reader(text.splitlines(), skipinitialspace=True, quoting=csv.QUOTE_NONE)
    records = []
    try:
        for fields in reader:
            records.append(fields)
    except csv.Error as error:  # e.g. a field over csv.field_size_limit() (131,072 bytes)
        raise DrivingLogError(
            f"{csv_path} row {reader.line_num}: {error}; is it a driving log?"
        ) from None
    counts = [0 if not "".join(fields).strip() else len(fields) for fields in records]
    return counts, records


def _has_header(first_fields: list[str]) -> bool:
    return bool(first_fields) and first_fields[0].strip().lower() == udacity.LOG_COLUMNS[0]


def _range_text(low: float, high: float) -> str:
    return f"[{low:g}, {high:g}]" if math.isfinite(high) else f"[{low:g}, inf)"


class _Log(NamedTuple):
    """A parsed log before the bad-row policy: the table and each bad row's reason."""

    csv_path: Path
    table: pd.DataFrame
    problems: dict[int, str]  # table index -> why the row is bad


def _parse(folder: str | os.PathLike, cameras: Sequence[str]) -> _Log:
    """`_parse_csv`, each driving_log.csv parsed once per process: while neither the log's
    bytes nor the names in its IMG/ folder changed, a later call (train.py reads the frame
    size, then the datamodule the rows) gets a copy of the first one's result."""
    folder_path, csv_path = _log_path(folder)
    try:
        data = csv_path.read_bytes()
        names = "\0".join(sorted(os.listdir(folder_path / udacity.IMAGE_DIR)))
    except OSError:
        return _parse_csv(folder, cameras)  # _parse_csv names what is missing
    key = (str(csv_path.resolve()), tuple(cameras), hashlib.sha256(data).digest(),
           hashlib.sha256(names.encode("utf-8", "surrogateescape")).digest())
    parsed = _PARSED.get(key)
    if parsed is None:
        parsed = _PARSED[key] = _parse_csv(folder, cameras, data)
        while len(_PARSED) > MAX_PARSED_LOGS:
            _PARSED.pop(next(iter(_PARSED)))
    return _Log(parsed.csv_path, parsed.table.copy(), dict(parsed.problems))


MAX_PARSED_LOGS = 64  # parsed logs kept for `_parse` (a table is ~100 bytes a row)
_PARSED: dict[tuple, _Log] = {}


def _parse_csv(folder: str | os.PathLike, cameras: Sequence[str], data: bytes | None = None) -> _Log:
    """Read (or take: `data`) and check one log's fields and image names (no image is opened)."""
    columns = udacity.LOG_COLUMNS
    folder_path, csv_path = _log_path(folder)
    folder_path = folder_path.resolve()
    image_dir = folder_path / udacity.IMAGE_DIR
    if not image_dir.is_dir():
        raise DrivingLogError(
            f"recording folder {folder_path} has no {udacity.IMAGE_DIR}/ folder next to"
            f" {csv_path.name}"
        )

    counts, records = _records(csv_path, data)
    lines = [index + 1 for index, count in enumerate(counts) if count > 0]
    if not lines:
        raise DrivingLogError(f"{csv_path} has no rows")

    # Header: Udacity's sample data names the columns; the raw Unity log does not.
    column_order = list(columns)
    first = records[lines[0] - 1]
    if _has_header(first):
        names = [name.strip().lower() for name in first]
        if sorted(names) != sorted(columns):
            raise DrivingLogError(
                f"{csv_path} row {lines[0]}: header {first} does not name the columns"
                f" {list(columns)}"
            )
        column_order = names
        lines = lines[1:]
        if not lines:
            raise DrivingLogError(f"{csv_path} has no rows after its header")

    # Comma-decimal locale: extra fields that are all integers ('0,25' split in two).
    for line in lines:
        fields = records[line - 1]
        if len(fields) > len(columns) and all(
            _INTEGER.match(value.strip()) for value in fields[3:]
        ):
            raise DrivingLogError(_comma_decimal_message(csv_path, line, fields))
    if all(counts[line - 1] == 1 and ";" in records[line - 1][0] for line in lines[:10]):
        raise DrivingLogError(
            f"{csv_path}: rows are separated by ';' (a spreadsheet export on a comma-decimal"
            f" locale?); expected the simulator's ',' separated {','.join(columns)} with '.'"
            " decimals"
        )

    raw = pd.DataFrame(
        [(records[line - 1] + [""] * len(columns))[: len(columns)] for line in lines],
        columns=column_order,
        dtype=str,
    )[list(columns)]
    table = pd.DataFrame({"row": np.asarray(lines, dtype=np.int64)})
    problems: dict[int, str] = {}

    def flag(mask: np.ndarray, reason) -> None:
        for index in np.flatnonzero(mask):
            problems.setdefault(int(index), reason(int(index)))

    field_count = np.asarray([counts[line - 1] for line in lines])
    flag(
        field_count != len(columns),
        lambda i: f"{field_count[i]} fields, expected {len(columns)} ({','.join(columns)})",
    )
    for name in udacity.NUMERIC_COLUMNS:
        text = raw[name]
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        table[name] = values
        flag(
            ~np.isfinite(values),
            lambda i, name=name, text=text: f"{name} {text.iloc[i]!r} is not a finite number",
        )
        low, high = udacity.LABEL_RANGES[name]
        flag(
            (values < low) | (values > high),
            lambda i, name=name, text=text, low=low, high=high: (
                f"{name} {text.iloc[i]} is outside its range {_range_text(low, high)}"
            ),
        )

    available = set(os.listdir(image_dir))
    for camera in udacity.CAMERAS:
        names = [file_name_from_log_path(value) for value in raw[camera].tolist()]
        prefix = f"{image_dir}{os.sep}"
        table[camera] = [prefix + name if name else "" for name in names]
        if camera in cameras:
            flag(
                np.asarray([not name or name not in available for name in names]),
                lambda i, camera=camera, names=names: (
                    f"{camera} image missing: {raw[camera].iloc[i]!r} (looked for"
                    f" {names[i] or '<empty>'} in {image_dir})"
                ),
            )
    table["recording"] = str(folder_path)
    return _Log(csv_path, table[[*columns, "recording", "row"]], problems)


def _image_header(path: str) -> tuple[str | None, tuple[int, int] | None]:
    """(problem, (width, height)) of an image file: a whole JPEG with a readable header."""
    try:
        data = read_image_file(path)
    except ImageError as error:
        return str(error), None
    problem = jpeg_problem(data)
    if problem is None:
        try:
            return None, jpeg_size(data)
        except ImageError as error:
            problem = str(error)
    return f"image {Path(path).name}: {problem}", None


def _check_images(
    parsed: _Log, cameras: Sequence[str], frame_size: FrameSize | None
) -> FrameSize | None:
    """Flag rows whose images are incomplete; raise if a frame's size is not `frame_size`
    (or, without one, the first frame's). Returns the size found."""
    table, problems = parsed.table, parsed.problems
    for index in range(len(table)):
        if index in problems:
            continue
        for camera in cameras:
            path = table[camera].iat[index]
            problem, size = _image_header(path)
            if problem:
                problems[index] = f"{camera} {problem}"
                break
            row = table["row"].iat[index]
            if frame_size is None:
                frame_size = FrameSize(*size, f"the size of {Path(path).name} in row {row}")
            elif size != frame_size[:2]:
                raise DrivingLogError(
                    f"{parsed.csv_path} row {row}: {camera} image {Path(path).name}"
                    f" is {size[0]}x{size[1]}, but {frame_size.source} is {frame_size}; all frames"
                    " must have one size (the camera frame size the model is trained on)"
                )
    return frame_size


def summarize(problems: Sequence[tuple[str, str]]) -> str:
    """`where: why; ...` for the first `MAX_ROWS_IN_MESSAGE` problems, then how many more."""
    listed = "; ".join(f"{where}: {why}" for where, why in problems[:MAX_ROWS_IN_MESSAGE])
    rest = len(problems) - MAX_ROWS_IN_MESSAGE
    return listed + (f"; ... and {rest} more" if rest > 0 else "")


def _apply_policy(parsed: _Log, on_bad_row: str) -> pd.DataFrame:
    """The good rows, after raising (`error`) or logging (`skip`) the bad ones."""
    table, problems = parsed.table, parsed.problems
    table.attrs[SKIPPED_ROWS] = 0
    if not problems:
        return table
    bad = sorted(problems)
    summary = summarize([(f"row {table['row'].iat[i]}", problems[i]) for i in bad])
    message = f"{parsed.csv_path}: {len(bad)} bad row(s) of {len(table)}: {summary}"
    if on_bad_row == "error":
        raise DrivingLogError(
            f"{message}. Fix the recording, or skip these rows with on_bad_row='skip'"
            " (data.on_bad_row=skip)."
        )
    log.warning("skipping %s", message)
    table = table.drop(index=bad).reset_index(drop=True)
    if table.empty:
        raise DrivingLogError(
            f"{parsed.csv_path}: every row is bad ({len(bad)}); nothing left to train on"
        )
    table.attrs[SKIPPED_ROWS] = len(bad)
    return table


def _check_options(on_bad_row: str, cameras: Sequence[str]) -> tuple[str, ...]:
    if on_bad_row not in ON_BAD_ROW:
        raise DrivingLogError(f"on_bad_row: expected one of {list(ON_BAD_ROW)}, got {on_bad_row!r}")
    return check_cameras(cameras)


def _frame_size(frame_size: FrameSize | tuple[int, int] | None) -> FrameSize | None:
    return None if frame_size is None else FrameSize(*frame_size)


def read_driving_log(
    folder: str | os.PathLike,
    on_bad_row: str = "error",
    cameras: Sequence[str] = udacity.CAMERAS,
    verify_images: bool = True,
    frame_size: FrameSize | tuple[int, int] | None = None,
) -> pd.DataFrame:
    """Load one recording folder's driving log with images resolved inside `<folder>/IMG/`.

    Returns columns center, left, right (absolute path strings, "" when the log names none),
    steering, throttle, brake, speed (float), recording (folder) and row (1-based csv line);
    `table.attrs["skipped_rows"]` counts the rows `on_bad_row="skip"` dropped. Only the
    `cameras` listed must have an image for a row to be good. With `verify_images`, each of
    those images must be a complete JPEG of `frame_size` (default: the first frame's size).
    """
    cameras = _check_options(on_bad_row, cameras)
    parsed = _parse(folder, cameras)
    if verify_images:
        _check_images(parsed, cameras, _frame_size(frame_size))
    return _apply_policy(parsed, on_bad_row)


def _folders(folders: Paths) -> list[str | os.PathLike]:
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    folders = list(folders)
    if not folders:
        raise DrivingLogError("no recording folders given (data.paths is empty)")
    return folders


def read_driving_logs(
    folders: Paths,
    on_bad_row: str = "error",
    cameras: Sequence[str] = udacity.CAMERAS,
    verify_images: bool = True,
    frame_size: FrameSize | tuple[int, int] | None = None,
) -> pd.DataFrame:
    """Load and merge several recordings (one table, `recording` tells them apart); with
    `verify_images`, every frame of every recording must have one size."""
    cameras = _check_options(on_bad_row, cameras)
    size = _frame_size(frame_size)
    tables = []
    for folder in _folders(folders):
        parsed = _parse(folder, cameras)
        if verify_images:
            size = _check_images(parsed, cameras, size)
        tables.append(_apply_policy(parsed, on_bad_row))
    seen = [table["recording"].iat[0] for table in tables]
    duplicates = sorted({name for name in seen if seen.count(name) > 1})
    if duplicates:
        raise DrivingLogError(f"recording folder(s) listed more than once: {duplicates}")
    merged = pd.concat(tables, ignore_index=True)
    merged.attrs[SKIPPED_ROWS] = sum(table.attrs[SKIPPED_ROWS] for table in tables)
    return merged


def first_frame_size(paths: Paths, cameras: Sequence[str] = udacity.CAMERAS,
                     expected: FrameSize | None = None) -> FrameSize:
    """Size of the first good frame of the recordings (its header only), and which it is; with
    `expected`, a first frame of another size is a `DrivingLogError` naming it (so a recording
    of another camera size is named before anything else is read)."""
    cameras = check_cameras(cameras)
    folders = _folders(paths)
    for folder in folders:
        parsed = _parse(folder, cameras)
        for index in range(len(parsed.table)):
            if index in parsed.problems:
                continue
            for camera in cameras:
                path = parsed.table[camera].iat[index]
                problem, size = _image_header(path)
                if problem is None:
                    row = parsed.table["row"].iat[index]
                    if expected is not None and size != expected[:2]:
                        raise DrivingLogError(
                            f"{parsed.csv_path} row {row}: {camera} image {Path(path).name} is"
                            f" {size[0]}x{size[1]}, but {expected.source} is {expected}; all"
                            " frames must have one size (the camera frame size the model is"
                            " trained on)"
                        )
                    where = f"{Path(path).name} ({parsed.csv_path} row {row})"
                    return FrameSize(*size, f"the size of {where}")
    raise DrivingLogError(
        f"no readable {'/'.join(cameras)} frame in {[str(folder) for folder in folders]}"
    )


def fit_frame_size(preprocess: Preprocess, size: FrameSize) -> Preprocess:
    """`preprocess` for frames of `size`; a crop that leaves nothing of such a frame is an
    error naming the frame (file and row) the size was taken from."""
    try:
        return preprocess.with_frame_size(size.width, size.height)
    except ConfigError as error:
        raise DrivingLogError(f"{size.source} is {size}: {error}") from None


def detect_frame_size(
    paths: Sequence[str | os.PathLike],
    cameras: Sequence[str] = udacity.CAMERAS,
    preprocess: Preprocess | Mapping[str, Any] | None = None,
) -> tuple[int, int]:
    """(width, height) of the recordings' camera frames, from the first good frame's header.

    Training stores it in the model's `Preprocess`, so the drive server expects frames of
    that size; a frame of another size is reported (file, row, both sizes) when the
    datamodule loads the logs. With `preprocess`, a crop that leaves nothing of such a
    frame is reported here, naming the frame.
    """
    size = first_frame_size(paths, cameras)
    if preprocess is not None:
        if not isinstance(preprocess, Preprocess):
            preprocess = Preprocess.from_dict(preprocess)
        fit_frame_size(preprocess, size)
    return size.width, size.height


def read_driving_log_as_is(
    folder: str | os.PathLike, cameras: Sequence[str] = udacity.CAMERAS
) -> tuple[pd.DataFrame, dict[int, str]]:
    """Every row of one log, bad ones kept, and why each bad row is bad (by table index); no
    image is opened. For showing a recording as it was recorded (`scripts/review.py`)."""
    parsed = _parse(folder, check_cameras(cameras))
    return parsed.table, parsed.problems
