"""The final weights of every run are validated: at ``trainer.max_steps`` inside an epoch too,
and, where asked, only they (``--validate_every_epoch false``)."""

from __future__ import annotations

import math
from typing import Any

import lightning as L


class FinalValidation(L.Callback):
    """Validates where a run ends; with ``every_epoch=False``, only there.

    Lightning leaves the training loop at ``max_steps`` without validating unless the step
    ends an epoch, so the steps since the last epoch's end would never be validated: no
    checkpoint of the final weights, no temperature fitted on them, and a test of older
    weights. Asking the Trainer to stop at that step (``should_stop``, the extension point
    early stopping uses) makes it validate first, as at an epoch's end; the checkpoint
    callbacks and the calibration then see the final weights. A fractional last epoch
    ("6.5 epochs" as ``max_steps``) then works like a whole one.

    ``every_epoch=False`` skips the validations before the last epoch: the run scores the
    validation split once, with its final weights, which then get the checkpoint, the fitted
    temperature and the figures as after any validation. What it saves is the per-epoch
    passes (on a short CIFAR-10 run with six test-time views, several seconds an epoch);
    what it gives up is the validation curves in TensorBoard and anything that watches them
    during training (early stopping, a sweep's pruning). Where the end cannot be known in
    advance (no epoch or step limit, or batches without a length), every epoch is validated.
    """

    def __init__(self, every_epoch: bool = True) -> None:
        self.every_epoch = every_epoch

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_epoch:
            return
        last = last_epoch(trainer.max_epochs, trainer.max_steps, trainer.num_training_batches,
                          trainer.accumulate_grad_batches)  # fmt: skip
        if last is not None:
            # Lightning validates after epoch n when n is a multiple of this: the last only.
            trainer.check_val_every_n_epoch = last

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:  # fmt: skip
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


def last_epoch(max_epochs: int | None, max_steps: int, batches: float, accumulate: int = 1) -> int | None:
    """The number (from 1) of the epoch in which training ends, or None when nothing bounds it.

    An epoch of ``batches`` batches steps the optimizer ``ceil(batches / accumulate)`` times
    (Lightning steps at an epoch's last batch even with an unfinished accumulation)."""
    ends = []
    if max_epochs is not None and max_epochs > 0:
        ends.append(max_epochs)
    if max_steps > 0 and math.isfinite(batches) and batches > 0:
        ends.append(math.ceil(max_steps / math.ceil(batches / accumulate)))
    return min(ends) if ends else None
