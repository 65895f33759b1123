"""Closed-loop evaluation: serve a run's model with scripts/drive.py, drive it with the
built-in simulator over the real Socket.IO protocol, and log the driving metrics and
pictures back to the same MLflow run.

Offline validation loss is known to predict driving poorly; these metrics
(`eval/<track>/autonomy`, `eval/<track>/pace_pct`, `eval/<track>/mean_abs_cte`, ...) are what
`drive.py run_id=best metric=eval/lake/autonomy mode=max` can select on. As Unity runs it, the
server's latency costs simulated time (`realtime`), and the lap time is reported beside the
expert's on the same track, direction and car (`pace_pct`, bc/evaluation/metrics.py).

With `jobs` > 1 the tracks are driven in that many processes at once, each with its own drive
server (a server's speed controller follows one car); the metrics still go to the one run, and
`tracks_table` puts every track's side by side.

With `vectorized`, the model is not served: every track is driven at once in this process
through the episode loop (bc/evaluation/episodes.py; worker processes for several tracks),
the model batched as drive.py answers (bc/evaluation/policies.py), in lockstep (the
server's latency is not charged) -- the fast path for many tracks; the same metrics, tables
and trajectories, no video.

With `saliency`, each track's center-camera video is drawn again with the model's
VisualBackProp saliency (`bc.insight.saliency`: where the network looks) as
`<track>/saliency.mp4`, logged beside the other pictures (eval/<track>/).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from bc.drive.launch import drive_server
from bc.errors import ConfigError
from bc.inference import store
from bc.core.settings import flag, integer, setting
from bc.evaluation.autonomous import AutonomousDrive
from bc.sim.env import RANDOM_TRACK
from bc.evaluation.metrics import METRIC_PREFIX, TABLE_ROWS, metric_label
from bc import tracking
from bc.evaluation.episodes import Episodes, default_vectorization
from bc.evaluation.policies import ModelPolicy
from bc.insight.saliency import SaliencyOverlay
from bc.insight.saliency import overlay_video
from bc.sim.track import load_track

REVERSE_SUFFIX = "-reverse"  # eval/<track>-reverse/... for drives the other way round
SALIENCY_VIDEO = "saliency.mp4"  # beside each track's center.mp4


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
             tracking_uri: str | None = None, jobs: int = 1,
             saliency: bool = False) -> dict[str, dict]:
    """Serve `run_id`'s model with scripts/drive.py (plus `server_overrides`) and drive each
    track as `autonomous` says, `jobs` tracks at once (module doc); log `eval/<track>/...`
    metrics and pictures to the run (with `saliency`, also the saliency video). Returns the
    metrics per track label (`<track>-reverse` with `autonomous.reverse`), in the order of
    `tracks`."""

    jobs = setting("jobs", jobs, integer, lambda count: count >= 1, ">= 1")
    if flag("saliency", saliency) and not autonomous.video:
        raise ConfigError("saliency: true draws on each track's center-camera video; "
                          "set video=true too")
    uri = tracking.resolve_tracking_uri(tracking_uri)
    specs = [TrackSpec.parse(text) for text in tracks]
    seeds = [autonomous.seed if spec.seed is None else spec.seed for spec in specs]
    for spec, seed in zip(specs, seeds):  # a bad track fails now, not after the server
        load_track(spec.spec, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    drives = list(zip(specs, seeds))
    groups = [drives[first::jobs] for first in range(min(jobs, len(drives)))]  # round-robin
    if len(groups) == 1:
        return drive_tracks(run_id, drives, autonomous, out, server_overrides, uri,
                            saliency=saliency)
    quiet = dataclasses.replace(autonomous, progress=False)  # parallel progress bars garble
    count = len(groups)
    with ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = pool.map(drive_tracks, [run_id] * count, groups, [quiet] * count, [out] * count,
                         [server_overrides] * count, [uri] * count,
                         [f"drive_server-{index}.log" for index in range(count)],
                         [saliency] * count)
        results = {label: metrics for part in parts for label, metrics in part.items()}
    return {label: results[label] for label in (track_label(spec, autonomous) for spec in specs)}


def evaluate_vectorised(run_id: str, tracks: Sequence[str], autonomous: AutonomousDrive, *,
                        out: Path, set_speed: float, speed_source: str = "set_speed",
                        runtime: str = "torch",
                        tracking_uri: str | None = None) -> dict[str, dict]:
    """`evaluate` without the drive server (module doc): `run_id`'s model (`runtime` torch |
    onnx) drives every track at once as `autonomous` says, in lockstep; the same outputs per
    track (out/<label>/) and eval/<track>/... metrics on the run."""

    uri = tracking.resolve_tracking_uri(tracking_uri)
    specs = [TrackSpec.parse(text) for text in tracks]
    drives = []
    for spec in specs:
        seed = autonomous.seed if spec.seed is None else spec.seed
        drive = dataclasses.replace(autonomous, seed=seed, realtime=False,
                                    out=str(out / track_label(spec, autonomous)),
                                    label=track_label(spec, autonomous), run_id=run_id,
                                    tracking_uri=uri)
        drives.append((drive, drive.spec(spec.spec)))  # a bad track fails now
    policy = ModelPolicy(store.load_model(run_id, uri, runtime), set_speed, speed_source)
    episodes = [episode for _, episode in drives]
    print(f"driving {len(episodes)} track(s) at once in-process (lockstep, "
          f"{default_vectorization(len(episodes))})", flush=True)
    with Episodes(episodes, vectorization=default_vectorization(len(episodes))) as runner:
        started = time.perf_counter()
        results = runner.run(policy)
        wall = time.perf_counter() - started
    metrics = {}
    for (drive, _), result in zip(drives, results):
        folder = Path(drive.out)
        folder.mkdir(parents=True, exist_ok=True)
        result = dataclasses.replace(result, frames=result.steps, wall_s=wall)
        metrics[drive.label] = drive.report(result, folder, f"{policy.predictor.source}, "
                                                           f"in-process")
    return metrics


def track_label(spec: TrackSpec, autonomous: AutonomousDrive) -> str:
    """eval/<label>/...: the track's label, `-reverse` when driven the other way round."""
    return spec.label + (REVERSE_SUFFIX if autonomous.reverse else "")


