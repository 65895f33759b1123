"""Downsample the near-zero-steering excess of a training set, histogram-based.

Keyboard or gentle driving records mostly straight-ahead frames; a network trained on
them learns to drive straight. Samples with |steering| <= zero_threshold form one
"near-zero" bin; the rest are binned into `bins` equal bins over [-1, 1]. A bin holding
more than the limit is randomly (seeded) downsampled to it. The limit is `cap`, or
`max_per_bin` times the mean count of the non-empty regular bins. With zero_threshold
None every regular bin is capped (a general flattening); otherwise only the near-zero bin.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from bc.core import udacity

log = logging.getLogger(__name__)

BALANCE_KEYS = ("enabled", "bins", "max_per_bin", "cap", "zero_threshold")


def balance_indices(
    steering: np.ndarray,
    bins: int = 25,
    max_per_bin: float = 1.0,
    cap: int | None = None,
    zero_threshold: float | None = 0.01,
    seed: int = 0,
) -> np.ndarray:
    """Sorted indices of the samples kept after capping over-full steering bins."""
    steering = np.asarray(steering, dtype=np.float64)
    edges = np.linspace(*udacity.LABEL_RANGES["steering"], bins + 1)
    bin_of = np.clip(np.digitize(steering, edges[1:-1]), 0, bins - 1)
    zero_bin = bins  # the extra near-zero bin
    near_zero = np.zeros(len(steering), dtype=bool)
    if zero_threshold is not None:
        near_zero = np.abs(steering) <= zero_threshold
        bin_of[near_zero] = zero_bin
    counts = np.bincount(bin_of[~near_zero], minlength=bins)[:bins]
    if cap is not None:
        limit = int(cap)
    elif counts.any():
        limit = max(1, int(round(max_per_bin * counts[counts > 0].mean())))
    else:
        log.warning("balance: every sample is near zero steering; nothing to balance against")
        return np.arange(len(steering))
    capped = [zero_bin] if zero_threshold is not None else range(bins)
    rng = np.random.default_rng(seed)
    keep = np.ones(len(steering), dtype=bool)
    for index in capped:
        members = np.flatnonzero(bin_of == index)
        if len(members) > limit:
            keep[rng.choice(members, len(members) - limit, replace=False)] = False
    return np.flatnonzero(keep)


def balance_from_config(
    steering: np.ndarray, config: Mapping[str, Any] | None, seed: int = 0
) -> np.ndarray:
    """Apply a `data.balance` config section (checked by the datamodule); disabled or absent
    keeps every sample."""
    config = dict(config or {})
    if not config.pop("enabled", True):
        return np.arange(len(steering))
    return balance_indices(steering, seed=seed, **config)
