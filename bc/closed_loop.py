"""Closed-loop driving in-process, and the Lightning callback that drives during training.

`Learner` is what scripts/drive.py serves, without the socket: the model's `Predictor` inside a
`bc.drive.server.DriveServer` (the same telemetry handling, clamping and PI speed control), fed
the center camera as the simulator sends it (a JPEG at Unity's quality, base64). `rollout`
drives it in a `DrivingEnv` in lockstep (one reply per `dt` step: deterministic) and can mix in
the expert (`beta`: the probability that the expert's action is executed at a step) and hand
every visited state with the expert's label to a callback: DAgger's data collection
(bc/dagger.py) and the closed-loop score below are the same loop.

`ClosedLoopEval` (conf/callbacks/default.yaml `closed_loop`, off by default: every_n_epochs=0)
drives the current weights every N epochs, after validation, on its `tracks` (short episodes:
`laps` each from a standing start, stopped at `max_time_factor` x the expert's time) and logs
per track `eval/<track>/{score,autonomy,progress,pace_pct,mean_abs_cte,interventions}` and

    eval/score = mean over the tracks of
                 autonomy (%) x completion - CTE_WEIGHT x mean |CTE| / half road width

where completion = min(1, laps driven / laps asked) within the time limit, so 100 is the most
(every lap done, no intervention, on the centreline) and a model that leaves the road, stalls or
weaves scores less. A `ModelCheckpoint` with `monitor: eval/score, mode: max` then keeps the
epoch that drove best, and bc.mlflow_run logs that checkpoint as the run's model:

    python scripts/train.py callbacks.closed_loop.every_n_epochs=1 \\
        callbacks.model_checkpoint.monitor=eval/score callbacks.model_checkpoint.mode=max

Cost: about 2.5 ms per simulated step on one core (render + JPEG + forward pass of PilotNet),
~1 s per half lap of lake, plus ~1 s of renderer setup per track once.
"""

from __future__ import annotations

import base64
import copy
import logging
import math
import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from pytorch_lightning import Callback, LightningModule, Trainer

from bc import udacity
from bc.errors import ConfigError
from bc.settings import flag, integer, number, setting
from bc.sim.car import MPS_PER_MPH

if TYPE_CHECKING:  # pragma: no cover
    from bc.sim.env import DrivingEnv
    from bc.sim.expert import Expert
    from bc.evaluation.metrics import DriveResult
    from bc.tracking import LoadedModel

log = logging.getLogger(__name__)

SCORE = "eval/score"
CTE_WEIGHT = 10.0  # score points per half road width of mean |CTE|
MAX_MESSAGE_BYTES = 1048576  # conf/drive.yaml's default
STALL_TIMEOUT_S = 10.0  # simulated seconds standing still before an episode gives up

# (state info, executed action, learner's action, expert's label (steering, throttle, speed mph))
StepCallback = Callable[[Mapping[str, Any], tuple[float, float], tuple[float, float],
                         tuple[float, float, float]], None]


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Batch-1 forward passes on one intra-op thread (bc/drive/predictor.py explains why: on
    shared cores a second thread stalls every pass), the training's setting restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Learner:
    """The drive server's reply to a frame, in-process (module doc): `act(rgb, info)`."""

    def __init__(self, model: "LoadedModel", set_speed: float = 20.0,
                 speed_source: str = "set_speed") -> None:
        from bc.drive.controller import SpeedController
        from bc.drive.predictor import Predictor
        from bc.drive.server import DriveServer

        self.predictor = Predictor(model)
        self.server = DriveServer(self.predictor, SpeedController(set_speed=set_speed,
                                                                  speed_source=speed_source),
                                  MAX_MESSAGE_BYTES)

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.predictor.frame_size

    def reset(self) -> None:
        """A new car: the speed controller forgets its integral (as on a new connection)."""
        self.server.on_connect()

    def act(self, rgb: np.ndarray, info: Mapping[str, Any]) -> tuple[float, float]:
        """(steering, throttle) the drive server answers to this center-camera frame."""
        from bc.images import encode_jpeg

        jpeg = encode_jpeg(rgb, udacity.UNITY_JPEG_QUALITY)
        steering_deg = info["steering"] * udacity.MAX_STEERING_DEG
        telemetry = {"steering_angle": udacity.format_n4(steering_deg),
                     "throttle": udacity.format_n4(max(0.0, info["throttle"])),
                     "speed": udacity.format_n4(info["speed"] / MPS_PER_MPH),
                     "image": base64.b64encode(jpeg).decode("ascii")}
        reply = self.server.handle_telemetry(telemetry)
        return float(reply.data["steering_angle"]), float(reply.data["throttle"])


