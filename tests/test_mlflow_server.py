"""A training run as a team sees it in the MLflow UI: a real `mlflow server` process (sqlite
backend, proxied artifacts), training with `register=`, `bc.tracking.registry.promote` (what
scripts/promote.py runs) setting `champion`, and everything read back through the server's
REST API (the API the UI uses): the run's logged model with the closed-loop metrics of a
drive (as evaluate.py logs them), the registered version with its alias and the reason for
it, the dataset inputs and their table, and the plot artifacts. Then `drive.py
model_uri=models:/<name>@champion` and `mlflow.pyfunc.load_model` both serve that version
over HTTP."""

from __future__ import annotations

import csv
import json
import math
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scale import ROWS, mlflow_server, tiny_training
from unity_client import UnityClient, make_jpeg, telemetry

from bc.tracking import registry

from bc.core import udacity
from bc.data.synthetic import write_recording
from bc.drive.launch import drive_server
from bc.core.images import decode_jpeg
from bc.insight import callback as insight
from bc.tracking.datasets import TABLE_ARTIFACT, content_digest
from bc.evaluation.autonomous import AutonomousDrive
from bc.evaluation.metrics import DIAGNOSTICS
from bc.sim.track import load_track
from bc.training.train import train
from conftest import compose_config

NAME, METRIC = "lake-pilot", "eval/lake/autonomy"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def rest(server: str, endpoint: str, **query: str) -> dict[str, Any]:
    """GET <server>/api/2.0/mlflow/<endpoint>?<query> as JSON."""
    url = f"{server}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def run_metrics(run: dict[str, Any]) -> dict[str, float]:
    return {metric["key"]: metric["value"] for metric in run["data"]["metrics"]}


