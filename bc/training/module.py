"""The LightningModule: regression losses, metrics and optimizers around a plain network.

The network (`bc.models`) stays a plain `nn.Module` so the drive server never needs Lightning;
this module adds what training needs: the loss (`conf/loss`: MSE, or Huber for robustness to
noisy labels), the optimizer / LR scheduler built from config partials, and the metrics
`train/loss`, `val/loss` and `val/mae` (steering). A network that also predicts the target
speed (`model.outputs=[steering,speed]`) is trained on the sum steering loss +
`speed_loss_weight` x speed loss (the same criterion on the speed targets, mph / 30), so
`train/loss` and `val/loss` are that sum, and `val/speed_mae` is its speed error in mph.
"""

from __future__ import annotations

from typing import Any, Callable

import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics import MeanAbsoluteError, MeanMetric

from bc.models.base import SteeringModel, target_to_speed
from bc.core.settings import number, setting

MONITOR = "val/loss"  # what ReduceLROnPlateau, checkpoints and early stopping watch

OptimizerFactory = Callable[..., Optimizer]
SchedulerFactory = Callable[..., Any]


class SteeringModule(pl.LightningModule):
    """Trains a `SteeringModel` on (frames N x 3 x H x W in 0..255, targets N x outputs) batches."""

    def __init__(self, net: SteeringModel, optimizer: OptimizerFactory,
                 scheduler: SchedulerFactory | None = None, loss: nn.Module | None = None,
                 speed_loss_weight: float = 1.0) -> None:
        super().__init__()
        if not callable(optimizer):
            raise TypeError(f"optimizer: expected a partial that builds a torch optimizer "
                            f"(`_partial_: true` in conf/optimizer), got {optimizer!r}")
        if scheduler is not None and not callable(scheduler):
            raise TypeError(f"scheduler: expected a partial that builds an LR scheduler "
                            f"(`_partial_: true` in conf/scheduler) or null, got {scheduler!r}")
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.criterion = loss if loss is not None else nn.MSELoss()
        self.speed_loss_weight = setting("speed_loss_weight", speed_loss_weight, number,
                                         lambda value: value >= 0, "a number >= 0")
        self.outputs = tuple(getattr(net, "outputs", ("steering",)))
        self.predicts_speed = "speed" in self.outputs
        self.val_loss = MeanMetric()
        self.val_mae = MeanAbsoluteError()
        self.val_speed_mae = MeanAbsoluteError() if self.predicts_speed else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _predict_batch(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions and targets of a batch, with targets shaped like the predictions."""
        x, y = batch
        prediction = self.net(x)
        if y.ndim == 1:
            y = y.unsqueeze(1)
        if y.shape != prediction.shape:
            raise ValueError(f"batch targets have shape {tuple(y.shape)} but the model outputs "
                             f"{tuple(prediction.shape)}; expected N x {len(self.outputs)} "
                             f"targets ({', '.join(self.outputs)}: data.outputs must be "
                             f"model.outputs)")
        return prediction, y.to(prediction.dtype)

    def _loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Steering loss, plus the weighted speed loss for a network that predicts speed."""
        loss = self.criterion(prediction[:, :1], target[:, :1])
        if self.predicts_speed:
            loss = loss + self.speed_loss_weight * self.criterion(prediction[:, 1:], target[:, 1:])
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        prediction, target = self._predict_batch(batch)
        loss = self._loss(prediction, target)
        size = target.shape[0]
        # `train/loss` is the epoch mean (comparable with val/loss); the per-step curve is separate.
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=size,
                 sync_dist=True)
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, batch_size=size)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        prediction, target = self._predict_batch(batch)
        self.val_loss.update(self._loss(prediction, target), weight=target.shape[0])
        self.val_mae.update(prediction[:, 0], target[:, 0])
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/mae", self.val_mae, on_step=False, on_epoch=True, prog_bar=True)
        if self.val_speed_mae is not None:
            self.val_speed_mae.update(target_to_speed(prediction[:, 1]),
                                      target_to_speed(target[:, 1]))
            self.log("val/speed_mae", self.val_speed_mae, on_step=False, on_epoch=True,
                     prog_bar=True)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        schedule: dict[str, Any] = {"scheduler": scheduler, "interval": "epoch", "frequency": 1}
        if isinstance(scheduler, ReduceLROnPlateau):
            schedule["monitor"] = MONITOR
        return {"optimizer": optimizer, "lr_scheduler": schedule}
