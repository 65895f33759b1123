"""A drive as the review app shows it: an `evaluate.py` track folder (`trajectory.csv`:
position, |CTE|, speed, the model's steering and the interventions per physics step, with
`center.mp4`, the frames the drive server was sent) or a `drive.py image_folder=` folder
(`drive_log.csv` and the JPEGs it names: what the simulator sent and the server answered;
Unity reports no position, so such a drive has no trajectory or CTE).

`center.mp4` holds one frame per telemetry message. In a lockstep drive (`realtime=false`)
that is one per step; in a realtime one a message can cover several steps, and a step is
shown with the frame at the same fraction of the video (the frame the model saw then, give
or take the steps one reply took).
"""

from __future__ import annotations

import atexit
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bc.errors import BcError
from bc.core.images import encode_jpeg
from bc.sim.track import load_track, shipped_tracks

TRAJECTORY = "trajectory.csv"
METRICS = "metrics.json"
VIDEO = "center.mp4"
DRIVE_LOG = "drive_log.csv"  # bc.drive.frames.CSV_NAME (not imported: it pulls the server in)
TRAJECTORY_COLUMNS = ("t", "x", "y", "speed_mph", "steering", "cte", "intervention")
DRIVE_LOG_COLUMNS = ("time", "image", "steering", "throttle", "speed")
VIDEO_JPEG_QUALITY = 90
VIDEO_WAIT_S = 120.0
ROAD_POINT_SPACING_M = 1.0


class ReviewError(BcError, ValueError):
    """A folder the review app cannot show; the message says what it expected."""


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise ReviewError(f"{path}: cannot read it as CSV ({error})") from None
    missing = [name for name in columns if name not in table.columns]
    if missing or table.empty:
        raise ReviewError(f"{path}: expected the columns {list(columns)} and at least one row, "
                          f"got {list(table.columns)} and {len(table)} rows")
    return table


def _numbers(values: pd.Series) -> list:
    array = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
    return [round(v, 4) if np.isfinite(v) else None for v in array.tolist()]


class Drive:
    """One driven track (evaluate) or one saved inference run (drive.py)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()
        self.name = self.folder.name
        self._frames: list[bytes] | None = None
        self._frames_error: str | None = None
        self._decoded = threading.Event()
        self.metrics: dict[str, Any] = {}
        if (self.folder / TRAJECTORY).is_file():
            self.source = "evaluate"
            self.table = _read_csv(self.folder / TRAJECTORY, TRAJECTORY_COLUMNS)
            metrics = self.folder / METRICS
            if metrics.is_file():
                try:
                    self.metrics = json.loads(metrics.read_text(encoding="utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as error:
                    raise ReviewError(f"{metrics}: not JSON ({error})") from None
            self.video = self.folder / VIDEO
            self._thread = threading.Thread(target=self._decode_video, name="review-video",
                                            daemon=True)
            self._thread.start()
            atexit.register(self.close)
        else:
            self.source = "drive_log"
            self.table = _read_csv(self.folder / DRIVE_LOG, DRIVE_LOG_COLUMNS)
            self.images = [self._inside(name) for name in self.table["image"].astype(str)]

    def __len__(self) -> int:
        return len(self.table)

    def _inside(self, name: str) -> Path | None:
        """A file the log names, only if it lies inside the drive's folder."""
        path = (self.folder / name).resolve()
        return path if path.is_relative_to(self.folder) and path.is_file() else None

    def close(self) -> None:
        """Wait for the video's frames (a decoder killed at exit leaves ffmpeg behind)."""
        if self.source == "evaluate":
            self._thread.join(timeout=VIDEO_WAIT_S)

    def _decode_video(self) -> None:
        try:
            self._decode()
        finally:
            self._decoded.set()

    def _decode(self) -> None:
        if not self.video.is_file():
            self._frames_error = f"{self.video} does not exist (evaluate.py video=false?)"
            return
        try:
            import imageio.v2 as imageio

            reader = imageio.get_reader(str(self.video))
            try:
                self._frames = [encode_jpeg(np.asarray(rgb), VIDEO_JPEG_QUALITY) for rgb in reader]
            finally:
                reader.close()
        except Exception as error:  # noqa: BLE001 - shown on the page, the server keeps serving
            self._frames_error = f"{self.video}: cannot decode it ({error})"

    def frame_jpeg(self, step: int) -> bytes | None:
        """The camera frame the model saw at `step` (JPEG bytes), None if there is none."""
        if not 0 <= step < len(self):
            return None
        if self.source == "drive_log":
            path = self.images[step]
            return None if path is None else path.read_bytes()
        self._decoded.wait(VIDEO_WAIT_S)  # the first request comes while the video decodes
        if self._frames is None:
            return None
        count = len(self._frames)
        if count == 0:
            return None
        index = step if count == len(self) else round(step * (count - 1) / max(1, len(self) - 1))
        return self._frames[min(index, count - 1)]

    def road(self) -> dict[str, list] | None:
        """The road's edges (every ~1 m) when metrics.json names a shipped track, else None
        (a track file is only ever read from the shipped ones, not from a path in the data)."""

        name = str(self.metrics.get("track", ""))
        if name not in shipped_tracks():
            return None
        track = load_track(name)
        every = max(1, round(ROAD_POINT_SPACING_M / track.spacing))
        left, right = (np.round(edge[::every], 2).tolist() for edge in track.edges())
        return {"left": left, "right": right}

    def payload(self) -> dict[str, Any]:
        table = self.table
        if self.source == "evaluate":
            cte = pd.to_numeric(table["cte"], errors="coerce").abs()
            flags = pd.to_numeric(table["intervention"], errors="coerce").fillna(0).to_numpy()
            return {"name": self.name, "source": self.source, "folder": str(self.folder),
                    "t": _numbers(table["t"]), "speed": _numbers(table["speed_mph"]),
                    "steering": _numbers(table["steering"]), "abs_cte": _numbers(cte),
                    "x": _numbers(table["x"]), "y": _numbers(table["y"]),
                    "interventions": np.flatnonzero(flags > 0).tolist(),
                    "road": self.road(),
                    "metrics": {k: v for k, v in self.metrics.items()
                                if isinstance(v, (int, float, str)) or v is None},
                    "frames_error": self._frames_error}
        started = pd.to_datetime(table["time"], errors="coerce", utc=True)
        seconds = (started - started.iloc[0]).dt.total_seconds()
        return {"name": self.name, "source": self.source, "folder": str(self.folder),
                "t": _numbers(seconds), "speed": _numbers(table["speed"]),
                "steering": _numbers(table["steering"]), "abs_cte": None, "x": None, "y": None,
                "interventions": [], "road": None, "metrics": {}, "frames_error": None}


def find_drives(path: str | os.PathLike) -> list[Drive]:
    """The drives of an evaluate.py output (its track folders), of one track folder, or of a
    drive.py image folder."""
    folder = Path(path).expanduser()
    if (folder / TRAJECTORY).is_file() or (folder / DRIVE_LOG).is_file():
        return [Drive(folder)]
    tracks = sorted(sub for sub in folder.iterdir() if (sub / TRAJECTORY).is_file()) \
        if folder.is_dir() else []
    if not tracks:
        raise ReviewError(f"{folder}: expected a recording (driving_log.csv + IMG/), an "
                          f"evaluate.py output (<track>/{TRAJECTORY}) or a drive.py image "
                          f"folder ({DRIVE_LOG})")
    return [Drive(track) for track in tracks]
