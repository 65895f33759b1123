"""The closed-loop score of a model: drive it on a set of tracks (all at once, through the
episode loop) and reduce each drive to one number,

    eval/score = mean over the tracks of
                 autonomy (%) x completion - CTE_WEIGHT x mean |CTE| / half road width

where completion = min(1, laps driven / laps asked) within the time limit (`max_time_factor`
x the expert's time on the same track), so 100 is the most (every lap done, no intervention,
on the centreline) and a model that leaves the road, stalls or weaves scores less. Used by the
training callback (bc/evaluation/callback.py), DAgger's evaluations and any search on `eval/score`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from bc.errors import ConfigError
from bc.evaluation.episodes import (STALL_TIMEOUT_S, Episodes, EpisodeSpec, Policy,
                                    default_vectorization)
from bc.evaluation.expert import expert_drive
from bc.evaluation.metrics import DriveResult, compute_metrics, relative_pace
from bc.core.settings import flag, integer, number, optional, setting
from bc.evaluation.evaluate import REVERSE_SUFFIX, TrackSpec

SCORE = "eval/score"
CTE_WEIGHT = 10.0  # score points per half road width of mean |CTE|
KEPT = ("autonomy", "progress_laps", "mean_abs_cte", "interventions")


@dataclass(frozen=True)
class EvalTrack:
    """One closed-loop episode: `laps` of `track` from a standing start (`reverse`d, under
    lighting `lighting`), `label` in the metric names (default: the track's)."""

    track: str = "lake"
    laps: float = 0.5
    reverse: bool = False
    lighting: int = 0
    label: str | None = None

    @classmethod
    def of(cls, value: Any, field: str) -> "EvalTrack":
        if isinstance(value, EvalTrack):
            return value
        if isinstance(value, str):
            value = {"track": value}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{field}: expected a track name or a mapping with track, laps, "
                              f"reverse, lighting, label; got {value!r}")
        known = set(cls.__dataclass_fields__)
        if set(value) - known:
            raise ConfigError(f"{field}: unknown keys {sorted(set(value) - known)}; expected "
                              f"{sorted(known)}")
        item = cls(**dict(value))
        setting(f"{field}.laps", item.laps, number, lambda laps: laps > 0, "a number > 0")
        setting(f"{field}.lighting", item.lighting, integer, lambda _: True, "an integer")
        flag(f"{field}.reverse", item.reverse)
        return item

    @property
    def name(self) -> str:

        if self.label:
            return self.label
        return TrackSpec.parse(self.track).label + (REVERSE_SUFFIX if self.reverse else "")


def track_score(metrics: Mapping[str, Any], laps: float, half_width: float) -> float:
    """One track's part of eval/score (module doc)."""
    completion = min(1.0, float(metrics["progress_laps"]) / laps)
    return float(metrics["autonomy"]) * completion - CTE_WEIGHT * float(
        metrics["mean_abs_cte"]) / half_width


class Scorer:
    """Drives a policy on `tracks`, all at once, and scores it (module doc). The expert's
    reference drives and the envs (their renderers, with "async" their worker processes) are
    built on first use and kept: close() ends them. `jpeg`, `vectorization`
    (None: `default_vectorization`): bc/evaluation/episodes.py."""

    def __init__(self, tracks: Sequence[Any], max_time_factor: float = 2.0, *,
                 jpeg: bool = True, vectorization: str | None = None) -> None:
        self.tracks = [EvalTrack.of(track, f"tracks[{index}]")
                       for index, track in enumerate(tracks)]
        if not self.tracks:
            raise ConfigError("tracks: expected at least one track to drive")
        self.max_time_factor = setting("max_time_factor", max_time_factor, number,
                                       lambda value: value > 1, "a number > 1")
        self.jpeg = flag("jpeg", jpeg)
        self.vectorization = setting("vectorization", vectorization, optional(str),
                                     lambda value: value in (None, "sync", "async"),
                                     "sync, async or null (episodes.default_vectorization)")
        self._experts: dict[EvalTrack, DriveResult] = {}
        self._episodes: Episodes | None = None
        self.last: list[DriveResult] = []  # the drives of the last `score`

    def expert(self, track: EvalTrack) -> DriveResult:
        if track not in self._experts:
            self._experts[track] = expert_drive(track.track, track.laps, seed=track.lighting,
                                                reverse=track.reverse)
        return self._experts[track]

    def specs(self) -> list[EpisodeSpec]:
        return [EpisodeSpec(track.track, laps=track.laps, reverse=track.reverse,
                            lighting=track.lighting, stall_timeout_s=STALL_TIMEOUT_S,
                            max_steps=math.ceil(self.max_time_factor * self.expert(track).steps))
                for track in self.tracks]

    @property
    def episodes(self) -> Episodes:
        if self._episodes is None:
            self._episodes = Episodes(
                self.specs(), jpeg=self.jpeg,
                vectorization=self.vectorization or default_vectorization(len(self.tracks)))
        return self._episodes

    def close(self) -> None:
        if self._episodes is not None:
            self._episodes.close()
            self._episodes = None

    def score(self, policy: Policy) -> dict[str, dict[str, float]]:
        """{track name: metrics with `score`} and SCORE: {"score": the mean} for `policy`."""
        self.last = self.episodes.run(policy)
        results: dict[str, dict[str, float]] = {}
        for track, drive in zip(self.tracks, self.last):
            metrics = compute_metrics(drive)
            kept = {key: float(metrics[key]) for key in KEPT}
            kept["pace_pct"] = relative_pace(drive, self.expert(track))
            kept["score"] = track_score(metrics, track.laps, drive.track.width / 2)
            results[track.name] = kept
        results[SCORE] = {"score": float(np.mean([item["score"] for item in results.values()]))}
        return results


def eval_metrics(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Scorer results as flat MLflow keys: eval/<track>/<name> and eval/score."""
    flat = {SCORE: results[SCORE]["score"]}
    for name, metrics in results.items():
        if name != SCORE:
            flat.update({f"eval/{name}/{key}": value for key, value in metrics.items()})
    return flat
