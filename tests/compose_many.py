"""Check that many `scripts/<name>.py ... --cfg job` command lines compose, in one process.

Each check runs the script as `python scripts/<name>.py` would (its `__main__`, the same argv),
so Hydra composes the config and prints it without running the job; only the interpreter and
the imports are shared, which is what made one process per command slow.

Input (stdin, JSON): a list of {"cwd": folder, "argv": [script, args...]}.
Output (stdout, JSON): a list of {"code": exit code, "stderr": the last of its stderr}.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import sys


def compose(cwd: str, argv: list[str]) -> dict:
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    os.chdir(cwd)
    sys.argv = list(argv)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException as error:  # noqa: BLE001  (reported as the command's failure)
        code = 1
        stderr.write(f"{type(error).__name__}: {error}")
    return {"code": code, "stderr": stderr.getvalue()[-1500:]}


def main() -> None:
    checks = json.load(sys.stdin)
    results = [compose(check["cwd"], check["argv"]) for check in checks]
    sys.__stdout__.write(json.dumps(results))


if __name__ == "__main__":
    main()
