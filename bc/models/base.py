"""What every driving network shares: its declared input, its outputs, its own normalisation.

A network predicts the normalised steering and, when its config asks for it
(`outputs: [steering, speed]`), a second value: the target speed, the speed the driver drove
at that moment (the log's `speed` column) divided by `SPEED_SCALE_MPH`, so the simulator's
0..30 mph are 0..1 like the steering's -1..1. Column order is `OUTPUTS` order.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, TypeVar

import torch
from torch import nn

from bc.core import udacity
from bc.errors import ConfigError
from bc.core.preprocess import Preprocess

OUTPUTS = ("steering", "speed")  # what a network can predict, in its output columns' order
DEFAULT_OUTPUTS = OUTPUTS[:1]  # steering only: every model saved before speed existed
SPEED_SCALE_MPH = udacity.TOP_SPEED_MPH  # speed target = mph / this (top speed -> 1.0)

Number = TypeVar("Number")


def check_outputs(outputs: Any, field: str = "outputs") -> tuple[str, ...]:
    """The outputs as a tuple: `[steering]` or `[steering, speed]`, else a `ConfigError`."""
    choices = [list(OUTPUTS[:count]) for count in range(1, len(OUTPUTS) + 1)]
    if isinstance(outputs, str) or not isinstance(outputs, Sequence) \
            or list(outputs) not in choices:
        shown = " or ".join(f"[{', '.join(choice)}]" for choice in choices)
        raise ConfigError(f"{field}: expected {shown}, got {outputs!r}")
    return tuple(outputs)


def speed_to_target(mph: Number) -> Number:
    """A speed in mph as the network's speed output (array, tensor or number)."""
    return mph / SPEED_SCALE_MPH  # type: ignore[operator]


def target_to_speed(target: Number) -> Number:
    """The network's speed output in mph."""
    return target * SPEED_SCALE_MPH  # type: ignore[operator]


class SteeringModel(nn.Module):
    """Base class: a network declares the preprocessing it expects (crop, size, colour) and
    what it predicts (`outputs`, see the module doc).

    Input: float tensor N x 3 x H x W with values 0..255 (see `bc.core.preprocess.to_tensor`);
    output: N x len(outputs): normalised steering in [-1, 1] (not clamped: the drive server
    clamps), then the normalised target speed if asked for.
    """

    def __init__(self, preprocess: Preprocess | Mapping[str, Any],
                 outputs: Sequence[str] = DEFAULT_OUTPUTS) -> None:
        super().__init__()
        if not isinstance(preprocess, Preprocess):
            preprocess = Preprocess.from_dict(preprocess)
        self.preprocess_spec = preprocess
        self.outputs = check_outputs(outputs)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.preprocess_spec.input_shape

    @staticmethod
    def normalize(x: torch.Tensor) -> torch.Tensor:
        """0..255 -> -1..1, the normalisation layer of PilotNet and comma.ai's model."""
        return x / 127.5 - 1.0

    def flat_features(self, features: nn.Module) -> int:
        """Size of `features`' flattened output for this model's input shape."""
        with torch.no_grad():
            return int(features(torch.zeros(1, *self.input_shape)).numel())
