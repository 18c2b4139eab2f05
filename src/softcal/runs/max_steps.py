"""Validate where a run that stops at ``trainer.max_steps`` stops, inside an epoch or not."""

from __future__ import annotations

from typing import Any

import lightning as L


class ValidateAtMaxSteps(L.Callback):
    """A run with ``trainer.max_steps`` that ends inside an epoch is validated where it ends.

    Lightning leaves the training loop at ``max_steps`` without validating unless the step
    ends an epoch, so the steps since the last epoch's end would never be validated: no
    checkpoint of the final weights, no temperature fitted on them, and a test of older
    weights. Asking the Trainer to stop at that step (``should_stop``, the extension point
    early stopping uses) makes it validate first, as at an epoch's end; the checkpoint
    callbacks and the calibration then see the final weights. A fractional last epoch
    ("6.5 epochs" as ``max_steps``) then works like a whole one. Added to every run; without
    ``max_steps`` it does nothing.
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:  # fmt: skip
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True
