"""Suspicious stretches of a recording, found from its data: what a person should look at first.

- `bad`: rows `bc.data.log` rejects (a label outside its range, a missing image, ...);
- `standstill`: the car stood (speed below `STANDSTILL_MPH`) for at least `STANDSTILL_S`;
- `spike`: a steering value far from its neighbours' median (a keyboard tap, a glitch);
- `duplicate`: consecutive center frames that are (nearly) the same picture, for at least
  `DUPLICATE_RUN` frames, while the log says the car moved or not (a stalled simulator, or
  standing still recorded over and over).

Each stretch is (kind, first index, last index, text) over the table's rows (0-based).
"""

from __future__ import annotations

import threading
from typing import Callable, Mapping, NamedTuple, Sequence

import cv2
import numpy as np

from bc.core import udacity

STANDSTILL_MPH = 0.5
STANDSTILL_S = 3.0
SPIKE_WINDOW = 5  # rows in the median a steering value is compared with
SPIKE_JUMP = 0.3  # |steering - median of its window| above this is a spike
DUPLICATE_GREY_LEVELS = 0.75  # mean |difference| of 1/8-size grey thumbnails, 0..255
DUPLICATE_RUN = 5  # frames in a row


class Stretch(NamedTuple):
    kind: str
    first: int
    last: int
    text: str

    def as_dict(self) -> dict:
        return self._asdict()


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of every run of True in `mask`."""
    padded = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(first), int(end) - 1) for first, end in zip(edges[::2], edges[1::2])]


def bad_rows(problems: Mapping[int, str], rows: Sequence[int]) -> list[Stretch]:
    """Consecutive bad rows as one stretch, named by the first one's reason."""
    mask = np.zeros(len(rows), dtype=bool)
    mask[list(problems)] = True
    return [Stretch("bad", first, last, f"{last - first + 1} bad row(s) from csv line "
                                       f"{rows[first]}: {problems[first]}")
            for first, last in runs(mask)]


def standstills(speed: np.ndarray, rate_hz: float = udacity.SAMPLE_RATE_HZ) -> list[Stretch]:
    minimum = max(1, int(round(STANDSTILL_S * rate_hz)))
    still = np.nan_to_num(speed, nan=np.inf) < STANDSTILL_MPH
    return [Stretch("standstill", first, last,
                    f"standing still for {(last - first + 1) / rate_hz:.1f} s")
            for first, last in runs(still) if last - first + 1 >= minimum]


def spikes(steering: np.ndarray) -> list[Stretch]:
    if len(steering) < SPIKE_WINDOW:
        return []
    half = SPIKE_WINDOW // 2
    padded = np.pad(np.nan_to_num(steering), half, mode="edge")
    median = np.median(np.lib.stride_tricks.sliding_window_view(padded, SPIKE_WINDOW), axis=1)
    jump = np.abs(np.nan_to_num(steering) - median)
    return [Stretch("spike", first, last, f"steering jumps by {jump[first:last + 1].max():.2f} "
                                          f"from its neighbours")
            for first, last in runs(jump > SPIKE_JUMP)]


def thumbnail(path: str) -> np.ndarray | None:
    """A 1/8-size grey decode of a JPEG (libjpeg scales while decoding: cheap)."""
    image = cv2.imread(path, cv2.IMREAD_REDUCED_GRAYSCALE_8) if path else None
    return None if image is None else image.astype(np.int16)


def duplicates(paths: Sequence[str], progress: Callable[[int], None] | None = None,
               stop: threading.Event | None = None) -> list[Stretch] | None:
    """Runs of at least `DUPLICATE_RUN` center frames that each look like the one before
    (None when `stop` was set before the end)."""
    same = np.zeros(len(paths), dtype=bool)
    previous = None
    for index, path in enumerate(paths):
        if stop is not None and stop.is_set():
            return None
        current = thumbnail(path)
        if previous is not None and current is not None and current.shape == previous.shape:
            same[index] = np.abs(current - previous).mean() < DUPLICATE_GREY_LEVELS
        previous = current
        if progress is not None and index % 1000 == 999:
            progress(index + 1)
    stretches = []
    for first, last in runs(same):
        first -= 1  # the frame the first duplicate repeats
        if last - first + 1 >= DUPLICATE_RUN:
            stretches.append(Stretch("duplicate", first, last,
                                     f"{last - first + 1} near-identical frames in a row"))
    return stretches