def drive_tracks(run_id: str, drives: Sequence[tuple[TrackSpec, int]], autonomous: AutonomousDrive,
                 out: Path, server_overrides: Sequence[str], uri: str,
                 log_name: str = "drive_server.log", saliency: bool = False) -> dict[str, dict]:
    """One drive.py server for the run's model; each (track, lighting seed) driven against it in
    turn, its outputs in out/<label>/ and its metrics logged to the run."""

    results: dict[str, dict] = {}
    overlay = None
    with drive_server([f"run_id={run_id}", f"tracking_uri={uri}", *server_overrides],
                      out, log_name) as server:
        for spec, seed in drives:
            label = track_label(spec, autonomous)
            drive = dataclasses.replace(
                autonomous, host="127.0.0.1", port=server["port"], seed=seed,
                out=str(out / label), label=label, run_id=run_id, tracking_uri=uri)
            results[label] = drive.run(load_track(spec.spec, seed=seed))
            if saliency:
                overlay = overlay or saliency_overlay(run_id, uri)
                saliency_video(run_id, uri, out / label, label, overlay)
    return results


def saliency_overlay(run_id: str, uri: str) -> Any:
    """The VisualBackProp overlay (`bc.insight.saliency.SaliencyOverlay`) of the run's model."""

    return SaliencyOverlay(store.load_model(run_id, uri))


def saliency_video(run_id: str, uri: str, folder: Path, label: str, overlay: Any) -> Path:
    """`folder`/saliency.mp4 from the drive's `folder`/center.mp4, logged to the run beside it."""

    video = overlay_video(folder / "center.mp4", folder / SALIENCY_VIDEO, overlay)
    tracking.client(uri).log_artifact(run_id, str(video), f"{METRIC_PREFIX}/{label}")
    print(f"wrote {video} (VisualBackProp saliency of the model on the center camera) and "
          f"logged it to MLflow run {run_id}", flush=True)
    return video


def tracks_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Every track's metrics side by side (a column per track), for the terminal."""
    labels = list(results)
    rows = [("metric", *labels)]
    for key, name, fmt in (("stop_reason", "stop reason", "{}"), *TABLE_ROWS):
        if any(key in metrics for metrics in results.values()):
            values = (results[label].get(key) for label in labels)
            rows.append((name, *("-" if value is None else fmt.format(value) for value in values)))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = [" | ".join([row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width
                                                      in zip(row[1:], widths[1:])]) for row in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])