@pytest.mark.slow  # ~30 s; a real mlflow server, trained against and served from, stays in the default suite (test_scale_servers.py)
def test_a_trained_run_through_the_mlflow_server_rest_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    recording = write_recording(tmp_path / "lake-rec", rows=ROWS, seed=3)
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path) as server:
        run_id = train(compose_config("train", [f"tracking_uri={server}", "experiment_name=team",
                                                f"register={NAME}", f"output_dir={tmp_path / 'out'}",
                                                *tiny_training(recording, tmp_path / "cache")]))
        # A closed-loop drive of the run's model, logged as evaluate.py logs it.
        with drive_server([f"run_id={run_id}", f"tracking_uri={server}"], tmp_path) as served:
            driven = AutonomousDrive(port=served["port"], max_steps=40, out=str(tmp_path / "eval"),
                                     run_id=run_id, tracking_uri=server).run(load_track("lake"))
        promotion = registry.promote(NAME, "champion", "team", METRIC, "max", server)  # scripts/promote.py
        assert promotion.value == driven["autonomy"]

        run = rest(server, "runs/get", run_id=run_id)["run"]
        assert run["info"]["status"] == "FINISHED"
        # The logged model: an output of the run, READY, a pyfunc from code with bc's files.
        (output,) = run["outputs"]["model_outputs"]
        model = rest(server, f"logged-models/{output['model_id']}")["model"]
        assert model["info"]["source_run_id"] == run_id and model["info"]["status"] == "LOGGED_MODEL_READY"
        assert model["info"]["name"] == "SmallNet"
        # The model's page shows its driving score, on the track it drove (the run's evaluation input).
        linked = {metric["key"]: metric for metric in model["data"].get("metrics", [])}
        assert {"val/loss_best", METRIC, "eval/lake/mean_abs_cte"} <= set(linked)
        assert linked[METRIC]["value"] == driven["autonomy"] and linked[METRIC]["dataset_name"] == "lake track"
        assert not [key for key in linked if key.startswith("eval/") and key.rsplit("/", 1)[-1] in DIAGNOSTICS]
        assert run_metrics(run)["system/eval/lake/steps"] == 40  # diagnostics: their own charts
        mlmodel = get(f"{server}/ajax-api/2.0/mlflow/logged-models/{output['model_id']}/artifacts/files?"
                      + urllib.parse.urlencode({"artifact_file_path": "MLmodel"})).decode()
        assert str(tmp_path) not in mlmodel and "/tmp" not in mlmodel.replace(str(tmp_path), "")
        assert "model_code_path: pyfunc.py" in mlmodel
        listed = {item["path"] for folder in ("", "artifacts/model") for item in rest(
            server, f"logged-models/{output['model_id']}/artifacts/directories",
            **({"artifact_directory_path": folder} if folder else {}))["files"]}
        assert {"MLmodel", "pyfunc.py", "artifacts/model/model.onnx", "artifacts/model/model.ts",
                "artifacts/model/weights.pt", "artifacts/model/model.yaml"} <= listed
        # The registered version and its alias.
        version = rest(server, "registered-models/alias", name=NAME, alias="champion")["model_version"]
        assert version["version"] == "1" and version["run_id"] == run_id
        # ... and why the alias points there: tags and description on the version.
        reason = {tag["key"]: tag["value"] for tag in version["tags"]}
        assert reason["promoted_as"] == "champion" and reason["promotion.metric"] == f"{METRIC} (max)"
        assert float(reason["promotion.value"]) == pytest.approx(driven["autonomy"], abs=0.05)
        assert reason["promotion.runner_up"] == "none" and reason["promotion.tie_break"] == "no tie"
        assert version["description"] == promotion.reason and f"best {METRIC} (max)" in version["description"]
        assert version["source"] == f"models:/{output['model_id']}"
        # The dataset input: the recording folder, its content digest, rows and steering stats.
        inputs = run["inputs"]["dataset_inputs"]
        contexts = {tag["value"]: item for item in inputs for tag in item["tags"]
                    if tag["key"] == "mlflow.data.context"}
        assert sorted(contexts) == ["evaluation", "training"]
        assert contexts["evaluation"]["dataset"]["name"] == "lake track"
        assert contexts["evaluation"]["dataset"]["digest"] == linked[METRIC]["dataset_digest"]
        dataset_input = contexts["training"]
        dataset, tags = dataset_input["dataset"], {tag["key"]: tag["value"] for tag in dataset_input["tags"]}
        assert dataset["name"] == "lake-rec" and json.loads(dataset["source"])["uri"] == str(recording)
        with open(recording / udacity.LOG_NAME, newline="") as log:
            rows = list(csv.reader(log))
        frames = [row[udacity.LOG_COLUMNS.index(camera)] for camera in udacity.CAMERAS for row in rows]
        assert dataset["digest"] == content_digest(recording, frames)  # the log and every frame it names
        assert json.loads(dataset["profile"])["num_rows"] == ROWS == int(tags["rows"])
        assert int(tags["train_rows"]) + int(tags["val_rows"]) == ROWS and int(tags["val_rows"]) > 0
        assert tags["mlflow.data.context"] == "training"
        assert -1 <= float(tags["steering_min"]) < float(tags["steering_mean"]) < float(tags["steering_max"]) <= 1
        # The same numbers as a table beside the run; paths are tags, not params.
        table = json.loads(get(f"{server}/get-artifact?" + urllib.parse.urlencode(
            {"path": TABLE_ARTIFACT, "run_uuid": run_id})))
        row = dict(zip(table["columns"], table["data"][0]))
        assert row["recording"] == "lake-rec" and row["rows"] == ROWS and row["digest"] == dataset["digest"]
        params = {item["key"] for item in run["data"]["params"]}
        run_tags = {item["key"]: item["value"] for item in run["data"]["tags"]}
        assert "callbacks.model_checkpoint.dirpath" not in params and "output_dir" not in params
        assert run_tags["config.callbacks.insight_plots.folder"] == str(tmp_path / "out" / "plots")
        # The plot artifacts (bc.insight's InsightPlots), real PNGs served by the server.
        plots = {item["path"] for item in rest(server, "artifacts/list", run_id=run_id,
                                                path=insight.ARTIFACT_DIR)["files"]}
        expected = {f"{insight.ARTIFACT_DIR}/{name}" for name in
                    (insight.HISTOGRAM, insight.AUGMENTATION, insight.PREDICTIONS, insight.SALIENCY)}
        assert expected <= plots
        for path in sorted(expected):
            url = f"{server}/get-artifact?" + urllib.parse.urlencode({"path": path, "run_uuid": run_id})
            with urllib.request.urlopen(url, timeout=30) as response:
                assert response.read(8) == PNG_SIGNATURE, path

        # Serving the champion over HTTP: the drive server, and MLflow's own pyfunc loader.
        jpeg = make_jpeg(seed=1)
        with drive_server([f"model_uri=models:/{NAME}@champion", f"tracking_uri={server}"], tmp_path) as served:
            assert served["source"] == f"models:/{NAME}@champion (models:/{NAME}/1)"
            with UnityClient(served["port"]) as client:
                event, data = client.send_telemetry(telemetry(jpeg, speed=5.0))
        assert event == "steer" and math.isfinite(float(data["steering_angle"]))
        with registry.fluent_tracking_uri(server):
            import mlflow.pyfunc

            predicted = mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(decode_jpeg(jpeg)[None])
        assert list(predicted.columns) == ["steering"]
        assert np.isclose(predicted["steering"][0], float(data["steering_angle"]), atol=1e-5)
