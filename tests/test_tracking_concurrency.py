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
    uri = f"sqlite:///{tmp_path / 'x.db'}"
    jobs = [subprocess.Popen(train_command(*tiny_training(recording, tmp_path / f"cache{index}"),
                                           f"tracking_uri={uri}", f"hydra.run.dir={tmp_path / f'run{index}'}"),
                             cwd=tmp_path, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
            for index in range(STARTS)]
    failures = []
    for job in jobs:
        stdout, stderr = job.communicate(timeout=TIMEOUT_S)
        if job.returncode != 0:
            failures.append(stderr[-1500:])
    assert failures == []
    assert_store_usable(uri, STARTS)
    assert (tmp_path / "x.db.lock").exists()  # the lock that serialised the creation


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
