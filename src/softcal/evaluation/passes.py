"""One pass of a split (or of any uint8 images) through a reopened run, as ``trainer.test`` runs it.

Every number evaluate reports starts from such a pass. It must be the pass testing makes, not a
re-implementation of it: the images go through the datamodule's own loader and
``on_after_batch_transfer`` (preprocessing in eval mode), and the net runs inside a Trainer with
the run's settings - its accelerator and, above all, its precision (a bf16 run's logits differ
from a float32 forward pass in the last digits, enough to move a sample across an ECE bin edge).

A split's pass (:func:`split_pass`) keeps, at once, what the module's ``test_step`` logs (the
metrics, raw and calibrated, selective prediction's among them), the bin sums, confusion counts
and (confidence, correct) pairs of :class:`~softcal.calibration.callbacks.CalibrationFigures`
and the float32 logits of :class:`LogitsCollector`. Whatever an analysis computes from these
logits therefore agrees with the printed metrics bit for bit. Images without a split (OOD
sets) get a logits-only pass (:func:`logits_pass`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch import Callback, Trainer

from softcal.calibration.callbacks import CalibrationFigures, gather_from_all_processes
from softcal.evaluation.results import Confidences, SplitLogits, SplitPass

if TYPE_CHECKING:
    from softcal.runs.load import LoadedRun


class LogitsCollector(L.Callback):
    """Keeps the float32 ``logits`` and ``labels`` every test step returns; at the end of
    testing they are gathered from all processes into :attr:`logits` and :attr:`labels`."""

    def __init__(self) -> None:
        self._logits: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self.logits: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._logits, self._labels = [], []

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        self._logits.append(outputs["logits"].detach().float())
        self._labels.append(outputs["labels"].detach())

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        k = int(pl_module.hparams.num_classes)
        device = pl_module.device
        logits = torch.cat(self._logits) if self._logits else torch.zeros((0, k), device=device)
        labels = torch.cat(self._labels) if self._labels else torch.zeros(0, dtype=torch.long, device=device)
        logits = gather_from_all_processes(pl_module, logits).cpu()
        labels = gather_from_all_processes(pl_module, labels).cpu()
        # Lightning tests under inference_mode; its tensors cannot enter autograd (a calibrator's
        # fit), and a copy made with inference mode off is an ordinary tensor.
        with torch.inference_mode(False):
            self.logits, self.labels = logits.clone(), labels.clone()
        self._logits, self._labels = [], []

    def collected(self) -> SplitLogits:
        assert self.logits is not None and self.labels is not None  # on_test_epoch_end ran
        return SplitLogits(self.logits, self.labels)


def quiet_lightning() -> None:
    """Lightning's info lines (GPU available, seed set, tips) are noise in a report."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def evaluation_trainer(run: LoadedRun, callbacks: Sequence[Callback] = ()) -> Trainer:
    """A Trainer with the run's settings (accelerator, devices, precision, limits, progress bar)
    that neither logs nor checkpoints: evaluating must not create a run of its own. Lightning
    refuses impossible settings with a MisconfigurationException, which the app words."""
    quiet_lightning()
    return Trainer(**{**run.trainer, "logger": False, "enable_checkpointing": False,
                      "callbacks": list(callbacks)})  # fmt: skip


def run_test(run: LoadedRun, datamodule: L.LightningDataModule, callbacks: Sequence[Callback]) -> dict[
    str, float
]:  # fmt: skip
    """``trainer.test`` of the run's model on ``datamodule``'s test split; the logged metrics."""
    trainer = evaluation_trainer(run, callbacks)
    with warnings.catch_warnings():
        # A deprecation inside Lightning itself, nothing a user can act on.
        warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
        return trainer.test(run.model, datamodule=datamodule, verbose=False)[0]


def key_for_split(key: str, split: str, scored_as: str = "test") -> str:
    """``test/ece`` -> ``val/ece`` and ``test_calibrated/ece`` -> ``val_calibrated/ece``:
    test_step logs every split it scores under ``test``."""
    return split + key[len(scored_as) :] if key.startswith(scored_as) else key


def split_pass(run: LoadedRun, datamodule: L.LightningDataModule, split: str) -> SplitPass:
    """The pass over ``datamodule``'s test split, which holds the run's ``split``."""
    drawn = CalibrationFigures(int(run.model.hparams.calibration_bins))  # no logger: only sums and pairs
    collected = LogitsCollector()
    metrics = run_test(run, datamodule, [drawn, collected])
    bins, pairs = drawn.last_test()  # keyed raw and calibrated
    return SplitPass(
        split=split,
        metrics={key_for_split(k, split): float(v) for k, v in sorted(metrics.items())},
        logits=collected.collected(),
        bins={scaling: {k: v for k, v in sums.items() if k != "confusion"} for scaling, sums in bins.items()},
        confusion=bins["raw"]["confusion"],
        confidences={scaling: Confidences(**kept) for scaling, kept in pairs.items()},
    )


def logits_pass(run: LoadedRun, datamodule: L.LightningDataModule) -> SplitLogits:
    """The logits of ``datamodule``'s test split, nothing else computed from them."""
    collected = LogitsCollector()
    run_test(run, datamodule, [collected])
    return collected.collected()
