"""The recordings a run learned from, as MLflow dataset inputs (the UI's "Datasets" section).

One input per recording folder (context ``training``): its driving log as a dataset (the
Udacity columns as schema, the rows used as profile) whose source is the folder and whose
digest is a content digest (the first 32 hex characters of a SHA-256 over the driving log, its
exclusions sidecar if any (`bc.data.exclusions`: other exclusions are other data) and every
camera frame the rows name, so a re-recorded or edited folder gets another digest; MLflow keeps
at most 36 characters), tagged with row counts (used, train, val, and the rows the exclusions
sidecar left out) and the steering statistics of the rows used. The same numbers, one row per
recording, are the run's table artifact ``datasets/recordings.json`` (the UI shows it as a
table; the input tags only reach the REST API).

An evaluation track is an input too (context ``evaluation``, `log_track`): its centreline
points as the dataset, the track file (or ``random:<seed>``) as source, a digest of its
geometry; the closed-loop metrics name it as their dataset.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bc.core import udacity
from bc.data.exclusions import EXCLUDED_BY_RECORDING
from bc.data.exclusions import sidecar_path

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

CONTEXT = "training"
EVAL_CONTEXT = "evaluation"
TABLE_ARTIFACT = "datasets/recordings.json"
TRACK_SUFFIX = " track"  # "lake track": not the recording folder "lake" beside it in the UI
DIGEST_CHARS = 32  # MLflow stores at most 36
CHUNK_BYTES = 1 << 20
STRAIGHT = 0.01  # |steering| below this counts as driving straight


def content_digest(folder: Path, image_paths: list[str]) -> str:
    """The first 32 hex characters of a SHA-256 over the folder's driving log, its exclusions
    sidecar (if any) and the bytes
    of ``image_paths`` (in order)."""
    digest = hashlib.sha256()

    sidecar = sidecar_path(folder)
    extra = [str(sidecar)] if sidecar.is_file() else []
    for path in [str(folder / udacity.LOG_NAME), *extra, *image_paths]:
        digest.update(Path(path).name.encode() + b"\0")
        with open(path, "rb") as file:
            while chunk := file.read(CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()[:DIGEST_CHARS]


def steering_stats(steering: np.ndarray) -> dict[str, float]:
    """What the steering labels of a recording look like (straight-driving share included:
    the reason balancing exists)."""
    return {"steering_mean": float(steering.mean()), "steering_std": float(steering.std()),
            "steering_min": float(steering.min()), "steering_max": float(steering.max()),
            "steering_abs_mean": float(np.abs(steering).mean()),
            "straight_fraction": float((np.abs(steering) < STRAIGHT).mean())}


def recording_inputs(table: pd.DataFrame) -> list[tuple[Any, dict[str, str]]]:
    """(MLflow dataset, input tags) per recording of a datamodule's table (the rows used, with
    their ``recording`` folder and ``split``)."""
    import mlflow.data


    excluded = table.attrs.get(EXCLUDED_BY_RECORDING, {})
    inputs = []
    for recording, rows in table.groupby("recording", sort=False):
        folder = Path(str(recording))
        images = [path for camera in udacity.CAMERAS if camera in rows
                  for path in rows[camera].dropna().astype(str) if path]
        with warnings.catch_warnings():  # MLflow registers its local source class twice
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            dataset = mlflow.data.from_pandas(rows[list(udacity.LOG_COLUMNS)].reset_index(drop=True),
                                              source=str(folder), name=folder.name, targets="steering",
                                              digest=content_digest(folder, images))
        split = rows["split"] if "split" in rows else None
        counts = {"rows": len(rows),
                  "train_rows": int((split == "train").sum()) if split is not None else len(rows),
                  "val_rows": int((split == "val").sum()) if split is not None else 0,
                  "excluded_rows": int(excluded.get(str(recording), 0))}
        stats = steering_stats(rows["steering"].to_numpy(np.float64))
        tags = {**{key: str(value) for key, value in counts.items()},
                **{key: f"{value:.4g}" for key, value in stats.items()}}
        inputs.append((dataset, tags))
    return inputs


def log_recordings(client: Any, run_id: str, table: pd.DataFrame) -> int:
    """Log every recording of ``table`` as a dataset input of run ``run_id``; returns how many."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    entries = [DatasetInput(dataset._to_mlflow_entity(),
                            [InputTag(MLFLOW_DATASET_CONTEXT, CONTEXT),
                             *(InputTag(key, value) for key, value in tags.items())])
               for dataset, tags in recording_inputs(table)]
    from mlflow.exceptions import MlflowException

    for attempt in range(3):
        try:
            client.log_inputs(run_id, datasets=entries)
            break
        except MlflowException as error:
            # Runs started at the same moment on one recording (a parallel sweep) both find the
            # dataset missing and insert it; the loser's transaction is rolled back whole, and
            # the next try finds the winner's row and only links it.
            if "UNIQUE constraint failed" not in str(error) or attempt == 2:
                raise
    with warnings.catch_warnings():  # MLflow's dtype check, deprecated in pandas 3
        warnings.filterwarnings("ignore", message="For backward compatibility, 'str' dtypes")
        client.log_table(run_id, recordings_table(entries), TABLE_ARTIFACT)
    return len(entries)


def recordings_table(entries: list[Any]) -> pd.DataFrame:
    """One row per logged recording input: name, digest, source and its tags."""
    import pandas as pd

    rows = []
    for entry in entries:
        tags = {tag.key: tag.value for tag in entry.tags if not tag.key.startswith("mlflow.")}
        rows.append({"recording": entry.dataset.name, "digest": entry.dataset.digest,
                     **{key: _number(value) for key, value in tags.items()},
                     "source": str(json.loads(entry.dataset.source).get("uri", entry.dataset.source))})
    return pd.DataFrame(rows)


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        return float(text)


def track_dataset(track: Any, label: str) -> Any:
    """The track ``label`` as an MLflow dataset (``<label> track``): its centreline points (x, y in m) and width,
    from the track's file, with a digest of that geometry."""
    import mlflow.data
    import pandas as pd

    points = pd.DataFrame({"x_m": track.xy[:, 0], "y_m": track.xy[:, 1]})
    digest = hashlib.sha256(np.ascontiguousarray(track.xy, np.float64).tobytes()
                            + repr(float(track.width)).encode()).hexdigest()[:DIGEST_CHARS]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        return mlflow.data.from_pandas(points, source=str(getattr(track, "source", label)),
                                       name=f"{label}{TRACK_SUFFIX}", digest=digest)


def log_track(client: Any, run_id: str, track: Any, label: str) -> dict[str, str]:
    """Log the track as an ``evaluation`` input of the run; returns the metric fields that
    name it (``dataset_name``, ``dataset_digest``)."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    dataset = track_dataset(track, label)
    tags = [InputTag(MLFLOW_DATASET_CONTEXT, EVAL_CONTEXT),
            InputTag("road_width_m", f"{float(track.width):g}"),
            InputTag("length_m", f"{float(track.length):.1f}")]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags)])
    return {"dataset_name": dataset.name, "dataset_digest": dataset.digest}
