"""Training loss and accuracy of an epoch, kept as sums that survive a mid-epoch resume."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric


class TrainingTotals(Metric):
    """Training loss and accuracy of one epoch, as three sums updated once per step.

    One metric instead of MulticlassAccuracy plus a hand-kept loss sum: three small in-place
    ops per step (measured alone: 29 us against 55 us for the accuracy metric; inside a real
    step both cost about 0.2 ms on the 2-core CPU, where every small op is slower). The sums are
    saved in checkpoints (``persistent``), so an epoch resumed mid-way still reports its loss
    and accuracy over all its batches, and they add up across processes under DDP.
    """

    full_state_update = False
    loss_sum: torch.Tensor
    correct: torch.Tensor
    count: torch.Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("loss_sum", torch.zeros(()), dist_reduce_fx="sum", persistent=True)
        self.add_state("correct", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum",
                       persistent=True)  # fmt: skip
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum",
                       persistent=True)  # fmt: skip

    def update(self, logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor) -> None:
        """``loss`` is the batch mean, as cross_entropy returns it."""
        # In place: assigning to a metric attribute goes through two __setattr__ layers.
        self.loss_sum.add_(loss, alpha=labels.numel())
        self.correct.add_((logits.argmax(dim=1) == labels).sum())
        self.count.add_(labels.numel())

    def compute(self) -> dict[str, torch.Tensor]:
        count = self.count.clamp(min=1)
        return {"loss": self.loss_sum / count, "acc": self.correct / count}