def rollout(env: "DrivingEnv", learner: Learner, max_steps: int, *, expert: "Expert | None" = None,
            beta: float = 0.0, rng: random.Random | None = None,
            on_step: StepCallback | None = None, label_speed: str = "measured") -> "DriveResult":
    """Drive `env` (reset here) with `learner` until its laps are done, `max_steps` steps, or the
    car stands still for STALL_TIMEOUT_S. With `expert`, each step the expert's clean action is
    executed with probability `beta` (else the learner's), and `on_step` sees every visited state
    (its info, with `frames` when the env renders cameras) with the expert's label: steering,
    throttle and a speed (mph): its planned speed there (`label_speed="target"`, the label of a
    speed-predicting model) or the car's speed (`"measured"`, what a recording logs)."""
    from bc.sim.autonomous import Episode
    from bc.evaluation.metrics import DriveResult

    if on_step is not None and expert is None:
        raise ValueError("rollout: on_step needs the expert that labels the states")
    rng = rng or random.Random(0)
    learner.reset()
    if expert is not None:
        expert.reset()
    episode = Episode(env, max_steps, max(1, math.ceil(STALL_TIMEOUT_S / env.dt)))
    with one_torch_thread():
        _drive(episode, env, learner, expert, beta, rng, on_step, label_speed)
    return DriveResult.from_steps(env, episode.infos, env.laps or 0.0,
                                  stop_reason=episode.stop_reason)


def _drive(episode: Any, env: "DrivingEnv", learner: Learner, expert: "Expert | None",
           beta: float, rng: random.Random, on_step: StepCallback | None,
           label_speed: str) -> None:
    while episode.stop_reason is None:
        info = episode.info
        action = learner.act(episode.frame, info)
        executed = action
        if expert is not None:
            steering, throttle = expert.act(env.state)
            speed = (expert.target_speed(info["s"]) / MPS_PER_MPH if label_speed == "target"
                     else info["speed"] / MPS_PER_MPH)
            if beta > 0 and rng.random() < beta:
                executed = (steering, throttle)
            if on_step is not None:
                on_step(info, executed, action, (steering, throttle, speed))
        episode.step(executed)
        if expert is not None and episode.info["off_road"]:
            expert.reset()  # the safety driver moved the car: the expert's integral is stale


# --------------------------------------------------------------------------------------------
# The score


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
        from bc.evaluate import REVERSE_SUFFIX, TrackSpec

        if self.label:
            return self.label
        return TrackSpec.parse(self.track).label + (REVERSE_SUFFIX if self.reverse else "")

    def env(self, cameras: Sequence[str] = ()) -> "DrivingEnv":
        from bc.sim.env import DrivingEnv

        return DrivingEnv(self.track, self.lighting, reverse=self.reverse, laps=self.laps,
                          cameras=tuple(cameras))


def track_score(metrics: Mapping[str, Any], laps: float, half_width: float) -> float:
    """One track's part of eval/score (module doc)."""
    completion = min(1.0, float(metrics["progress_laps"]) / laps)
    return float(metrics["autonomy"]) * completion - CTE_WEIGHT * float(
        metrics["mean_abs_cte"]) / half_width


