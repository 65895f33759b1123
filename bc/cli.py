"""How every entry point in `scripts/` ends: a bc error is one line on stderr (exit 2),
Ctrl-C is one line (exit 130), anything else is a bug and keeps its traceback.

Hydra wraps exceptions raised while instantiating a `_target_` in its own
`InstantiationException`; the bc error inside is unwrapped so it still reads as one line.
A config that does not compose (a wrong type or an unknown key on the command line, checked
against the schemas of `bc.core.configs`) is one line naming the key as well: `command` is
`@hydra.main` with that report.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

from bc.errors import EXIT_INTERRUPTED, EXIT_USAGE, BcError

T = TypeVar("T")
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the config groups, beside the package


def bc_error_in(error: BaseException) -> BcError | None:
    """The `BcError` that caused ``error`` (itself, or one in its ``__cause__`` chain)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, BcError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def run(prog: str, job: Callable[[], T]) -> T:
    """Run ``job``; report a bc error or Ctrl-C as one line and exit, re-raise anything else."""
    try:
        return job()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as error:
        found = bc_error_in(error)
        if found is None:
            raise
        message = " ".join(str(found).split("\n"))
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USAGE)


def composition_error(error: BaseException) -> str | None:
    """One line for a config that did not compose (Hydra's override and composition errors,
    OmegaConf's type and key checks), naming the key; None for any other error."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(error, (HydraException, OmegaConfBaseException)):
        return None
    from bc.core.configs import RETIRED_KEYS  # lazy: Hydra's schemas only for a failed command

    cause = error if isinstance(error, OmegaConfBaseException) else error.__cause__
    if not isinstance(cause, OmegaConfBaseException):
        return " ".join(str(error).split())
    key = getattr(cause, "full_key", None) or ""
    retired = RETIRED_KEYS.get(key.rsplit(".", 1)[-1])
    if retired:
        return f"{key}: retired; use {retired}"
    reason = str(cause).strip().splitlines()[0]  # OmegaConf adds full_key/object_type lines
    if cause is not error:  # Hydra's context: "Error merging override x=y"
        context = str(error).strip().splitlines()[0].rstrip(".")
        reason = f"{reason} ({context.replace('Error merging override', 'override')})"
    return f"{key}: {reason}" if key else reason


def command(config_name: str, prog: str) -> Callable[[Callable[..., T]], Callable[[], T]]:
    """`@hydra.main` for conf/<config_name>.yaml (``config_path`` relative to the script) with
    the schemas of `bc.core.configs` registered, and a config that does not compose reported as
    ``<prog>: error: <key>: <reason>`` (exit 2) instead of Hydra's multi-line report."""
    import hydra

    import bc.core.configs  # noqa: F401  (lazy: registers the schemas the configs name)

    def decorate(task: Callable[..., T]) -> Callable[[], T]:
        started = []

        @functools.wraps(task)
        def job(cfg: Any) -> T:
            started.append(True)
            return task(cfg)

        hydra_main = hydra.main(version_base="1.3", config_path=str(CONF_DIR),
                                config_name=config_name)(job)

        @functools.wraps(task)
        def main() -> T:
            # Hydra prints a composition error over several lines and exits 1 unless
            # HYDRA_FULL_ERROR is set; then it raises it here, to be reported as one line.
            previous = os.environ.get("HYDRA_FULL_ERROR")
            os.environ["HYDRA_FULL_ERROR"] = "1"
            try:
                return hydra_main()
            except Exception as error:
                message = None if started else composition_error(error)
                if message is None:
                    raise
                print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
                sys.exit(EXIT_USAGE)
            finally:
                if previous is None:
                    os.environ.pop("HYDRA_FULL_ERROR", None)
                else:
                    os.environ["HYDRA_FULL_ERROR"] = previous

        return main

    return decorate
