"""scripts/evaluate.py stopped from outside: Ctrl-C is one line (exit 130) and stops its
drive server; SIGKILL, which runs no cleanup, still leaves no drive.py behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, compose_config
from omegaconf import OmegaConf

from bc import tracking
from bc.inference import store
from bc.inference import artifact

EVALUATE = str(REPO / "scripts" / "evaluate.py")
GONE_WITHIN_S = 5.0


@pytest.fixture(scope="module")
def model_run(tmp_path_factory) -> dict:
    """An MLflow store holding one finished run with an (untrained) small model."""
    root = tmp_path_factory.mktemp("evaluate-store")
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    config = OmegaConf.to_container(compose_config("train", ["model=small"]).model, resolve=True)
    client = tracking.client(uri)
    run_id = client.create_run(tracking.get_or_create_experiment("signals", uri)).info.run_id
    store.log_model(run_id, artifact.build_model(config).eval(), config, uri)
    client.set_terminated(run_id)
    return {"root": root, "uri": uri, "run_id": run_id}


def start_evaluation(model_run: dict, out: Path) -> tuple[subprocess.Popen, int]:
    """evaluate.py on a long drive; returns it and its drive.py child once that serves."""
    process = subprocess.Popen(
        [sys.executable, EVALUATE, f"run_id={model_run['run_id']}",
         f"tracking_uri={model_run['uri']}", "track=lake", "laps=20", "video=false",
         "progress=false", f"out={out}"],
        cwd=model_run["root"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"})
    log = out / "drive_server.log"
    deadline = time.monotonic() + 120
    while not (log.is_file() and "serving" in log.read_text(errors="replace")):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no drive server started: {process.communicate()}")
        time.sleep(0.05)
    (child,) = children(process.pid)
    time.sleep(0.5)  # driving now
    return process, child


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper is dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def gone_soon(pid: int) -> bool:
    deadline = time.monotonic() + GONE_WITHIN_S
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")


def test_ctrl_c_is_one_line_and_stops_the_drive_server(model_run, tmp_path):
    process, child = start_evaluation(model_run, tmp_path / "eval")
    try:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 130
        assert stderr == "evaluate.py: interrupted\n"
        assert gone_soon(child)
    finally:
        process.kill()
        if alive(child):
            os.kill(child, signal.SIGKILL)


@pytest.mark.slow  # ~8 s; Ctrl-C stopping the drive server stays in the default suite (above)
def test_sigkill_leaves_no_drive_server_behind(model_run, tmp_path):
    process, child = start_evaluation(model_run, tmp_path / "eval")
    try:
        process.kill()
        process.wait()
        assert gone_soon(child), "drive.py outlived the evaluate.py that started it"
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
