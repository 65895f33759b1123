"""Steering regression losses by config name (kept free of Lightning so configs check fast)."""

from __future__ import annotations

from torch import nn

LOSSES = ("mse", "huber")


def make_loss(loss: str, huber_delta: float = 1.0) -> nn.Module:
    """The criterion named by the config's `loss` field: MSE, or Huber (robust to noisy labels)."""
    if loss not in LOSSES:
        raise ValueError(f"loss: expected one of {list(LOSSES)}, got {loss!r}")
    if loss == "huber":
        if not huber_delta > 0:
            raise ValueError(f"huber_delta: expected > 0, got {huber_delta!r}")
        return nn.HuberLoss(delta=float(huber_delta))
    return nn.MSELoss()
