"""The expert as a policy of the episode loop, and its reference drive: what a network
imitating it is measured against (its lap time for `pace_pct`, its progress over time for
`relative_pace`)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from bc.evaluation.episodes import EpisodeSpec, drive
from bc.evaluation.metrics import DriveResult
from bc.sim.car import MPS_PER_MPH
from bc.sim.env import car_model, resolve_track
from bc.sim.expert import Expert
from bc.core.udacity import SAMPLE_PERIOD_S

EXPERT_MIN_SPEED_MPS = 1.0  # the expert's drive gives up below this mean speed


class ExpertPolicy:
    """The expert (bc.sim.expert: pure pursuit, speed planned from the bends) driving every car
    from its true state (`info["state"]`), capped at `speed_mph` (None: its own pace).
    `labels[slot]`: its clean (steering, throttle) and speed label (mph) of the last step:
    its planned speed there with `label_speed="target"`, else the car's."""

    def __init__(self, speed_mph: float | None = None, label_speed: str = "measured") -> None:
        self.speed_mph, self.label_speed = speed_mph, label_speed
        self.experts: dict[int, tuple[Any, Any]] = {}  # slot: (spec, Expert)
        self.labels: dict[int, tuple[float, float, float]] = {}

    def expert(self, slot: int) -> Any:
        return self.experts[slot][1]

    def reset(self, slot: int, spec: "EpisodeSpec") -> None:
        known = self.experts.get(slot)
        if known is not None and known[0] is spec:
            known[1].reset()
        else:
            self.experts[slot] = (spec, Expert(spec.road, speed_mph=self.speed_mph,
                                               car=car_model(spec.car), dt=spec.dt))

    def intervened(self, slot: int) -> None:
        self.expert(slot).reset()  # the safety driver moved the car: the integral is stale

    def label(self, slot: int, info: Mapping[str, Any]) -> tuple[float, float, float]:
        expert = self.expert(slot)
        steering, throttle = expert.act(info["state"])
        speed = (expert.target_speed(info["s"]) if self.label_speed == "target"
                 else info["speed"]) / MPS_PER_MPH
        self.labels[slot] = (steering, throttle, speed)
        return self.labels[slot]

    def act(self, slots: Sequence[int], observations: np.ndarray,
            infos: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return np.array([self.label(slot, info)[:2] for slot, info in zip(slots, infos)],
                        dtype=np.float64).reshape(-1, 2)


def expert_drive(track: Any, laps: float, *, seed: int = 0, reverse: bool = False,
                 car: str | None = None, dt: float = SAMPLE_PERIOD_S,
                 speed_mph: float | None = None) -> DriveResult:
    """The expert (pure pursuit on the true centreline, no camera, no noise) driving `laps`
    laps through the episode loop from a standing start, at its own pace (or capped at
    `speed_mph`)."""
    length = resolve_track(track, seed).length
    limit = int(math.ceil(laps * length / EXPERT_MIN_SPEED_MPS / dt))
    spec = EpisodeSpec(track, laps=laps, reverse=reverse, lighting=seed, car=car, dt=dt,
                       max_steps=limit, stall_timeout_s=None, obs_type="state")
    return drive([spec], ExpertPolicy(speed_mph), jpeg=False)[0]
