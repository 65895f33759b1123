"""Config groups to objects, every failure a one-line `ConfigError` naming its field.

Checking a value by building the object it configures keeps the checks where the objects
are (torch, Lightning, bc's own classes) instead of in a list written a second time here.
Two things a build cannot see are added: numbers the target annotates as numbers must be
numbers (`data.val_fraction=abc` is named instead of failing inside `float()`), and errors
that only show when an object runs (`scheduler.T_max=0` divides by zero at its second step)
are provoked on a dummy parameter (`tried_loss`, `tried_optimizer`, `tried_scheduler`).
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import yaml

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from bc.cli import bc_error_in
from bc.cli import CONF_DIR
from bc.errors import ConfigError

T = TypeVar("T")


def instantiate_group(node: DictConfig | None, kind: str) -> list[Any]:
    """Every `_target_` entry of a name -> config mapping (callbacks, loggers)."""
    if node is None:
        return []
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{kind}: expected a mapping of name -> config with _target_, got {node!r}")
    return [build_group(f"{kind}.{name}", item, instantiate) for name, item in node.items()
            if item is not None]


def build_group(group: str, node: Any, make: Callable[[DictConfig], T], required: bool = True) -> T | None:
    """`make(node)`, any failure a `ConfigError` naming the field (see `_field`)."""
    if node is None and not required:
        return None
    if not isinstance(node, DictConfig) or "_target_" not in node:
        choose = "" if "." in group else f" (choose one with {group}=...)"
        raise ConfigError(f"{group}: expected a config with a _target_{choose}, got {node!r}")
    _check_numbers(group, node)
    try:
        return make(node)
    except Exception as error:
        found = bc_error_in(error)
        cause = found or error.__cause__ or error
        message = " ".join(str(cause).split()) or type(cause).__name__
        named = re.match(r"[\w.]+(?=[.:])", message)  # the message names a field itself
        if named and named.group().split(".")[0] in node:
            raise ConfigError(f"{group}.{message}") from error  # e.g. preprocess.height -> model.preprocess.height
        if found is not None or (named and named.group().split(".")[0] == group.split(".")[0]):
            raise (found or ConfigError(message)) from error
        raise ConfigError(f"{_field(group, node, cause, message)}: {message}") from error


def _field(group: str, node: DictConfig, error: BaseException, message: str) -> str:
    """`group.key` for the one key whose name or value the error message mentions (a division
    by zero mentions the keys that are 0), else `group`."""
    def mentioned(key: str, value: Any) -> bool:
        if OmegaConf.is_config(value) or isinstance(value, (dict, list)):
            return False
        if isinstance(error, ZeroDivisionError):
            return not isinstance(value, bool) and value == 0
        tokens = (key, str(value)) if value is not None else (key,)
        return any(re.search(rf"(?<![\w.-]){re.escape(token)}(?!\w|\.\w)", message, re.IGNORECASE)
                   for token in tokens)

    keys = [key for key in node if mentioned(str(key), node.get(key))]
    return f"{group}.{keys[0]}" if len(keys) == 1 else group


def _check_numbers(group: str, node: DictConfig) -> None:
    """Values of arguments that the target annotates as numbers must be (finite) numbers, and
    integers where it takes only integers: `data.val_fraction=abc` is named, not a float() error."""
    try:
        target = get_object(str(node._target_))
        function = target.__init__ if inspect.isclass(target) else target
        hints = typing.get_type_hints(function)
    except Exception:  # no annotations to go by; the object's own checks apply
        return
    for key, hint in hints.items():
        value = node.get(key) if key in node else None
        if value is None or OmegaConf.is_config(value):
            continue
        kinds = {kind for kind in (typing.get_args(hint) or (hint,)) if kind is not type(None)}
        if not kinds or not kinds <= {int, float, _tensor_type()}:
            continue
        integral = kinds <= {int}
        number = not isinstance(value, bool) and isinstance(value, (int, float))
        if not number or not math.isfinite(value) or (integral and not float(value).is_integer()):
            raise ConfigError(f"{group}.{key}: expected {'an integer' if integral else 'a finite number'}, "
                              f"got {value!r}")


def _tensor_type() -> type:
    import torch

    return torch.Tensor


def tried_loss(loss: T) -> T:
    """The criterion, once it gave one finite number for a small batch."""
    import torch

    value = loss(torch.zeros(2, 1), torch.ones(2, 1))
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or not torch.isfinite(value):
        raise ValueError(f"expected a criterion that returns one finite number, got {value!r}")
    return loss


def tried_optimizer(factory: T) -> T:
    """The optimizer partial, once it built and stepped an optimizer over one parameter."""
    import torch

    parameter = torch.nn.Parameter(torch.zeros(1))
    parameter.grad = torch.ones(1)
    factory(params=[parameter]).step()
    return factory


def tried_scheduler(factory: T, optimizer_factory: Callable[..., Any]) -> T:
    """The scheduler partial, once it stepped twice (`T_max=0` divides by zero only then)."""
    import torch
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    optimizer = optimizer_factory(params=[torch.nn.Parameter(torch.zeros(1))])
    scheduler = factory(optimizer=optimizer)
    for _ in range(2):
        optimizer.step()
        scheduler.step(0.0) if isinstance(scheduler, ReduceLROnPlateau) else scheduler.step()
    return factory


# --------------------------------------------------------------------------------------------
# A stored config is data: what it may build.

# The config groups a training config (train.py, each DAgger round) is composed of; their
# `_target_`s in conf/ are everything a stored config may build.
TRAINING_GROUPS = ("augmentation", "callbacks", "data", "logger", "loss", "model", "optimizer",
                   "scheduler", "trainer")
# Targets bc writes into a run's config itself (a DAgger round's callbacks), with their keys.
WRITTEN_BY_BC: dict[str, frozenset[str]] = {"bc.experiments.dagger.WarmStart": frozenset({"_target_"}),
                                             "bc.experiments.dagger.CtrlC": frozenset({"_target_"})}
# Keys Hydra's `instantiate` acts on; a stored config may use one only where conf/ does.
HYDRA_KEYS = frozenset({"_target_", "_partial_", "_args_", "_recursive_", "_convert_"})


def _targets_in(value: Any, found: dict[str, set[str]]) -> None:
    if isinstance(value, Mapping):
        target = value.get("_target_")
        if isinstance(target, str):
            found.setdefault(target, set()).update(HYDRA_KEYS.intersection(value))
        for item in value.values():
            _targets_in(item, found)
    elif isinstance(value, list):
        for item in value:
            _targets_in(item, found)


@functools.lru_cache(maxsize=None)
def buildable_targets(conf_dir: Path = CONF_DIR) -> dict[str, frozenset[str]]:
    """`_target_` -> the Hydra keys used with it, over every option of `TRAINING_GROUPS` in
    conf/ (and `WRITTEN_BY_BC`): what bc's own config groups can build."""
    found: dict[str, set[str]] = {}
    for group in TRAINING_GROUPS:
        for path in sorted((conf_dir / group).glob("*.yaml")):
            _targets_in(yaml.safe_load(path.read_text(encoding="utf-8")), found)
    for target, keys in WRITTEN_BY_BC.items():
        found.setdefault(target, set()).update(keys)
    return {target: frozenset(keys) for target, keys in found.items()}


