"""The model artifact: what a trained bc model is on disk, and the runtimes that serve it.

A model folder (``model/`` in its MLflow run) holds:

- ``weights.pt``: the ``state_dict`` (loaded with ``weights_only=True``: no code unpickled),
- ``model.yaml``: the model's Hydra config, including its preprocessing spec,
- ``model.ts``: a TorchScript export with the preprocessing spec and the output names
  (``[steering]`` or ``[steering, speed]``) embedded, for use outside this package,
- ``model.onnx``: the same as ONNX, spec and outputs as metadata (`bc.inference.onnx_export`).

Rebuilding from config + weights is portable and safe: ``_target_`` must name a class in
the ``bc.models.MODELS`` registry and its arguments must be plain values (``build_model``).
Loading never unpickles code and never imports anything outside ``bc.models``.

`RUNTIMES` is the registry of what serves a model folder (``torch``: the rebuilt network;
``onnx``: ONNX Runtime on ``model.onnx``); `load_exported` serves an exported file by its
suffix. Adding a runtime is one loader here (and its exporter in `save_model`).
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import yaml

from bc.core.preprocess import Preprocess
from bc.errors import BcError, ConfigError
from bc.models import build_model as build_registered
from bc.models.base import DEFAULT_OUTPUTS, check_outputs
from bc.inference.onnx_export import ONNX_FILE, export_onnx, open_onnx
from bc.tracking import TrackingError

if TYPE_CHECKING:
    import torch

MODEL_ARTIFACT_DIR = "model"
WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "model.yaml"
TORCHSCRIPT_FILE = "model.ts"
SPEC_EXTRA_FILE = "preprocess.json"
OUTPUTS_EXTRA_FILE = "outputs.json"


@contextmanager
def _quiet_torchscript():
    """TorchScript is deprecated in favour of torch.export, but it is the export that loads at
    any batch size without our code; silence exactly that warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*is deprecated", category=DeprecationWarning)
        yield


@dataclass
class LoadedModel:
    """A network ready for inference together with the preprocessing it was trained with."""

    net: torch.nn.Module
    spec: Preprocess
    source: str
    outputs: tuple[str, ...] = ("steering",)  # the net's output columns (bc.models.base.OUTPUTS)


def _config_dict(model_config: Mapping[str, Any]) -> dict[str, Any]:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(model_config, DictConfig):
            return OmegaConf.to_container(model_config, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a hard dependency
        pass
    return json.loads(json.dumps(dict(model_config)))


def save_model(model: torch.nn.Module, model_config: Mapping[str, Any], folder: Path) -> Path:
    """Write weights, config and the TorchScript and ONNX exports of ``model`` into ``folder``."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    config = _config_dict(model_config)
    spec: Preprocess = model.preprocess_spec
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    torch.save(state, folder / WEIGHTS_FILE)
    was_training = model.training
    model.eval()
    example = torch.zeros(1, *spec.input_shape)
    with _quiet_torchscript():
        traced = torch.jit.trace(model.cpu(), example)
        torch.jit.save(traced, str(folder / TORCHSCRIPT_FILE),
                       _extra_files={SPEC_EXTRA_FILE: json.dumps(spec.to_dict()),
                                     OUTPUTS_EXTRA_FILE: json.dumps(list(model.outputs))})
    export_onnx(model, spec, model.outputs, folder / ONNX_FILE)
    model.train(was_training)
    return folder


def build_model(config: Mapping[str, Any]) -> torch.nn.Module:
    """A registered ``bc.models`` network from plain config values (see ``bc.models.build_model``)."""
    return build_registered(config)


def _load_torch(folder: Path, source: str) -> LoadedModel:
    """The network rebuilt from ``model.yaml`` and ``weights.pt`` (no code is unpickled)."""
    import torch  # deliberately lazy: the ONNX runtime serves without importing torch

    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise TrackingError(f"model folder {folder} has no {path.name}")
    config = _read_model_config(config_path)
    try:
        net = build_model(config)
    except BcError as error:
        raise TrackingError(f"{config_path}: {error}") from None
    except Exception as error:  # e.g. width=-1: the class's own checks (torch's RuntimeError)
        raise TrackingError(f"{config_path}: model: {_one_line(error)}") from None
    try:  # weights_only: tensors and plain containers only, no pickled code
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping):
            raise TypeError(f"expected a state dict (name -> tensor), got {type(state).__name__}")
        net.load_state_dict(state)
    except Exception as error:  # truncated, not torch's format, pickled code, another model's
        raise TrackingError(f"{weights_path}: not the weights of this {CONFIG_FILE}'s model "
                            f"({_one_line(error)})") from None
    net.eval()
    return LoadedModel(net=net, spec=net.preprocess_spec, source=source,
                       outputs=net.outputs)


def _load_onnx(folder: Path, source: str) -> LoadedModel:
    """``model.onnx`` in ONNX Runtime."""
    if not (folder / ONNX_FILE).is_file():
        raise TrackingError(f"model folder {folder} has no {ONNX_FILE} (saved before ONNX export "
                            f"existed? serve it with runtime=torch)")
    return load_onnx(folder / ONNX_FILE, source=source)


# What serves a model folder: the registry of runtimes (``runtime=`` of drive.py, evaluate.py).
RUNTIMES: dict[str, Callable[[Path, str], LoadedModel]] = {"torch": _load_torch, "onnx": _load_onnx}


def check_runtime(runtime: Any) -> str:
    """``runtime``: a key of `RUNTIMES`, else a `ConfigError` naming the field."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime: expected one of {', '.join(RUNTIMES)}, got {runtime!r}")
    return runtime


