"""Config groups to objects, every failure a one-line `ConfigError` naming its field.

Checking a value by building the object it configures keeps the checks where the objects
are (torch, Lightning, bc's own classes) instead of in a list written a second time here.
Two things a build cannot see are added: numbers the target annotates as numbers must be
numbers (`data.val_fraction=abc` is named instead of failing inside `float()`), and errors
that only show when an object runs (`scheduler.T_max=0` divides by zero at its second step)
are provoked on a dummy parameter (`tried_loss`, `tried_optimizer`, `tried_scheduler`).
"""

from __future__ import annotations

import inspect
import math
import re
import typing
from typing import Any, Callable, TypeVar

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from bc.cli import bc_error_in
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
