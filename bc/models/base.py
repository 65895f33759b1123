"""What every steering network shares: its declared input and its own normalisation."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from bc.preprocess import Preprocess


class SteeringModel(nn.Module):
    """Base class: a network declares the preprocessing it expects (crop, size, colour).

    Input: float tensor N x 3 x H x W with values 0..255 (see `bc.preprocess.to_tensor`);
    output: N x 1 normalised steering in [-1, 1] (not clamped: the drive server clamps).
    """

    def __init__(self, preprocess: Preprocess | Mapping[str, Any]) -> None:
        super().__init__()
        if not isinstance(preprocess, Preprocess):
            preprocess = Preprocess.from_dict(preprocess)
        self.preprocess_spec = preprocess

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
