"""The logits a reopened run gives a split (or any uint8 images), as ``trainer.test`` computes them.

Post-hoc calibrators, selective prediction and out-of-distribution scores all start from
logits. They must be the logits testing sees, not a re-implementation of it: the images go
through the datamodule's own loader and ``on_after_batch_transfer`` (preprocessing in eval
mode), and the net runs inside a Trainer with the run's settings - its accelerator and, above
all, its precision (a bf16 run's logits differ from a float32 forward pass in the last digits,
enough to move a sample across an ECE bin edge). :class:`LogitsCollector` keeps what each
``test_step`` returns, so the numbers computed from these logits are the numbers evaluate
reports for the same checkpoint, bit for bit.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
import torch

from softcal.calibration.callbacks import gather_from_all_processes

if TYPE_CHECKING:
    from lightning.pytorch import Callback, Trainer

    from softcal.runs.load import LoadedRun

#: Builds the Trainer that runs the test loop, given the callbacks it must carry.
TrainerFactory = Callable[[Sequence["Callback"]], "Trainer"]
#: (float32 logits (N, K), int64 labels (N,)) on the CPU.
Logits = tuple[torch.Tensor, torch.Tensor]


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


def quiet_trainer(run: LoadedRun) -> TrainerFactory:
    """A Trainer with the run's settings that neither logs, checkpoints nor prints."""

    def make(callbacks: Sequence[Callback]) -> Trainer:
        from lightning.pytorch import Trainer

        return Trainer(**{**run.trainer, "logger": False, "enable_checkpointing": False,
                          "enable_progress_bar": False, "enable_model_summary": False,
                          "callbacks": list(callbacks)})  # fmt: skip

    return make


def tested_logits(run: LoadedRun, datamodule: L.LightningDataModule,
                make_trainer: TrainerFactory | None = None) -> Logits:  # fmt: skip
    """(logits, labels) of ``datamodule``'s test split, through ``trainer.test``."""
    collector = LogitsCollector()
    trainer = (make_trainer or quiet_trainer(run))([collector])
    with warnings.catch_warnings():
        # A deprecation inside Lightning itself, nothing a user can act on.
        warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
        trainer.test(run.model, datamodule=datamodule, verbose=False)
    assert collector.logits is not None and collector.labels is not None  # on_test_epoch_end ran
    return collector.logits, collector.labels


def images_logits(run: LoadedRun, images: torch.Tensor, labels: torch.Tensor | None = None,
                  make_trainer: TrainerFactory | None = None) -> Logits:  # fmt: skip
    """Logits of uint8 images already in the model's shape (N, C, H, W), preprocessed by the
    run's datamodule exactly like its test split. ``labels`` default to 0 (out-of-distribution
    images have none; test_step needs some, and their metrics are thrown away)."""
    if labels is None:
        labels = torch.zeros(len(images), dtype=torch.long)
    # A shallow copy with only this "test split": the run's own datamodule keeps its splits,
    # and nothing is read from disk or downloaded.
    datamodule = copy.copy(run.datamodule)
    datamodule.splits = {"test": (images, labels)}
    datamodule.download = False
    return tested_logits(run, datamodule, make_trainer)


def split_logits(run: LoadedRun, split: str,
                 make_trainer: TrainerFactory | None = None) -> Logits:  # fmt: skip
    """(float32 logits, labels) of the run's ``"val"`` split (carved from the training set
    with the run's seed, as in training) or its ``"test"`` split, in the split's order."""
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', not {split!r}")
    run.datamodule.setup("fit" if split == "val" else "test")
    images, labels = run.datamodule.splits[split]
    return images_logits(run, images, labels, make_trainer)
