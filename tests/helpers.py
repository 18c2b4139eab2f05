"""Test-only pieces that a config can name by class path (tests/ is importable from the repo)."""

from __future__ import annotations

import os
import signal

import lightning as L
import torch
from torch import nn

from softcal.model.nets import DigitCNN


class KillAtStep(L.Callback):
    """SIGKILL this very process once ``step`` optimizer steps are done: a crash with no
    chance to clean up, at an exact, repeatable point in the middle of an epoch."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class InterruptAtStep(L.Callback):
    """Raise KeyboardInterrupt (what Ctrl-C raises) once ``step`` optimizer steps are done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise KeyboardInterrupt


class NaNAfter(nn.Module):
    """DigitCNN whose logits turn to NaN from the ``after``-th training forward pass on."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int = 28,
                 after: int = 6) -> None:  # fmt: skip
        super().__init__()
        self.net = DigitCNN(in_channels, num_classes, image_size)
        self.after, self.calls = after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                return logits * float("nan")
        return logits
