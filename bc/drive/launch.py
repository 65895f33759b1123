"""Start scripts/drive.py as a real server process (for evaluation, benchmarks and tests):
the same command a user runs, on a free loopback port, stopped cleanly afterwards."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from bc.errors import BcError

DRIVE_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "drive.py"
SERVING_PATTERN = re.compile(r"serving (?P<source>.+) on http://(?P<host>[^\s]+):(?P<port>\d+)")
STARTUP_TIMEOUT_S = 120.0


class DriveServerError(BcError, RuntimeError):
    """scripts/drive.py exited or did not start listening; the message holds its log."""


@contextmanager
def drive_server(overrides: list[str], workdir: Path,
                 log_name: str = "drive_server.log") -> Iterator[dict[str, Any]]:
    """Run ``scripts/drive.py <overrides> port=0`` (a free loopback port) in ``workdir``;
    yields its port, source, startup time, log path and process. Stopped (SIGTERM) on exit."""
    log_path = workdir / log_name
    run_dir = str(workdir / "hydra" / log_path.stem).replace("\\", "\\\\").replace("'", "\\'")
    command = [sys.executable, str(DRIVE_SCRIPT), "port=0", f"hydra.run.dir='{run_dir}'",
               *overrides]
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        match = None
        while match is None:
            if process.poll() is not None:
                raise DriveServerError(f"drive server exited with {process.returncode}:\n"
                                   f"{log_path.read_text(errors='replace')}")
            if time.perf_counter() - started > STARTUP_TIMEOUT_S:
                raise DriveServerError(f"drive server did not start in {STARTUP_TIMEOUT_S} s")
            match = SERVING_PATTERN.search(log_path.read_text(errors="replace"))
            if match is None:
                time.sleep(0.02)
        yield {"port": int(match["port"]), "source": match["source"], "log": log_path,
               "startup_s": time.perf_counter() - started, "process": process}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            process.kill()
            process.wait()
