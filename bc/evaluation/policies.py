"""Who drives the cars of the episode loop (bc/evaluation/episodes.py): a model, batched, as
scripts/drive.py would answer, or DAgger's mixture of it and the expert
(bc.evaluation.expert.ExpertPolicy).

`ModelPolicy` is drive.py's reply without the socket, for N cars at once: the frame a car
would send (the Unity JPEG from `info["jpeg"]`, else the rendered RGB), decoded and
preprocessed by the model's own `Predictor` (its `Preprocess`, the same object drive.py
serves), one forward pass for the N frames (torch or ONNX Runtime, whichever the model was
loaded with), then per car its own drive server (`DriveServer.steer`: clamping and the PI
speed control on the speed Unity would send, N4-rounded) -- so one car's batch-1 reply is
exactly drive.py's.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from bc.core import udacity
from bc.evaluation.expert import ExpertPolicy
from bc.sim.car import MPS_PER_MPH
from bc.drive.controller import SpeedController
from bc.drive.server import DriveServer
from bc.inference.predictor import Predictor

if TYPE_CHECKING:  # pragma: no cover
    from bc.evaluation.episodes import EpisodeSpec
    from bc.inference.artifact import LoadedModel

MAX_MESSAGE_BYTES = 1048576  # conf/drive.yaml's default


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Forward passes on one intra-op thread (bc/inference/predictor.py explains why: on shared
    cores a second thread stalls every pass; the envs' workers use the other core), the
    caller's setting restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def telemetry_speed(info: Mapping[str, Any]) -> float:
    """The speed (mph) a drive server reads from this state's telemetry (Unity's N4 string)."""
    return float(udacity.format_n4(info["speed"] / MPS_PER_MPH))


class ModelPolicy:
    """A model driving N cars in one forward pass per step (module doc); `set_speed` and
    `speed_source` as in scripts/drive.py."""

    def __init__(self, model: "LoadedModel", set_speed: float = 20.0,
                 speed_source: str = "set_speed") -> None:

        self.predictor = Predictor(model)
        self.set_speed, self.speed_source = set_speed, speed_source
        self.servers: dict[int, Any] = {}
        self.server(-1)  # a model without the speed output speed_source=model needs fails now

    @property
    def predicts_speed(self) -> bool:
        return self.predictor.predicts_speed

    def server(self, slot: int) -> Any:
        """The drive server answering the car in `slot` (its own speed controller)."""
        if slot not in self.servers:

            self.servers[slot] = DriveServer(
                self.predictor, SpeedController(set_speed=self.set_speed,
                                                speed_source=self.speed_source),
                MAX_MESSAGE_BYTES)
        return self.servers[slot]

    def reset(self, slot: int, spec: "EpisodeSpec | None" = None) -> None:
        self.server(slot).on_connect()  # a new car: the speed controller forgets its integral

    def intervened(self, slot: int) -> None:
        """Nothing: a drive server is not told (Unity does not say either)."""

    def frame(self, observation: np.ndarray, info: Mapping[str, Any]) -> np.ndarray:
        """The RGB frame the model sees: the Unity JPEG decoded as drive.py decodes it."""
        jpeg = info.get("jpeg")
        return observation if jpeg is None else self.predictor.decode(jpeg)

    def act(self, slots: Sequence[int], observations: np.ndarray,
            infos: Sequence[Mapping[str, Any]]) -> np.ndarray:
        frames = [self.frame(observation, info) for observation, info in zip(observations, infos)]
        with one_torch_thread():
            predictions = self.predictor.predict_batch(frames)
        actions = np.zeros((len(slots), 2))
        for row, (slot, info, prediction) in enumerate(zip(slots, infos, predictions)):
            server, speed = self.server(slot), telemetry_speed(info)
            reply = (server.bad_input(str(prediction), speed)
                     if isinstance(prediction, Exception) else server.steer(prediction, speed))
            actions[row] = float(reply.data["steering_angle"]), float(reply.data["throttle"])
        return actions


class MixedPolicy:
    """DAgger's driver: the learner drives, the expert's clean action is executed instead with
    probability `beta` (drawn from `rng`), and the expert labels every state
    (`expert.labels`); `learner_actions[slot]` is what the learner answered."""

    def __init__(self, learner: ModelPolicy, expert: ExpertPolicy, beta: float,
                 rng: random.Random) -> None:
        self.learner, self.expert, self.beta, self.rng = learner, expert, float(beta), rng
        self.learner_actions: dict[int, tuple[float, float]] = {}

    def reset(self, slot: int, spec: "EpisodeSpec") -> None:
        self.learner.reset(slot, spec)
        self.expert.reset(slot, spec)

    def intervened(self, slot: int) -> None:
        self.learner.intervened(slot)
        self.expert.intervened(slot)

    def act(self, slots: Sequence[int], observations: np.ndarray,
            infos: Sequence[Mapping[str, Any]]) -> np.ndarray:
        actions = self.learner.act(slots, observations, infos)
        for row, (slot, info) in enumerate(zip(slots, infos)):
            self.learner_actions[slot] = (float(actions[row, 0]), float(actions[row, 1]))
            steering, throttle, _ = self.expert.label(slot, info)
            if self.beta > 0 and self.rng.random() < self.beta:
                actions[row] = steering, throttle
        return actions
