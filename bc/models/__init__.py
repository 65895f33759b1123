"""Driving networks: plain `nn.Module`s that map a preprocessed frame to the steering (and, with
`outputs: [steering, speed]`, the target speed; see `bc.models.base`).

`MODELS` is the explicit registry of the classes a config may name, and `build_model` the
one way a model is built from config, at training and when a run's stored `model.yaml` is
loaded: the class is looked up (never imported by its name) and called with plain values
only, so a model config from a shared tracking store cannot run code.
"""

from __future__ import annotations

from typing import Any, Mapping

from bc.errors import ConfigError
from bc.models.base import OUTPUTS, SteeringModel
from bc.models.commaai import CommaAI
from bc.models.nvidia import PilotNet
from bc.models.small import SmallNet

MODELS: dict[str, type[SteeringModel]] = {
    f"{cls.__module__}.{cls.__qualname__}": cls for cls in (PilotNet, CommaAI, SmallNet)
}

_PLAIN_SCALARS = (str, int, float, bool, type(None))


def _check_plain(value: Any, where: str) -> None:
    """Refuse anything but numbers, strings, bools, None and lists / string-keyed dicts of
    them, and any Hydra key (`_target_`, `_partial_`, `_args_`, ...) at any depth."""
    if isinstance(value, _PLAIN_SCALARS):
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or key.startswith("_"):
                raise ConfigError(f"{where}.{key}: model arguments are plain values; "
                                  f"{key!r} is not allowed")
            _check_plain(item, f"{where}.{key}")
        return
    raise ConfigError(f"{where}: expected a plain value (number, string, bool, null, list, "
                      f"mapping), got {type(value).__name__}")


def build_model(config: Mapping[str, Any]) -> SteeringModel:
    """The registered model `config["_target_"]` names, called with the config's other keys."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(config):
            config = OmegaConf.to_container(config, resolve=True)  # type: ignore[assignment]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if not isinstance(config, Mapping):
        raise ConfigError(f"model: expected a mapping with a _target_, got {type(config).__name__}")
    target = config.get("_target_")
    if target not in MODELS:
        raise ConfigError(f"model._target_: {target!r} is not a registered model; "
                          f"expected one of {sorted(MODELS)}")
    arguments = {key: value for key, value in config.items() if key != "_target_"}
    _check_plain(arguments, "model")
    try:
        return MODELS[target](**arguments)
    except TypeError as error:  # an unknown or missing argument
        raise ConfigError(f"model: {target}: {error}") from None


__all__ = ["MODELS", "OUTPUTS", "SteeringModel", "build_model"]
