"""The recordings a run learned from, as MLflow dataset inputs (the UI's "Datasets" section).

One input per recording folder (context ``training``): its driving log as a dataset (the
Udacity columns as schema, the rows used as profile) whose source is the folder and whose
digest is a content digest (SHA-256 of the driving log and of every camera frame the rows
name, so a re-recorded or edited folder gets another digest), tagged with row counts
(used, train, val, and the rows its exclusions sidecar left out: `bc.data.exclusions`) and the
steering statistics of the rows used. The digest covers the sidecar too: other exclusions are
other data.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bc import udacity

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

CONTEXT = "training"
DIGEST_CHARS = 32  # MLflow stores at most 36
CHUNK_BYTES = 1 << 20
STRAIGHT = 0.01  # |steering| below this counts as driving straight


def content_digest(folder: Path, image_paths: list[str]) -> str:
    """SHA-256 over the folder's driving log, its exclusions sidecar (if any) and the bytes of
    ``image_paths`` (in order)."""
    digest = hashlib.sha256()
    from bc.data.exclusions import sidecar_path

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

    from bc.data.exclusions import EXCLUDED_BY_RECORDING

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
    return len(entries)