def check_stored_config(config: Any, source: str) -> None:
    """Refuse a config read from a store (a run's `config.yaml`, a DAgger job's) unless every
    `_target_` in it, at any depth, is one bc's config groups build, with only the Hydra keys
    conf/ uses with it (`_args_` never; `_partial_` where conf/ has it): nothing in it is
    imported or run before this. The `ConfigError` names `source` and the key."""
    if OmegaConf.is_config(config):
        config = OmegaConf.to_container(config, resolve=False)
    allowed = buildable_targets()

    def check(value: Any, where: str) -> None:
        if isinstance(value, Mapping):
            keys = HYDRA_KEYS.intersection(value)
            if keys:
                target = value.get("_target_")
                field = f"{where}._target_" if where else "_target_"
                if "_target_" not in value or not isinstance(target, str) or target not in allowed:
                    shown = repr(target) if "_target_" in value else "no _target_"
                    raise ConfigError(f"{source}: {field}: {shown} is not built by bc's config "
                                      f"groups ({', '.join(TRAINING_GROUPS)}); refused, nothing "
                                      f"was run")
                extra = sorted(keys - allowed[target])
                if extra:
                    raise ConfigError(f"{source}: {where + '.' if where else ''}{extra[0]}: not "
                                      f"allowed with {target} in a stored config; refused, "
                                      f"nothing was run")
            for key, item in value.items():
                check(item, f"{where}.{key}" if where else str(key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                check(item, f"{where}[{index}]")

    check(config, "")
