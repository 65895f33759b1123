"""ONNX: the model as ``model.onnx`` beside its TorchScript, and serving it with ONNX Runtime.

The export carries what the TorchScript carries (the preprocessing spec and the output names,
as ONNX metadata), takes any batch size, and computes what the network computes (within 1e-5,
tests/test_onnx.py). `OnnxNet` runs it: called like the torch network on a float
N x 3 x H x W tensor, so `bc.inference.predictor.Predictor` serves either (``drive.py runtime=onnx``).
onnxruntime is imported only when an ONNX model is loaded.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from bc.core.preprocess import Preprocess
from bc.errors import BcError
from bc.models.base import check_outputs

if TYPE_CHECKING:  # pragma: no cover
    import torch

ONNX_FILE = "model.onnx"
INPUT_NAME, OUTPUT_NAME = "frames", "outputs"
SPEC_KEY, OUTPUTS_KEY = "bc.core.preprocess", "bc.outputs"  # metadata_props keys
OPSET = 17


class OnnxError(BcError, RuntimeError):
    """An ONNX file that cannot be served: the message names it and why."""


def export_onnx(net: "torch.nn.Module", spec: "Preprocess", outputs: Sequence[str], path: Path) -> Path:
    """Write ``net`` (in eval mode) to ``path`` with a dynamic batch axis and the spec and
    outputs as metadata. TorchScript-based exporter: a fraction of a second per model, where
    the torch.export one takes seconds on every training run; silence exactly its deprecation."""
    import onnx
    import torch

    example = torch.zeros(1, *spec.input_shape)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
        torch.onnx.export(net, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    model = onnx.load(str(path))
    for key, value in ((SPEC_KEY, json.dumps(spec.to_dict())), (OUTPUTS_KEY, json.dumps(list(outputs)))):
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


class OnnxNet:
    """An ONNX Runtime session called like the torch network: a float N x 3 x H x W tensor
    (or array) in, an N x outputs array out. One intra-op thread by default, as the torch
    predictor (see ``bc.inference.predictor.CORES_PER_EXTRA_THREAD``)."""

    def __init__(self, model: bytes, source: str, num_threads: int = 1) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
            raise OnnxError(f"{source} is not an ONNX model onnxruntime can run: {error}") from None
        self.model, self.source, self.num_threads = model, source, num_threads
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self._input = self.session.get_inputs()[0].name

    def with_threads(self, num_threads: int) -> "OnnxNet":
        """The same model in a session with ``num_threads`` intra-op threads."""
        return self if num_threads == self.num_threads else OnnxNet(self.model, self.source, num_threads)

    def __call__(self, frames: Any) -> np.ndarray:
        array = frames.numpy() if hasattr(frames, "numpy") else np.asarray(frames)
        return self.session.run(None, {self._input: np.ascontiguousarray(array, dtype=np.float32)})[0]

    def eval(self) -> "OnnxNet":
        """Inference only already; here so the predictor treats both runtimes alike."""
        return self


def open_onnx(path: str | Path, num_threads: int = 1) -> tuple[OnnxNet, "Preprocess", tuple[str, ...]]:
    """``path`` in ONNX Runtime, with the preprocessing and outputs read from its metadata
    (`bc.inference.artifact.load_onnx` makes it a `LoadedModel`)."""
    path = Path(path)
    if not path.is_file():
        raise OnnxError(f"ONNX model {path} does not exist")
    net = OnnxNet(path.read_bytes(), str(path), num_threads)
    if SPEC_KEY not in net.metadata:
        raise OnnxError(f"{path} has no {SPEC_KEY} metadata: not exported by bc")
    try:
        spec = Preprocess.from_dict(json.loads(net.metadata[SPEC_KEY]))
        outputs = check_outputs(json.loads(net.metadata.get(OUTPUTS_KEY, '["steering"]')),
                                f"{path}: {OUTPUTS_KEY}")
    except (BcError, ValueError) as error:
        raise OnnxError(f"{path}: {error}") from None
    return net, spec, outputs
