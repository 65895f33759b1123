"""Checks of config values, each failing as one `ConfigError` naming the field.

Hydra passes a command-line value through as typed: `data.val_fraction=abc` arrives as the
string 'abc', which `float()` would reject with "could not convert string to float". These
helpers turn such values into "data.val_fraction: expected a number in [0, 1), got 'abc'".
"""

from __future__ import annotations

import math
from typing import Any, Callable

from bc.errors import ConfigError


def setting(
    field: str, value: Any, convert: Callable[[Any], Any], ok: Callable[[Any], bool], expected: str
) -> Any:
    """`convert(value)` if it converts and passes `ok`, else a `ConfigError` naming `field`."""
    try:
        converted = convert(value)
        good = ok(converted)
    except (TypeError, ValueError, OverflowError):
        good = False
    if not good:
        raise ConfigError(f"{field}: expected {expected}, got {value!r}")
    return converted


def number(value: Any) -> float:
    """A finite float; booleans are not numbers (`float(True)` is 1.0)."""
    if isinstance(value, bool):
        raise TypeError(value)
    converted = float(value)
    if not math.isfinite(converted):
        raise ValueError(value)
    return converted


def integer(value: Any) -> int:
    """An integer, also from a float with no fraction (`32.0`)."""
    converted = number(value)
    if not converted.is_integer():
        raise ValueError(value)
    return int(converted)


def optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`convert` that lets None (YAML `null`) through."""
    return lambda value: None if value is None else convert(value)


def flag(field: str, value: Any) -> bool:
    """A YAML boolean (`true`/`false`), not a truthy string."""
    if not isinstance(value, bool):
        raise ConfigError(f"{field}: expected true or false, got {value!r}")
    return value
