"""Closed-loop evaluation: serve a run's model with scripts/drive.py, drive it with the
built-in simulator over the real Socket.IO protocol, and log the driving metrics and
pictures back to the same MLflow run.

Offline validation loss is known to predict driving poorly; these metrics
(`eval/<track>/autonomy`, `eval/<track>/mean_abs_cte`, ...) are what `drive.py
run_id=best metric=eval/lake/autonomy mode=max` can select on.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

DRIVE_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "drive.py"
SERVER_START_TIMEOUT_S = 120.0


class EvaluationError(RuntimeError):
    """The drive server or the simulator could not complete an evaluation."""


@dataclass(frozen=True)
class TrackSpec:
    """A track to evaluate on: a shipped name, a YAML file, or `random:<seed>`."""

    spec: str
    seed: int
    label: str  # used in metric names: eval/<label>/...

    @classmethod
    def parse(cls, text: str) -> "TrackSpec":
        text = str(text).strip()
        match = re.fullmatch(r"random(?::(\d+))?", text)
        if match:
            seed = int(match.group(1) or 0)
            return cls("random", seed, f"random-{seed}")
        label = Path(text).stem if text.endswith((".yaml", ".yml")) else text
        return cls(text, 0, re.sub(r"[^A-Za-z0-9_.-]", "_", label))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _wait_for_port(host: str, port: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EvaluationError(f"drive server exited with code {process.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise EvaluationError(f"drive server did not listen on {host}:{port} within {timeout:.0f} s")


@contextmanager
def drive_server(overrides: Sequence[str], host: str = "127.0.0.1", port: int | None = None,
                 log_path: Path | None = None) -> Iterator[int]:
    """Run `scripts/drive.py` with Hydra `overrides` on a free port; yields the port."""
    port = port or free_port(host)
    command = [sys.executable, str(DRIVE_SCRIPT), f"host={host}", f"port={port}", *overrides]
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            _wait_for_port(host, port, process, SERVER_START_TIMEOUT_S)
        except EvaluationError as error:
            tail = Path(log_path).read_text()[-2000:] if log_path else ""
            raise EvaluationError(f"{error}\n{tail}".rstrip()) from None
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        if log_path:
            log.close()


def resolve_run_id(run_id: str, experiment: str, metric: str, mode: str,
                   tracking_uri: str | None) -> str:
    """`best` (by metric), `latest` (newest finished run) or a literal run id."""
    from bc import tracking

    if run_id == "best":
        return tracking.find_best_run(experiment, metric, mode, tracking_uri)
    if run_id == "latest":
        client = tracking.client(tracking_uri)
        found = client.get_experiment_by_name(experiment)
        runs = [] if found is None else client.search_runs(
            [found.experiment_id], filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            raise tracking.TrackingError(f"experiment {experiment!r} has no finished run")
        return runs[0].info.run_id
    return run_id


def evaluate(run_id: str, tracks: Sequence[str], *, laps: float = 2.0, seed: int = 0,
             set_speed: float = 20.0, slow_in_bends: bool = False, tracking_uri: str | None = None,
             out: Path, video: bool = True, max_steps: int | None = None,
             realtime: bool = False, progress: bool = True) -> dict[str, dict]:
    """Serve `run_id`'s model with scripts/drive.py and drive each track with bc.sim over
    Socket.IO; log `eval/<track>/...` metrics and pictures to the run. Returns metrics per track."""
    from omegaconf import OmegaConf

    from bc import tracking
    from bc.sim import autonomous

    uri = tracking.resolve_tracking_uri(tracking_uri)
    out.mkdir(parents=True, exist_ok=True)
    server_overrides = [f"run_id={run_id}", f"tracking_uri={uri}", f"set_speed={set_speed}",
                        f"slow_in_bends={str(slow_in_bends).lower()}"]
    results: dict[str, dict] = {}
    with drive_server(server_overrides, log_path=out / "drive_server.log") as port:
        for text in tracks:
            track = TrackSpec.parse(text)
            cfg = OmegaConf.create({
                "track": track.spec, "seed": track.seed if track.spec == "random" else seed,
                "laps": laps, "host": "127.0.0.1", "port": port,
                "autonomous": {"out": str(out / track.label), "run_id": run_id, "label": track.label,
                               "tracking_uri": uri, "video": video, "max_steps": max_steps,
                               "realtime": realtime, "progress": progress},
            })
            results[track.label] = autonomous.main(cfg)
    return results
