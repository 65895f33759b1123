"""Train/validation splits that do not leak: consecutive frames are near-duplicates.

A random frame split puts a frame in validation and its neighbour, 67 ms earlier, in
training, so validation loss says nothing about unseen road. Split instead by contiguous
time blocks (within each recording) or by whole recordings.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from bc.core import udacity
from bc.errors import ConfigError

SPLITS = ("blocks", "recording")


def block_ids(recordings: Sequence[str], block_rows: int) -> np.ndarray:
    """Id of each row's contiguous block of `block_rows` rows (blocks never span recordings)."""
    recordings = np.asarray(recordings)
    ids = np.empty(len(recordings), dtype=np.int64)
    next_id = 0
    start = 0
    while start < len(recordings):
        end = start
        while end < len(recordings) and recordings[end] == recordings[start]:
            end += 1
        local = np.arange(end - start) // block_rows
        ids[start:end] = next_id + local
        next_id += int(local[-1]) + 1
        start = end
    return ids


def _hold_out(groups: np.ndarray, val_fraction: float, seed: int, what: str) -> np.ndarray:
    """Mark whole groups as validation, in seeded random order, as near val_fraction as possible."""
    is_val = np.zeros(len(groups), dtype=bool)
    if val_fraction <= 0 or len(groups) == 0:
        return is_val
    unique, sizes = np.unique(groups, return_counts=True)
    if len(unique) < 2:
        raise ConfigError(
            f"data.val_fraction: cannot hold out {val_fraction:.0%} for validation: only one"
            f" {what}; "
            "add data, use smaller blocks, or set data.val_fraction=0"
        )
    target = max(1, math.floor(val_fraction * len(groups) + 0.5))
    order = np.random.default_rng(seed).permutation(len(unique))
    chosen, total = [], 0
    for index in order:
        if len(chosen) == len(unique) - 1:  # always keep a training group
            break
        if chosen and total + sizes[index] - target > target - total:  # closer to target without it
            break
        chosen.append(unique[index])
        total += sizes[index]
    return np.isin(groups, chosen)


def split_rows(
    recordings: Sequence[str],
    method: str = "blocks",
    val_fraction: float = 0.2,
    block_rows: int = 150,
    seed: int = 0,
) -> np.ndarray:
    """Boolean mask of validation rows; rows are in recording order, time order within one.

    `method` is one of `SPLITS`, 0 <= val_fraction < 1 (the datamodule checks its settings)."""
    recordings = np.asarray(recordings)
    if method == "recording":
        return _hold_out(recordings, val_fraction, seed, "recording (list several in data.paths)")
    return _hold_out(
        block_ids(recordings, block_rows), val_fraction, seed, f"block of {block_rows} rows"
    )


def block_rows_for(block_seconds: float | None, block_rows: int | None) -> int:
    """Block length in rows: `block_rows` if set, else `block_seconds` at the sim's rate."""
    if block_rows is not None:
        return int(block_rows)
    return max(1, round(block_seconds * udacity.SAMPLE_RATE_HZ))
