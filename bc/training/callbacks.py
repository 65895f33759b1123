"""Lightning callbacks that training options add (bc.training.train.build).

`ChannelsLast` (`trainer.channels_last=true`, on in `trainer=gpu`): the network's 4-D weights in
NHWC memory layout. Convolutions follow the weights' layout (the input is converted inside the
convolution), and NHWC is what tensor cores run fastest with mixed precision; on a CPU it
changes little. Weights keep their values, so checkpoints and the logged model load as usual.
"""

from __future__ import annotations

import torch
from pytorch_lightning import Callback, LightningModule, Trainer


class ChannelsLast(Callback):
    """Put the module's 4-D parameters and buffers in channels-last memory layout before fit."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        pl_module.to(memory_format=torch.channels_last)
