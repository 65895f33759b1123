"""How every entry point in `scripts/` ends: a bc error is one line on stderr (exit 2),
Ctrl-C is one line (exit 130), anything else is a bug and keeps its traceback.

Hydra wraps exceptions raised while instantiating a `_target_` in its own
`InstantiationException`; the bc error inside is unwrapped so it still reads as one line.
"""

from __future__ import annotations

import sys
from typing import Callable, TypeVar

from bc.errors import EXIT_INTERRUPTED, EXIT_USAGE, BcError

T = TypeVar("T")


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
