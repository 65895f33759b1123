"""Closed-loop evaluation: serve a run's model with scripts/drive.py, drive it with the
built-in simulator over the real Socket.IO protocol, and log the driving metrics and
pictures back to the same MLflow run.

Offline validation loss is known to predict driving poorly; these metrics
(`eval/<track>/autonomy`, `eval/<track>/pace_pct`, `eval/<track>/mean_abs_cte`, ...) are what
`drive.py run_id=best metric=eval/lake/autonomy mode=max` can select on. As Unity runs it, the
server's latency costs simulated time (`realtime`), and the lap time is reported beside the
expert's on the same track, direction and car (`pace_pct`, bc/sim/metrics.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bc.drive.launch import drive_server
from bc.sim.autonomous import AutonomousDrive
from bc.sim.env import RANDOM_TRACK
from bc.sim.metrics import metric_label

REVERSE_SUFFIX = "-reverse"  # eval/<track>-reverse/... for drives the other way round


@dataclass(frozen=True)
class TrackSpec:
    """A track to evaluate on: a shipped name, a YAML file, or `random:<seed>`."""

    spec: str
    seed: int | None  # None: the evaluation's lighting seed (random:<n> tracks carry their own)
    label: str  # used in metric names: eval/<label>/...

    @classmethod
    def parse(cls, text: str) -> "TrackSpec":
        text = str(text).strip()
        match = RANDOM_TRACK.fullmatch(text)
        if match:
            seed = int(match.group(1) or 0)
            return cls("random", seed, f"random-{seed}")
        return cls(text, None, metric_label(text))


def evaluate(run_id: str, tracks: Sequence[str], autonomous: AutonomousDrive, *, out: Path,
             server_overrides: Sequence[str] = (),
             tracking_uri: str | None = None) -> dict[str, dict]:
    """Serve `run_id`'s model with scripts/drive.py (plus `server_overrides`) and drive each
    track as `autonomous` says; log `eval/<track>/...` metrics and pictures to the run.
    Returns the metrics per track label (`<track>-reverse` with `autonomous.reverse`)."""
    from bc import tracking
    from bc.sim.track import load_track

    uri = tracking.resolve_tracking_uri(tracking_uri)
    specs = [TrackSpec.parse(text) for text in tracks]
    seeds = [autonomous.seed if spec.seed is None else spec.seed for spec in specs]
    loaded = [load_track(spec.spec, seed=seed)  # a bad track fails now, not after the server
              for spec, seed in zip(specs, seeds)]
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    with drive_server([f"run_id={run_id}", f"tracking_uri={uri}", *server_overrides],
                      out) as server:
        for spec, seed, track in zip(specs, seeds, loaded):
            label = spec.label + (REVERSE_SUFFIX if autonomous.reverse else "")
            drive = dataclasses.replace(
                autonomous, host="127.0.0.1", port=server["port"], seed=seed,
                out=str(out / label), label=label, run_id=run_id, tracking_uri=uri)
            results[label] = drive.run(track)
    return results
