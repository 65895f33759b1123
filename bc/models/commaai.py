"""comma.ai's steering model (research repo, 2016): three convs, one wide FC layer."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from bc.models.base import DEFAULT_OUTPUTS, SteeringModel
from bc.core.preprocess import Preprocess


class CommaAI(SteeringModel):
    """Conv 16 8x8/4, 32 5x5/2, 64 5x5/2, dropout, FC 512, dropout, FC outputs (ELU throughout)."""

    def __init__(self, preprocess: Preprocess | Mapping[str, Any], dropout: float = 0.2,
                 hidden_dropout: float = 0.5, outputs: Sequence[str] = DEFAULT_OUTPUTS) -> None:
        super().__init__(preprocess, outputs)
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 8, stride=4, padding=2), nn.ELU(),
            nn.Conv2d(16, 32, 5, stride=2, padding=2), nn.ELU(),
            nn.Conv2d(32, 64, 5, stride=2, padding=2),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.ELU(),
            nn.Linear(self.flat_features(self.features), 512),
            nn.Dropout(hidden_dropout), nn.ELU(),
            nn.Linear(512, len(self.outputs)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.normalize(x)))