class Scorer:
    """Drives a model on `tracks` and scores it (module doc); the expert's reference drives and
    the envs (their renderers) are built once and reused."""

    def __init__(self, tracks: Sequence[Any], max_time_factor: float = 2.0) -> None:
        self.tracks = [EvalTrack.of(track, f"tracks[{index}]")
                       for index, track in enumerate(tracks)]
        if not self.tracks:
            raise ConfigError("tracks: expected at least one track to drive")
        self.max_time_factor = setting("max_time_factor", max_time_factor, number,
                                       lambda value: value > 1, "a number > 1")
        self._envs: dict[EvalTrack, Any] = {}
        self._experts: dict[EvalTrack, Any] = {}

    def env(self, track: EvalTrack) -> "DrivingEnv":
        if track not in self._envs:
            self._envs[track] = track.env()
        return self._envs[track]

    def expert(self, track: EvalTrack) -> "DriveResult":
        from bc.evaluation.metrics import expert_drive

        if track not in self._experts:
            self._experts[track] = expert_drive(track.track, track.laps, seed=track.lighting,
                                                reverse=track.reverse)
        return self._experts[track]

    def score(self, learner: Learner) -> dict[str, dict[str, float]]:
        """{track name: metrics with `score`} and SCORE: {"score": the mean} for `learner`."""
        from bc.evaluation.metrics import compute_metrics, relative_pace

        results: dict[str, dict[str, float]] = {}
        for track in self.tracks:
            env, expert = self.env(track), self.expert(track)
            drive = rollout(env, learner, math.ceil(self.max_time_factor * expert.steps))
            metrics = compute_metrics(drive)
            kept = {key: float(metrics[key]) for key in ("autonomy", "progress_laps",
                                                         "mean_abs_cte", "interventions")}
            kept["pace_pct"] = relative_pace(drive, expert)
            kept["score"] = track_score(metrics, track.laps, env.track.width / 2)
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


# --------------------------------------------------------------------------------------------
# The callback


class ClosedLoopEval(Callback):
    """Drive the current weights every `every_n_epochs` epochs after validation and log
    eval/<track>/* and eval/score (module doc). `every_n_epochs: 0` is off. The car's speed
    comes from `speed_source` / `set_speed` as in scripts/drive.py."""

    def __init__(self, every_n_epochs: int = 0, tracks: Sequence[Any] = ("lake",),
                 set_speed: float = 20.0, speed_source: str = "set_speed",
                 max_time_factor: float = 2.0) -> None:
        self.every_n_epochs = setting("every_n_epochs", every_n_epochs, integer,
                                      lambda value: value >= 0, "an integer >= 0 (0: off)")
        self.set_speed = setting("set_speed", set_speed, number,
                                 lambda value: 0 < value <= udacity.TOP_SPEED_MPH,
                                 f"a speed in (0, {udacity.TOP_SPEED_MPH}] mph")
        self.speed_source = setting("speed_source", speed_source, str,
                                    lambda value: value in ("set_speed", "bends", "model"),
                                    "set_speed, bends or model")
        self.scorer = Scorer(list(tracks), max_time_factor) if self.every_n_epochs else None
        self.history: list[tuple[int, float]] = []  # (epoch, eval/score)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not self.every_n_epochs:
            return
        width, height = pl_module.net.preprocess_spec.frame_size
        if (width, height) != (udacity.FRAME_WIDTH, udacity.FRAME_HEIGHT):
            raise ConfigError(f"callbacks.closed_loop: the simulator renders "
                              f"{udacity.FRAME_WIDTH}x{udacity.FRAME_HEIGHT} frames, this model "
                              f"takes {width}x{height}; turn it off (every_n_epochs=0)")
        if self.speed_source == "model" and "speed" not in pl_module.net.outputs:
            raise ConfigError("callbacks.closed_loop.speed_source: model needs a model with a "
                              "speed output (model.outputs=[steering,speed])")

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (not self.every_n_epochs or trainer.sanity_checking
                or (trainer.current_epoch + 1) % self.every_n_epochs):
            return
        from bc.tracking import LoadedModel

        net = pl_module.net
        if next(net.parameters()).device.type != "cpu":
            net = copy.deepcopy(net).cpu()
        learner = Learner(LoadedModel(net=net, spec=net.preprocess_spec,
                                      source=f"epoch {trainer.current_epoch}",
                                      outputs=tuple(net.outputs)),
                          self.set_speed, self.speed_source)
        results = self.scorer.score(learner)
        metrics = eval_metrics(results)
        for key, value in metrics.items():
            pl_module.log(key, value, prog_bar=key == SCORE, on_epoch=True)
        self.history.append((trainer.current_epoch, metrics[SCORE]))
        log.info("epoch %d closed loop: %s", trainer.current_epoch,
                 ", ".join(f"{name} {item['score']:.1f}" for name, item in results.items()))
