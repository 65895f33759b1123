"""The MLflow model of a bc network, logged as code (MLflow's *models-from-code*): no pickle.

`bc.inference.store.log_logged_model` logs this file itself as the model's code, with the folder
`bc.inference.artifact.save_model` wrote (weights, model.yaml, TorchScript, ONNX) as its ``model``
artifact. ``mlflow.pyfunc.load_model(uri)`` runs this file, which rebuilds the network as the
drive server does (`bc.inference.artifact.load_model_folder`: registered classes only, weights loaded
with ``weights_only=True``) and predicts with the drive server's `Predictor`:

    frames: uint8 RGB array, N x H x W x 3 (or one H x W x 3) of the model's camera frame size
    -> DataFrame with ``steering`` (raw, unclamped) and, for a model with a speed output,
       ``speed_mph``.

It needs `bc` importable (``pip install -e .`` in this repository) and the packages its
requirements list. bc's own loaders never run this file (they read the artifacts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

from bc.inference.artifact import load_model_folder
from bc.inference.predictor import Predictor
from bc.inference.store import MODEL_ARTIFACT, SPEED_COLUMN, STEERING_COLUMN


class SteeringPyfunc(PythonModel):
    """Camera frames in, steering (and target speed) out, exactly as the drive server computes."""

    def load_context(self, context: Any) -> None:
        self.predictor = Predictor(load_model_folder(Path(context.artifacts[MODEL_ARTIFACT])))

    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> pd.DataFrame:
        frames = np.asarray(model_input, dtype=np.uint8)
        if frames.ndim == 3:
            frames = frames[None]
        predictions = [self.predictor.predict_rgb(frame) for frame in frames]
        columns = {STEERING_COLUMN: [prediction.steering for prediction in predictions]}
        if self.predictor.predicts_speed:
            columns[SPEED_COLUMN] = [prediction.target_speed for prediction in predictions]
        return pd.DataFrame(columns)


set_model(SteeringPyfunc())
