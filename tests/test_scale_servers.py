"""Shared services of a team, for real: a PostgreSQL server (initdb + pg_ctl in a temp dir on
loopback), an `mlflow server` on it with --serve-artifacts that training logs to and drive.py
loads from over HTTP, and one Optuna study in PostgreSQL shared by two sweep processes.

PostgreSQL's server binaries come from Debian's `postgresql` package (`make postgres`, which
`make test` runs); where they are missing and cannot be installed these tests skip, saying so."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from mlflow import MlflowClient
from scale import (ROWS, STARTUP_TIMEOUT_S, TIMEOUT_S, all_runs, artifact_paths, assert_serves, free_port,
                   script_env, tiny_training, train_command)
from scale import mlflow_server as start_mlflow_server

from bc import tracking
from bc.data.synthetic import write_recording
from bc.training.train import train
from conftest import compose_config

POSTGRES_USER = "postgres"  # initdb refuses root: as root, the server runs as this account


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_recording(tmp_path_factory.mktemp("data") / "rec", rows=ROWS, seed=3)


def postgres_bin() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


@dataclass
class Postgres:
    """A throwaway PostgreSQL server on 127.0.0.1:`port`, user `bc` trusted, no password."""

    port: int

    def database(self, name: str) -> str:
        """Create database `name`; its SQLAlchemy URI (psycopg2 driver, as requirements.txt pins)."""
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="bc", dbname="postgres")
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return f"postgresql+psycopg2://bc@127.0.0.1:{self.port}/{name}"

    def query(self, database: str, sql: str) -> list[tuple]:
        import psycopg2

        with psycopg2.connect(host="127.0.0.1", port=self.port, user="bc", dbname=database) as connection:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return cursor.fetchall()


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; `make postgres` installs "
                    "Debian's postgresql package (needs root and apt-get)")
    run_as = None
    if os.geteuid() == 0:
        try:
            run_as = pwd.getpwnam(POSTGRES_USER)
        except KeyError:
            pytest.skip(f"running as root, and initdb refuses root: no {POSTGRES_USER!r} account to run "
                        f"PostgreSQL as (Debian's postgresql package creates it: `make postgres`)")
    folder = Path(tempfile.mkdtemp(prefix="bc-postgres-"))  # not under pytest's root-only tmp
    if run_as is not None:
        os.chown(folder, run_as.pw_uid, run_as.pw_gid)
    user = {"user": run_as.pw_uid, "group": run_as.pw_gid} if run_as is not None else {}
    data, port = folder / "data", free_port()

    def pg(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(bin_dir / command[0]), *command[1:]], capture_output=True, text=True,
                              timeout=STARTUP_TIMEOUT_S, cwd=folder, **user)

    try:
        made = pg("initdb", "-D", str(data), "-U", "bc", "--auth=trust", "-E", "UTF8", "--no-sync")
        assert made.returncode == 0, made.stdout + made.stderr
        started = pg("pg_ctl", "-D", str(data), "-l", str(folder / "server.log"), "-w", "-o",
                     f"-h 127.0.0.1 -p {port} -k '' -c fsync=off -c full_page_writes=off", "start")
        assert started.returncode == 0, started.stdout + started.stderr + (folder / "server.log").read_text()
        yield Postgres(port)
    finally:
        if data.is_dir():
            pg("pg_ctl", "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def mlflow_server(postgres: Postgres, tmp_path: Path) -> Iterator[str]:
    """`mlflow server` with a PostgreSQL backend store and proxied artifacts in tmp_path/artifacts:
    the documented command. Yields its URI."""
    with start_mlflow_server(postgres.database("mlflow"), tmp_path) as uri:
        yield uri


def test_training_logs_to_an_mlflow_server_on_postgresql_and_drive_loads_over_http(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recording: Path, postgres: Postgres,
        mlflow_server: str) -> None:
    monkeypatch.chdir(tmp_path)
    run_id = train(compose_config("train", [f"tracking_uri={mlflow_server}", "experiment_name=team",
                                            f"output_dir={tmp_path / 'out'}",
                                            *tiny_training(recording, tmp_path / "cache")]))
    client = MlflowClient(mlflow_server)
    (run,) = all_runs(client)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied by the server
    # The run is a row of the server's PostgreSQL store; its files are in the server's folder.
    assert postgres.query("mlflow", "SELECT run_uuid, status FROM runs") == [(run_id, "FINISHED")]
    (run_folder,) = (tmp_path / "artifacts").glob(f"*/{run_id}/artifacts")
    stored = {path.relative_to(run_folder).as_posix() for path in run_folder.rglob("*") if path.is_file()}
    assert stored == artifact_paths(client, run_id)
    assert {"model/weights.pt", "model/model.yaml", "model/model.ts", "config.yaml"} <= stored
    assert not list(tmp_path.rglob("*.db"))  # nothing went to a local store
    # drive.py with the same URI downloads the model over HTTP and serves it.
    assert_serves(run_id, mlflow_server, tmp_path / "serve")


@pytest.mark.slow
def test_two_sweep_processes_share_one_optuna_study_in_postgresql(
        tmp_path: Path, recording: Path, postgres: Postgres) -> None:
    """The documented recipe for several machines: create the study once, then start
    `train.py hparams_search=optuna` with the same storage and study name on each machine; the
    second process runs its trials two at a time (hydra/launcher=parallel)."""
    import optuna

    storage = postgres.database("optuna")
    created = subprocess.run([str(Path(sys.executable).parent / "optuna"), "create-study", "--study-name",
                              "shared", "--direction", "minimize", "--storage", storage],
                             capture_output=True, text=True, timeout=TIMEOUT_S, env=script_env())
    assert created.returncode == 0, created.stderr[-3000:]
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    tracking.get_or_create_experiment("tuning", uri)  # the team's MLflow store exists already
    sweeps = [subprocess.Popen(
        train_command("hparams_search=optuna", f"hydra.sweeper.storage={storage}",
                      "hydra.sweeper.study_name=shared", "hydra.sweeper.n_trials=2",
                      f"hydra.sweep.dir={tmp_path / f'sweep{index}'}", "experiment_name=tuning",
                      f"tracking_uri={uri}", *tiny_training(recording, tmp_path / "cache"), *launcher),
        cwd=tmp_path, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for index, launcher in enumerate([[], ["hydra/launcher=parallel", "hydra.sweeper.n_jobs=2"]])]
    for sweep in sweeps:
        output, _ = sweep.communicate(timeout=TIMEOUT_S)
        assert sweep.returncode == 0, output[-4000:]

    study = optuna.load_study(study_name="shared", storage=storage)
    trials = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(study.trials) == len(trials) == 4  # two from each process, all in PostgreSQL
    runs = all_runs(MlflowClient(uri))
    assert len(runs) == 4 and {run.info.status for run in runs} == {"FINISHED"}
    assert {run.data.tags["sweep"] for run in runs} == {str(tmp_path / "sweep0"), str(tmp_path / "sweep1")}
    pids = {sweep: {run.data.tags["pid"] for run in runs if run.data.tags["sweep"] == str(tmp_path / sweep)}
            for sweep in ("sweep0", "sweep1")}
    assert pids["sweep0"] == {str(sweeps[0].pid)}  # the basic launcher runs trials in its process
    assert pids["sweep1"] and str(sweeps[1].pid) not in pids["sweep1"]  # in joblib's worker processes
    # Each trial is one MLflow run: its parameters, and as its value the run's val/loss_best.
    for trial in trials:
        (run,) = [run for run in runs if float(run.data.params["optimizer.lr"]) == trial.params["optimizer.lr"]]
        assert run.data.params["data.batch_size"] == str(trial.params["data.batch_size"])
        assert trial.value == run.data.metrics["val/loss_best"]
