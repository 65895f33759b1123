"""NVIDIA PilotNet (Bojarski et al., 2016, "End to End Learning for Self-Driving Cars")."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from bc.models.base import DEFAULT_OUTPUTS, SteeringModel
from bc.core.preprocess import Preprocess


class PilotNet(SteeringModel):
    """Normalisation, conv 24/36/48 5x5 stride 2, conv 64/64 3x3, FC 100/50/10/outputs.

    The paper feeds 66x200 YUV frames; that is this model's default preprocessing.
    """

    def __init__(self, preprocess: Preprocess | Mapping[str, Any], dropout: float = 0.0,
                 outputs: Sequence[str] = DEFAULT_OUTPUTS) -> None:
        super().__init__(preprocess, outputs)
        self.features = nn.Sequential(
            nn.Conv2d(3, 24, 5, stride=2), nn.ELU(),
            nn.Conv2d(24, 36, 5, stride=2), nn.ELU(),
            nn.Conv2d(36, 48, 5, stride=2), nn.ELU(),
            nn.Conv2d(48, 64, 3), nn.ELU(),
            nn.Conv2d(64, 64, 3), nn.ELU(),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(self.flat_features(self.features), 100), nn.ELU(),
            nn.Linear(100, 50), nn.ELU(),
            nn.Linear(50, 10), nn.ELU(),
            nn.Linear(10, len(self.outputs)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.normalize(x)))
