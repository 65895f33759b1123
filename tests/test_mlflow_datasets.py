"""The recordings a run learned from as MLflow dataset inputs: one per folder, a digest of its
content (not of its file dates), the rows used per split and the steering statistics."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from bc import tracking

from bc.core import udacity
from bc.data.log import read_driving_logs
from bc.data.synthetic import write_recording
from bc.tracking.datasets import TABLE_ARTIFACT, log_recordings


def logged_inputs(uri: str, table, tmp: Path) -> dict[str, tuple]:
    """Log `table`'s recordings to a new run; {dataset name: (dataset, tags)} read back."""
    client = MlflowClient(uri)
    run_id = client.create_run(tracking.get_or_create_experiment("data", uri)).info.run_id
    assert log_recordings(client, run_id, table) == table["recording"].nunique()
    shown = pd.read_json(io.StringIO(Path(client.download_artifacts(run_id, TABLE_ARTIFACT, str(tmp))).read_text()),
                         orient="split")  # the table the UI shows beside the run
    assert sorted(shown["recording"]) == sorted(Path(folder).name for folder in table["recording"].unique())
    assert {"digest", "rows", "train_rows", "val_rows", "steering_mean", "straight_fraction"} <= set(shown)
    return {item.dataset.name: (item.dataset, {tag.key: tag.value for tag in item.tags})
            for item in client.get_run(run_id).inputs.dataset_inputs}


def test_each_recording_is_a_dataset_input_with_a_content_digest(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folders = [write_recording(tmp_path / "lake", rows=12, seed=1), write_recording(tmp_path / "hill", rows=8, seed=2)]

    def table():
        rows = read_driving_logs(folders, "error", udacity.CAMERAS, False, None)
        return rows.assign(split=np.where(rows["row"] % 4 == 0, "val", "train"))

    first = logged_inputs(uri, table(), tmp_path)
    assert sorted(first) == ["hill", "lake"]
    lake, tags = first["lake"]
    assert lake.source_type == "local" and str(tmp_path / "lake") in lake.source
    assert (int(tags["rows"]), int(tags["train_rows"]), int(tags["val_rows"])) == (12, 9, 3)
    steering = table().query("recording == @folders[0].as_posix()")["steering"]
    assert float(tags["steering_mean"]) == float(f"{steering.mean():.4g}")
    assert float(tags["straight_fraction"]) == float(f"{(steering.abs() < 0.01).mean():.4g}")
    assert tags["mlflow.data.context"] == "training" and len(lake.digest) == 32

    frame = next((tmp_path / "lake" / udacity.IMAGE_DIR).glob("*.jpg"))
    os.utime(frame, (1, 1))  # a date changes: the same content
    assert logged_inputs(uri, table(), tmp_path)["lake"][0].digest == lake.digest
    data = bytearray(frame.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one frame changes
    frame.write_bytes(bytes(data))
    again = logged_inputs(uri, table(), tmp_path)
    assert again["lake"][0].digest != lake.digest and again["hill"][0].digest == first["hill"][0].digest
