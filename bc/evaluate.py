"""Closed-loop evaluation: serve a run's model with scripts/drive.py, drive it with the
built-in simulator over the real Socket.IO protocol, and log the driving metrics and
pictures back to the same MLflow run.

Offline validation loss is known to predict driving poorly; these metrics
(`eval/<track>/autonomy`, `eval/<track>/mean_abs_cte`, ...) are what `drive.py
run_id=best metric=eval/lake/autonomy mode=max` can select on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bc.drive.launch import drive_server

@dataclass(frozen=True)
class TrackSpec:
    """A track to evaluate on: a shipped name, a YAML file, or `random:<seed>`."""

    spec: str
    seed: int
    label: str  # used in metric names: eval/<label>/...

    @classmethod
    def parse(cls, text: str) -> "TrackSpec":
        text = str(text).strip()
        match = re.fullmatch(r"random(?:[:-](\d+))?", text)
        if match:
            seed = int(match.group(1) or 0)
            return cls("random", seed, f"random-{seed}")
        label = Path(text).stem if text.endswith((".yaml", ".yml")) else text
        return cls(text, 0, re.sub(r"[^A-Za-z0-9_.-]", "_", label))


def evaluate(run_id: str, tracks: Sequence[str], *, laps: float = 2.0, seed: int = 0,
             set_speed: float = 20.0, slow_in_bends: bool = False, tracking_uri: str | None = None,
             out: Path, video: bool = True, max_steps: int | None = None,
             realtime: bool = False, progress: bool = True) -> dict[str, dict]:
    """Serve `run_id`'s model with scripts/drive.py and drive each track with bc.sim over
    Socket.IO; log `eval/<track>/...` metrics and pictures to the run. Returns metrics per track."""
    from omegaconf import OmegaConf

    from bc import tracking
    from bc.sim import autonomous

    uri = tracking.resolve_tracking_uri(tracking_uri)
    out.mkdir(parents=True, exist_ok=True)
    server_overrides = [f"run_id={run_id}", f"tracking_uri={uri}", f"set_speed={set_speed}",
                        f"slow_in_bends={str(slow_in_bends).lower()}"]
    results: dict[str, dict] = {}
    with drive_server(server_overrides, out) as server:
        port = server["port"]
        for text in tracks:
            track = TrackSpec.parse(text)
            cfg = OmegaConf.create({
                "track": track.spec, "seed": track.seed if track.spec == "random" else seed,
                "laps": laps, "host": "127.0.0.1", "port": port,
                "autonomous": {"out": str(out / track.label), "run_id": run_id, "label": track.label,
                               "tracking_uri": uri, "video": video, "max_steps": max_steps,
                               "realtime": realtime, "progress": progress},
            })
            results[track.label] = autonomous.main(cfg)
    return results
