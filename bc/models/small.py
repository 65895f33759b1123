"""A small, fast network for quick experiments and tests (trains in seconds on a CPU)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from bc.models.base import DEFAULT_OUTPUTS, SteeringModel
from bc.core.preprocess import Preprocess


class SmallNet(SteeringModel):
    """Three strided 3x3 convs and a two-layer head; `width` scales the channel counts."""

    def __init__(self, preprocess: Preprocess | Mapping[str, Any], width: int = 8,
                 hidden: int = 32, outputs: Sequence[str] = DEFAULT_OUTPUTS) -> None:
        super().__init__(preprocess, outputs)
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2), nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2), nn.ReLU(),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(self.flat_features(self.features), hidden), nn.ReLU(),
            nn.Linear(hidden, len(self.outputs)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.normalize(x)))
