"""From the simulator's base64 JPEG to a steering value, exactly as in training.

One base64 decode, one JPEG decode (the simulator encodes **RGB** frames; OpenCV decodes to
BGR, so we convert back), one ``bc.preprocess.preprocess`` pass with the spec stored with
the model, one forward under ``torch.inference_mode``. Every way a frame can be bad raises
``BadFrame`` with a one-line reason, so the server can answer and carry on.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from bc.errors import BcError
from bc.preprocess import to_tensor

if TYPE_CHECKING:  # pragma: no cover
    from bc.tracking import LoadedModel

FRAME_WIDTH = 320
FRAME_HEIGHT = 160
JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
# Encoders may pad after the end-of-image marker; look for it in this many trailing bytes.
JPEG_EOI_SEARCH = 32
# Batch-1 inference of these small nets gains ~25 % from a second intra-op thread, but when
# the cores are shared (the simulator renders on the same machine) a thread that is not
# scheduled stalls every forward pass at the OpenMP barrier: p99 went from ~5 ms to ~130 ms
# on a busy 2-core machine. So one thread unless the machine has cores to spare.
CORES_PER_EXTRA_THREAD = 8
WARMUP_CALLS = 3
MAX_DEFAULT_THREADS = 2


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


def decode_base64(text: object) -> bytes:
    """The bytes of a strict (standard alphabet, no whitespace) base64 string."""
    if not isinstance(text, str):
        raise BadFrame(f"image: expected a base64 string, got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadFrame(f"image: not valid base64 ({error})") from None


def decode_jpeg(data: bytes, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT) -> np.ndarray:
    """A complete ``width`` x ``height`` JPEG to an RGB uint8 array.

    libjpeg "decodes" a truncated file by filling the rest with grey and only prints a
    warning, so completeness is checked from the markers before decoding.
    """
    if not data.startswith(JPEG_SOI):
        raise BadFrame(f"image: not a JPEG (starts with {data[:4]!r}, expected {JPEG_SOI!r})")
    if JPEG_EOI not in data[-JPEG_EOI_SEARCH:]:
        raise BadFrame(f"image: truncated JPEG ({len(data)} bytes, no end-of-image marker)")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise BadFrame(f"image: corrupt JPEG ({len(data)} bytes could not be decoded)")
    if bgr.shape[:2] != (height, width):
        raise BadFrame(f"image: expected {width}x{height}, got {bgr.shape[1]}x{bgr.shape[0]}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@dataclass
class Predictor:
    """A loaded model and its preprocessing, turning simulator frames into steering."""

    model: "LoadedModel"
    frame_width: int = FRAME_WIDTH
    frame_height: int = FRAME_HEIGHT

    def __post_init__(self) -> None:
        self.model.net.eval()

    @property
    def source(self) -> str:
        return self.model.source

    def predict_rgb(self, rgb: np.ndarray) -> float:
        """Raw (unclamped) steering for one RGB frame; NaN/inf are reported as ``BadFrame``."""
        batch = to_tensor(self.model.spec(rgb))
        value = float(self.model.predict(batch).reshape(-1)[0])
        if not math.isfinite(value):
            raise BadFrame(f"model output is {value} for this frame")
        return value

    def predict_jpeg(self, data: bytes) -> tuple[float, np.ndarray]:
        """Steering for a JPEG frame, with the decoded RGB frame."""
        rgb = decode_jpeg(data, self.frame_width, self.frame_height)
        return self.predict_rgb(rgb), rgb

    def warm_up(self) -> None:
        """A few forward passes, so the first real frames do not pay for lazy initialisation
        (TorchScript's profiling executor optimises the graph on the second call)."""
        blank = np.zeros((self.frame_height, self.frame_width, 3), np.uint8)
        for _ in range(WARMUP_CALLS):
            self.predict_rgb(blank)


def configure_torch(num_threads: int | None = None) -> int:
    """Set torch's thread counts for single-frame inference; returns the intra-op count."""
    threads = int(num_threads) if num_threads else default_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (or inter-op work already started) in this process
        pass
    return threads


def load_model(run_id: str | None = None, model_path: str | None = None, experiment: str = "bc",
               metric: str = "val/loss", mode: str = "min",
               tracking_uri: str | None = None) -> "LoadedModel":
    """The model to serve: an exported file (``model_path``, MLflow never imported), the run
    ``run_id``, or with ``run_id="best"`` the best finished run of ``experiment``."""
    from bc import tracking

    if bool(run_id) == bool(model_path):
        raise tracking.TrackingError(
            "give exactly one of run_id=<MLflow run id>|best or model_path=<exported model.ts>"
            f" (got run_id={run_id!r}, model_path={model_path!r})")
    if model_path:
        return tracking.load_exported(model_path)
    return tracking.load_model(tracking.find_run(str(run_id), experiment, metric, mode, tracking_uri),
                               tracking_uri)
