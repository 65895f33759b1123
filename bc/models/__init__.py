"""Steering networks: plain `nn.Module`s that map a preprocessed frame to one steering value."""

from bc.models.base import SteeringModel

__all__ = ["SteeringModel"]
