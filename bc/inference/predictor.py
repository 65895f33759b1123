"""From the simulator's base64 JPEG to steering (and a target speed), exactly as in training.

One base64 decode, one JPEG decode (`bc.core.images`, RGB), the model's own `Preprocess` (the
object it was trained with, which also knows the camera frame size it was trained on), one
forward pass under ``torch.inference_mode`` (or in ONNX Runtime: `bc.inference.onnx_export.OnnxNet`):
a `Prediction` of the steering and, for a model trained with ``outputs: [steering, speed]``,
the target speed in mph (else None). Every way a frame can be bad raises a `BcError` with a
one-line reason (`BadFrame`, `bc.core.images.ImageError`, `bc.core.preprocess.FrameSizeError`), so the
server can answer and carry on.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import os
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np
import torch

from bc.core import images
from bc.errors import BcError, ConfigError
from bc.models.base import target_to_speed
from bc.core.preprocess import FrameSizeError, to_tensor
from bc import tracking
from bc.inference import artifact
from bc.inference import store
from bc.inference.onnx_export import OnnxNet
from bc.inference.store import load_registered

if TYPE_CHECKING:  # pragma: no cover
    from bc.inference.artifact import LoadedModel

LOG = logging.getLogger("bc.drive")

# Batch-1 inference of these small nets gains ~25 % from a second intra-op thread, but when
# the cores are shared (the simulator renders on the same machine) a thread that is not
# scheduled stalls every forward pass at the OpenMP barrier: p99 went from ~5 ms to ~130 ms
# on a busy 2-core machine. So one thread unless the machine has cores to spare.
CORES_PER_EXTRA_THREAD = 8
MAX_DEFAULT_THREADS = 2
WARMUP_CALLS = 3


class BadFrame(BcError, ValueError):
    """A telemetry image that cannot be used: the message says why."""


def default_num_threads() -> int:
    """Torch intra-op threads when not configured: 1, or 2 with at least
    ``CORES_PER_EXTRA_THREAD`` usable cores (see the constant's comment)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return 1 if cores < CORES_PER_EXTRA_THREAD else MAX_DEFAULT_THREADS


def configure_torch(num_threads: int | None) -> int:
    """Set torch's thread counts for single-frame inference (``None``: the default above);
    returns the intra-op count."""
    if num_threads is not None and (isinstance(num_threads, bool)
                                    or not isinstance(num_threads, int) or num_threads < 1):
        raise ConfigError(f"num_threads: expected an integer >= 1 or null, got {num_threads!r}")
    threads = num_threads or default_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (or inter-op work already started) in this process
        pass
    return threads


def decode_base64(text: object) -> bytes:
    """The bytes of a strict (standard alphabet, no whitespace) base64 string."""
    if not isinstance(text, str):
        raise BadFrame(f"image: expected a base64 string, got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadFrame(f"image: not valid base64 ({error})") from None


class Prediction(NamedTuple):
    """What the model says for one frame."""

    steering: float  # raw normalised steering (unclamped: the server clamps)
    target_speed: float | None  # mph, for a model with a speed output; else None


@dataclass
class Predictor:
    """A loaded model turning camera frames of its own frame size into steering (and speed)."""

    model: "LoadedModel"

    def __post_init__(self) -> None:
        self.model.net.eval()

    @property
    def predicts_speed(self) -> bool:
        """Whether the model has a target-speed output (``outputs: [steering, speed]``)."""
        return "speed" in self.model.outputs

    @property
    def source(self) -> str:
        return self.model.source

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the camera frames the model was trained on."""
        return self.model.spec.frame_size

    def decode(self, jpeg: bytes) -> np.ndarray:
        """A JPEG frame to RGB. A header declaring any other size than the model's frame size
        is refused before decoding (a 766 KB JPEG can declare 14000 x 14000 pixels)."""
        problem = images.jpeg_problem(jpeg)
        if problem:
            raise BadFrame(f"image: {problem}")
        width, height = self.frame_size
        got_width, got_height = images.jpeg_size(jpeg)
        if (got_width, got_height) != (width, height):
            raise FrameSizeError(f"image: this model expects {width}x{height} frames, got "
                                 f"{got_width}x{got_height}")
        return images.decode_jpeg(jpeg, max_pixels=width * height)

    def model_input(self, rgb: np.ndarray) -> torch.Tensor:
        """The exact 1 x C x H x W float tensor the net receives for one RGB frame."""
        self.model.spec.check_frame(rgb)
        return to_tensor(self.model.spec(rgb))

    def predict_rgb(self, rgb: np.ndarray) -> Prediction:
        """Raw (unclamped) steering and target speed for one RGB frame; NaN/inf are reported
        as ``BadFrame``."""
        with torch.inference_mode():
            values = self.model.net(self.model_input(rgb)).reshape(-1).tolist()
        return self._prediction(values)

    def predict_batch(self, rgbs: Sequence[np.ndarray]) -> list[Prediction | BadFrame]:
        """`predict_rgb` for many frames in one forward pass (the closed-loop evaluator's
        batched inference, bc/evaluation): per frame its Prediction, or the BadFrame that
        `predict_rgb` would raise for it."""
        batch = to_tensor(np.stack([self._preprocessed(rgb) for rgb in rgbs]))
        with torch.inference_mode():
            rows = self.model.net(batch).reshape(len(rgbs), -1).tolist()
        predictions: list[Prediction | BadFrame] = []
        for values in rows:
            try:
                predictions.append(self._prediction(values))
            except BadFrame as error:
                predictions.append(error)
        return predictions

    def _preprocessed(self, rgb: np.ndarray) -> np.ndarray:
        self.model.spec.check_frame(rgb)
        return self.model.spec(rgb)

    def _prediction(self, values: list[float]) -> Prediction:
        if len(values) != len(self.model.outputs):
            raise BadFrame(f"model output has {len(values)} values for this frame, expected "
                           f"{len(self.model.outputs)} ({', '.join(self.model.outputs)})")
        if not all(math.isfinite(value) for value in values):
            raise BadFrame(f"model output is {values} for this frame")
        speed = target_to_speed(values[1]) if self.predicts_speed else None
        return Prediction(values[0], speed)

    def predict_jpeg(self, jpeg: bytes) -> Prediction:
        """Raw steering and target speed for one JPEG frame."""
        return self.predict_rgb(self.decode(jpeg))

    def warm_up(self) -> None:
        """A few forward passes on a blank frame of the model's size, so the first real frames
        do not pay for lazy initialisation (TorchScript optimises the graph on the second call)."""
        width, height = self.frame_size
        blank = np.zeros((height, width, 3), np.uint8)
        for _ in range(WARMUP_CALLS):
            self.predict_rgb(blank)


def choose_model(*, run_id: str | None, model_path: str | None, experiment_name: str,
                 metric: str, mode: str, tracking_uri: str | None, model_uri: str | None = None,
                 runtime: str = "torch") -> "LoadedModel":
    """The model to serve: an exported file (``model_path``: model.ts, or model.onnx with
    runtime=onnx; MLflow is never imported), a registered version (``model_uri``:
    models:/<name>@<alias> or models:/<name>/<version>) or the run ``run_id`` names (a run id,
    a run name, ``latest`` or ``best``; see `tracking.find_run`). ``runtime``: torch | onnx
    (ONNX Runtime on the model's model.onnx)."""

    given = {key: value for key, value in
             (("run_id", run_id), ("model_uri", model_uri), ("model_path", model_path)) if value is not None}
    if len(given) != 1:
        raise ConfigError("give exactly one of run_id=<run id|run name|latest|best>, "
                          "model_uri=models:/<name>@<alias>|models:/<name>/<version> or "
                          f"model_path=<exported model.ts|model.onnx> (got "
                          f"{', '.join(f'{key}={value!r}' for key, value in given.items()) or 'none'})")
    artifact.check_runtime(runtime)
    if model_path is not None:
        return artifact.load_exported(model_path, runtime)
    if model_uri is not None:

        return load_registered(str(model_uri), tracking_uri, runtime)
    run = tracking.find_run(str(run_id), experiment_name, metric, mode, tracking_uri)
    return store.load_model(run, tracking_uri, runtime)


def serving_predictor(model: "LoadedModel", num_threads: int | None) -> Predictor:
    """The predictor scripts/drive.py serves: torch threads set, forward passes warmed up."""

    started = time.perf_counter()
    threads = configure_torch(num_threads)
    runtime = "torch"
    if isinstance(model.net, OnnxNet):
        model, runtime = replace(model, net=model.net.with_threads(threads)), "onnxruntime"
    predictor = Predictor(model)
    predictor.warm_up()
    width, height = predictor.frame_size
    LOG.info("loaded %s for %dx%d frames (preprocess %s), warmed up in %.2f s, %s with %d "
             "thread(s)", model.source, width, height, model.spec.to_dict(),
             time.perf_counter() - started, runtime, threads)
    return predictor
