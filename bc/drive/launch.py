"""Start scripts/drive.py as a real server process (for evaluation, benchmarks and tests):
the same command a user runs, on a free loopback port, stopped cleanly afterwards, and
never outliving the process that started it (even one killed by SIGKILL)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from bc.errors import BcError

SERVING_PATTERN = re.compile(r"serving (?P<source>.+) on http://(?P<host>[^\s]+):(?P<port>\d+)")
STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class DriveServerError(BcError, RuntimeError):
    """scripts/drive.py exited or did not start listening; the message holds its log."""


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has Linux send the child SIGTERM when its parent dies, however it
    dies (a `finally` does not run on SIGKILL); None elsewhere. The signal comes when the
    thread that started the child ends, so start it from a thread that lives as long."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


@contextmanager
def drive_server(overrides: list[str], workdir: Path,
                 log_name: str = "drive_server.log") -> Iterator[dict[str, Any]]:
    """Run ``scripts/drive.py <overrides> port=0`` (a free loopback port) in ``workdir``;
    yields its port, source, startup time, log path and process. Stopped (SIGTERM) on exit."""
    log_path = workdir / log_name
    run_dir = str(workdir / "hydra" / log_path.stem).replace("\\", "\\\\").replace("'", "\\'")
    command = [sys.executable, "-m", "bc.commands.drive", "port=0", f"hydra.run.dir='{run_dir}'",
               *overrides]
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=die_with_parent())
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
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # pragma: no cover
            process.kill()
            process.wait()
