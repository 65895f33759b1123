"""The Lightning callback that drives the model during training and logs its closed-loop score.

`ClosedLoopEval` (conf/callbacks/default.yaml `closed_loop`) drives the current weights every
N epochs, after validation, on its `tracks` (short episodes: `laps` each from a standing
start, stopped at `max_time_factor` x the expert's time), all at once through the episode loop
(bc/evaluation/episodes.py) with the model batched as drive.py would answer
(bc/evaluation/policies.py), and logs per track
`eval/<track>/{score,autonomy,progress_laps,pace_pct,mean_abs_cte,interventions}` and
`eval/score` (bc/evaluation/score.py). A `ModelCheckpoint` with `monitor: eval/score, mode: max`
then keeps the epoch that drove best, and bc.training.mlflow_run logs that checkpoint as the run's model:

    python scripts/train.py callbacks.model_checkpoint.monitor=eval/score \
        callbacks.model_checkpoint.mode=max

Cost: `python scripts/benchmark.py closed_loop` measures it against a PilotNet epoch
(docs/evaluation.md).
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Sequence

from pytorch_lightning import Callback, LightningModule, Trainer

from bc.core import udacity
from bc.errors import ConfigError
from bc.evaluation.policies import ModelPolicy
from bc.evaluation.score import SCORE, Scorer, eval_metrics
from bc.core.settings import flag, integer, number, setting
from bc.inference.artifact import LoadedModel

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# The callback


class ClosedLoopEval(Callback):
    """Drive the current weights every `every_n_epochs` epochs after validation and log
    eval/<track>/* and eval/score (module doc). `every_n_epochs: 0` is off. The car's speed
    comes from `speed_source` / `set_speed` as in scripts/drive.py."""

    def __init__(self, every_n_epochs: int = 0, tracks: Sequence[Any] = ("lake",),
                 set_speed: float = 20.0, speed_source: str = "set_speed",
                 max_time_factor: float = 2.0, jpeg: bool = True,
                 vectorization: str | None = None) -> None:
        self.every_n_epochs = setting("every_n_epochs", every_n_epochs, integer,
                                      lambda value: value >= 0, "an integer >= 0 (0: off)")
        self.set_speed = setting("set_speed", set_speed, number,
                                 lambda value: 0 < value <= udacity.TOP_SPEED_MPH,
                                 f"a speed in (0, {udacity.TOP_SPEED_MPH}] mph")
        self.speed_source = setting("speed_source", speed_source, str,
                                    lambda value: value in ("set_speed", "bends", "model"),
                                    "set_speed, bends or model")
        self.scorer = (Scorer(list(tracks), max_time_factor, jpeg=flag("jpeg", jpeg),
                              vectorization=vectorization) if self.every_n_epochs else None)
        self.history: list[tuple[int, float]] = []  # (epoch, eval/score)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not self.every_n_epochs:
            return
        width, height = pl_module.net.preprocess_spec.frame_size
        if (width, height) != (udacity.FRAME_WIDTH, udacity.FRAME_HEIGHT):
            raise ConfigError(f"callbacks.closed_loop: the simulator renders "
                              f"{udacity.FRAME_WIDTH}x{udacity.FRAME_HEIGHT} frames, this model "
                              f"takes {width}x{height}; turn it off (every_n_epochs=0)")
        if self.speed_source == "model" and "speed" not in pl_module.net.outputs:
            raise ConfigError("callbacks.closed_loop.speed_source: model needs a model with a "
                              "speed output (model.outputs=[steering,speed])")

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (not self.every_n_epochs or trainer.sanity_checking
                or (trainer.current_epoch + 1) % self.every_n_epochs):
            return

        net = pl_module.net
        if next(net.parameters()).device.type != "cpu":
            net = copy.deepcopy(net).cpu()
        policy = ModelPolicy(LoadedModel(net=net, spec=net.preprocess_spec,
                                         source=f"epoch {trainer.current_epoch}",
                                         outputs=tuple(net.outputs)),
                             self.set_speed, self.speed_source)
        results = self.scorer.score(policy)
        metrics = eval_metrics(results)
        for key, value in metrics.items():
            pl_module.log(key, value, prog_bar=key == SCORE, on_epoch=True)
        self.history.append((trainer.current_epoch, metrics[SCORE]))
        log.info("epoch %d closed loop: %s", trainer.current_epoch,
                 ", ".join(f"{name} {item['score']:.1f}" for name, item in results.items()))

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.scorer is not None:
            self.scorer.close()  # its envs' worker processes, when "async"
