"""A model beside a recording or a drive: its steering for every center frame (a background
thread, in batches, so the page shows the first predictions while the rest are computed) and
its VisualBackProp saliency (`bc.insight.saliency`) for one frame, computed when asked for."""

from __future__ import annotations

import atexit
import threading
from typing import Any, Sequence

import numpy as np

from bc.core.images import encode_jpeg, read_rgb
from bc.core.preprocess import to_tensor
from bc.inference.predictor import choose_model
from bc.insight.saliency import SaliencyOverlay
from bc.insight.saliency import draw_saliency
from bc.review.recording import lower_priority

BATCH = 64
SALIENCY_JPEG_QUALITY = 90


def load(run_id: str | None, model_uri: str | None, tracking_uri: str | None,
         experiment_name: str, metric: str, mode: str) -> Any:
    """The model a run id / name (`latest`, `best`) or a registered version names."""

    return choose_model(run_id=run_id, model_uri=model_uri, model_path=None,
                        experiment_name=experiment_name, metric=metric, mode=mode,
                        tracking_uri=tracking_uri, runtime="torch")


class ModelReview:
    """Predictions and saliency of one loaded model (`bc.inference.artifact.LoadedModel`)."""

    def __init__(self, model: Any) -> None:

        self.model = model
        self.source = model.source
        self.overlay = SaliencyOverlay(model)
        self._lock = threading.Lock()  # one forward pass at a time
        self.predictions: np.ndarray | None = None
        self.done = 0
        self.problem: str | None = None  # why the first frame without a prediction has none
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def predict_all(self, paths: Sequence[str]) -> None:
        """Fill `predictions` (NaN where a frame cannot be read) in a background thread."""
        self.predictions = np.full(len(paths), np.nan, dtype=np.float32)
        self.done = 0
        self._thread = threading.Thread(target=self._predict, args=(list(paths),),
                                        name="review-predict", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def close(self) -> None:
        """Stop predicting (the thread must not be inside torch at exit)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _predict(self, paths: list[str]) -> None:
        import torch


        lower_priority()
        spec, net = self.model.spec, self.model.net
        for first in range(0, len(paths), BATCH):
            if self._stop.is_set():
                return
            frames, where = [], []
            for index in range(first, min(first + BATCH, len(paths))):
                try:
                    rgb = read_rgb(paths[index])
                    spec.check_frame(rgb)
                except Exception as error:  # noqa: BLE001 - such a frame has no prediction
                    self.problem = self.problem or f"row {index + 1}: {error}"
                    continue
                frames.append(spec(rgb))
                where.append(index)
            if frames:
                with self._lock, torch.inference_mode():
                    out = net(to_tensor(np.stack(frames))).float().numpy()
                self.predictions[where] = out[:, 0]
            self.done = min(first + BATCH, len(paths))

    def predictions_payload(self) -> dict[str, Any]:
        values = self.predictions
        listed = [] if values is None else [
            None if not np.isfinite(v) else round(float(v), 4) for v in values[: self.done]]
        return {"source": self.source, "done": self.done, "problem": self.problem,
                "total": 0 if values is None else len(values), "steering": listed}

    def saliency_jpeg(self, rgb: np.ndarray) -> tuple[bytes, float]:
        """An RGB camera frame with the model's saliency drawn on it, and its steering."""
        with self._lock:
            self.overlay.spec.check_frame(rgb)
            masks, outputs = self.overlay.vbp.frames([rgb], self.overlay.spec)

        drawn = draw_saliency(rgb, masks[0], self.overlay.spec)
        return encode_jpeg(drawn, SALIENCY_JPEG_QUALITY), float(outputs[0, 0])
