"""One base for every error bc reports to a user.

A `BcError` is bad input or a bad setting, not a bug: its message names the file, row or
field and what was expected, in one line. Entry points print it as that one line and exit
with `EXIT_USAGE` (see `bc.cli`); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_USAGE = 2  # a bc error: bad input, config or environment
EXIT_INTERRUPTED = 130  # the shell's convention for "terminated by Ctrl-C"


class BcError(Exception):
    """Base of every error bc reports as one line (exit code `EXIT_USAGE`)."""


class ConfigError(BcError, ValueError):
    """A config value is missing or out of range; the message names the field (e.g. `optimizer.lr`)."""