def load_model_folder(folder: Path, source: str | None = None, runtime: str = "torch") -> LoadedModel:
    """Load a model saved by ``save_model`` with the runtime ``runtime`` (`RUNTIMES`)."""
    return RUNTIMES[check_runtime(runtime)](folder, source or str(folder))


def load_onnx(path: str | Path, source: str | None = None, num_threads: int = 1) -> LoadedModel:
    """An exported ``model.onnx`` served by ONNX Runtime, its preprocessing and outputs read
    from the file's metadata."""
    net, spec, outputs = open_onnx(path, num_threads)
    return LoadedModel(net=net, spec=spec, source=source or str(path), outputs=outputs)


MAX_ERROR_DETAIL = 300  # characters of a library's error message quoted in ours


def _one_line(error: BaseException) -> str:
    """A library error as one line: its type when it says nothing, cut at `MAX_ERROR_DETAIL`."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= MAX_ERROR_DETAIL else text[:MAX_ERROR_DETAIL] + "..."


def _read_model_config(path: Path) -> Any:
    """A model.yaml's plain values (safe YAML: no tags that build objects), or `TrackingError`."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise TrackingError(f"{path}: not UTF-8 text ({_one_line(error)})") from None
    except yaml.YAMLError as error:
        raise TrackingError(f"{path}: not a plain YAML model config ({_one_line(error)})") from None
    except OSError as error:
        raise TrackingError(f"{path}: cannot read it ({error.strerror or error})") from None


def load_exported(path: str | Path, runtime: str | None = None) -> LoadedModel:
    """Load a TorchScript export (``model.ts``) or an ONNX one (``model.onnx``, served with
    ONNX Runtime) and the preprocessing spec and outputs embedded in it. ``runtime``, when
    given, must match the file."""

    
    path = Path(path)
    if not path.is_file():
        raise TrackingError(f"model file {path} does not exist")
    file_runtime = "onnx" if path.suffix == ".onnx" else "torch"
    if runtime is not None and check_runtime(runtime) != file_runtime:
        raise ConfigError(f"runtime={runtime} does not serve {path.name} (a {file_runtime} model): "
                          f"use runtime={file_runtime}, or the model's "
                          f".{'ts' if runtime == 'torch' else 'onnx'} file")
    if file_runtime == "onnx":
        return load_onnx(path)
    return _load_torchscript(path)


def _load_torchscript(path: Path) -> LoadedModel:
    """A TorchScript export with its embedded preprocessing spec and outputs."""
    import torch  # deliberately lazy, as in _load_torch

    extra = {SPEC_EXTRA_FILE: "", OUTPUTS_EXTRA_FILE: ""}
    try:
        with _quiet_torchscript():
            net = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as error:  # RuntimeError mostly; a damaged archive can raise others
        raise TrackingError(f"{path} is not a TorchScript model exported by bc: "
                            f"{_one_line(error)}") from None
    if not extra[SPEC_EXTRA_FILE]:
        raise TrackingError(f"{path} has no embedded {SPEC_EXTRA_FILE}: not exported by bc")
    try:
        spec = Preprocess.from_dict(json.loads(extra[SPEC_EXTRA_FILE]))
    except (BcError, ValueError, TypeError, AttributeError) as error:
        raise TrackingError(f"{path}: {SPEC_EXTRA_FILE}: {_one_line(error)}") from None
    outputs = DEFAULT_OUTPUTS  # exported before the speed output existed
    if extra[OUTPUTS_EXTRA_FILE]:
        try:
            outputs = check_outputs(json.loads(extra[OUTPUTS_EXTRA_FILE]),
                                    f"{path}: {OUTPUTS_EXTRA_FILE}")
        except (BcError, ValueError) as error:
            raise TrackingError(str(error)) from None
    net.eval()
    return LoadedModel(net=net, spec=spec, source=str(path), outputs=outputs)
