"""A fresh SQLite tracking store used by several processes at the same moment: several
`train.py` started at once, and a parallel sweep (joblib's loky workers) with the default
DataLoader settings, which start loader worker processes inside the launcher's workers."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient
from scale import ROWS, TIMEOUT_S, all_runs, run_train, script_env, tiny_training, train_command

from bc import tracking
from bc.data.synthetic import write_recording

STARTS = 3  # train.py processes started at once (1 to 3 of 3 failed before the store lock)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_recording(tmp_path_factory.mktemp("data") / "rec", rows=ROWS, seed=3)


def assert_store_usable(uri: str, runs: int) -> None:
    """All `runs` finished in the store, no half-done migration left, and a new process-level
    client (what the next train.py opens) works."""
    db = uri[len("sqlite:///"):]
    with sqlite3.connect(db) as connection:
        leftovers = connection.execute(
            "SELECT name FROM sqlite_master WHERE name LIKE '_alembic_tmp_%'").fetchall()
    assert leftovers == []
    client = MlflowClient(uri)
    found = all_runs(client)
    assert len(found) == runs and {run.info.status for run in found} == {"FINISHED"}, found
    assert tracking.client(uri).get_experiment_by_name("bc") is not None


def test_train_py_started_at_once_on_a_fresh_store_all_finish(tmp_path: Path, recording: Path) -> None:
    """On a machine where no store was ever made (no template: every process would migrate)."""
    uri = f"sqlite:///{tmp_path / 'x.db'}"
    cache = tmp_path / "cache-of-a-fresh-machine"
    jobs = [subprocess.Popen(train_command(*tiny_training(recording, tmp_path / f"cache{index}"),
                                           f"tracking_uri={uri}", f"hydra.run.dir={tmp_path / f'run{index}'}"),
                             cwd=tmp_path, env=script_env(BC_CACHE_DIR=str(cache)), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for index in range(STARTS)]
    failures = []
    for job in jobs:
        stdout, stderr = job.communicate(timeout=TIMEOUT_S)
        if job.returncode != 0:
            failures.append(stderr[-1500:])
    assert failures == []
    assert_store_usable(uri, STARTS)
    assert (tmp_path / "x.db.lock").exists()  # the lock that serialised the creation
    # the first creation left an empty template of the store: the next new store is its copy
    assert [path.name for path in cache.iterdir()] == [tracking.empty_store_template().name]


@pytest.mark.slow  # the joblib launcher, two trainings with loader workers (~30 s); concurrent first use stays in the default suite
def test_parallel_sweep_with_default_loader_workers_shares_one_store(tmp_path: Path, recording: Path) -> None:
    """The documented `-m hydra/launcher=parallel` sweep as written: default data.num_workers
    (DataLoader worker processes inside loky workers), both jobs in one fresh store."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    overrides = [item for item in tiny_training(recording, tmp_path / "cache") if not item.startswith(
        ("data.num_workers=", "model="))]
    run_train(tmp_path, "-m", "hydra/launcher=parallel", "model=small,nvidia", f"tracking_uri={uri}",
              f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides)
    assert_store_usable(uri, 2)
    runs = all_runs(MlflowClient(uri))
    assert {run.data.params["data.num_workers"] for run in runs} == {"2"}  # the default
    assert {run.data.params["model._target_"].rsplit(".", 1)[-1] for run in runs} == {"SmallNet", "PilotNet"}
    assert len({run.data.tags["pid"] for run in runs}) == 2  # two loky worker processes


def test_a_new_store_is_a_copy_of_the_empty_template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BC_CACHE_DIR", str(tmp_path / "cache"))
    first, second = (f"sqlite:///{tmp_path / name / 'mlflow.db'}" for name in ("first", "second"))
    tracking.get_or_create_experiment("bc", first)
    template = tracking.empty_store_template()
    with sqlite3.connect(template) as connection:
        assert connection.execute("SELECT COUNT(*) FROM experiments").fetchone() == (0,)
    experiment = tracking.get_or_create_experiment("bc", second)  # copied: no migrations
    client = MlflowClient(second)
    default = client.get_experiment("0")
    made_by_mlflow = MlflowClient(first).get_experiment("0")  # where MLflow puts it: beside the cwd
    assert default.name == "Default" and default.artifact_location == made_by_mlflow.artifact_location
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "val/loss", 0.5)
    assert client.get_run(run.info.run_id).data.metrics == {"val/loss": 0.5}
    assert client.get_experiment(experiment).artifact_location.endswith("/second/bc")
