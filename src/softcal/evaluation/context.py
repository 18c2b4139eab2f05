"""What every analysis of one checkpoint starts from: the run, loaded once, and its passes, made once.

An :class:`EvaluationContext` reopens a run with :func:`softcal.runs.load.load_run` and answers
the analyses' questions about it, computing each answer once:

* :meth:`~EvaluationContext.tested` - a split's pass through ``trainer.test`` (metrics, figure
  sums, selective-prediction pairs and logits; :mod:`softcal.evaluation.passes`);
* :meth:`~EvaluationContext.logits` - a split's logits, from that same pass;
* :meth:`~EvaluationContext.images_logits` - the logits of other images (OOD sets), through
  the same Trainer and preprocessing (kept per image content: the same images asked twice,
  e.g. by an OOD analysis and again by an ensemble of this run, go through the net once);
* :meth:`~EvaluationContext.shifted_logits` - the logits of the test split's first N images
  under one corruption at one severity (:mod:`softcal.evaluation.shifted_sets`), the same
  way, each set made and passed once and kept: the shift analysis and any later analysis of
  the same sets (conformal coverage under shift) share them;
* :attr:`~EvaluationContext.calibration` - the run's stored calibration, the one way any
  analysis asks how probabilities are calibrated.

Lightning is imported by the first pass, not with this module: a wrong path or a broken
checkpoint is reported in a second or two.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from softcal.evaluation.results import Evaluation, SplitLogits, SplitPass
from softcal.evaluation.shifted_sets import SetKey, ShiftedSets
from softcal.runs.load import LoadedRun, load_run

if TYPE_CHECKING:
    from lightning.pytorch import LightningDataModule

    from softcal.calibration.run_calibration import RunCalibration

#: Evaluation prints one table: no progress bar or model summary unless an override asks.
QUIET = ("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false")


class EvaluationContext:
    """One reopened run and its evaluated ``split`` ("test" or "val"); every pass made once."""

    def __init__(self, run: LoadedRun, split: str = "test", overrides: Sequence[str] = ()) -> None:
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', not {split!r}")
        self.run, self.split, self.overrides = run, split, list(overrides)
        self._passes: dict[str, SplitPass] = {}
        self._evaluation: Evaluation | None = None
        self._images: dict[str, torch.Tensor] = {}
        self._shifted_sets: ShiftedSets | None = None
        self._shifted: dict[SetKey, SplitLogits] = {}
        #: seconds each shifted set's pass through the net took (the shift benchmark's inference)
        self.shift_seconds: dict[SetKey, float] = {}

    @classmethod
    def open(cls, path: str | Path, split: str = "test", overrides: Sequence[str] = ()) -> EvaluationContext:
        """Reopen a run directory (its best checkpoint) or a checkpoint; data checked, quiet."""
        return cls(load_run(path, [*QUIET, *overrides], check_classes=True), split, overrides)

    @property
    def calibration(self) -> RunCalibration:
        """The run's stored calibration: method, temperature, probabilities, legends."""
        return self.run.calibration

    @property
    def dataset(self) -> str:
        return self.run.datamodule.name

    @property
    def where(self) -> str:
        """The evaluated split in words, e.g. "MNIST test"."""
        return f"{self.dataset} {self.split}"

    def tested(self, split: str | None = None) -> SplitPass:
        """The pass over ``split`` (default: the evaluated one), made on first use."""
        from softcal.evaluation.passes import split_pass

        split = split or self.split
        if split not in self._passes:
            self._passes[split] = split_pass(self.run, self._datamodule_for(split), split)
        return self._passes[split]

    def logits(self, split: str | None = None) -> SplitLogits:
        """(logits, labels) of ``split`` (default: the evaluated one), from its one pass."""
        return self.tested(split).logits

    def images_logits(self, images: torch.Tensor) -> torch.Tensor:
        """float32 logits of uint8 images already in the model's shape (N, C, H, W),
        preprocessed by the run's datamodule exactly like its test split."""
        from softcal.evaluation.passes import logits_pass

        key = _digest(images)
        if key not in self._images:
            # test_step needs labels; images without any (OOD sets) get 0, their metrics unused
            labels = torch.zeros(len(images), dtype=torch.long)
            self._images[key] = logits_pass(self.run, self._datamodule_holding(images, labels)).logits
        return self._images[key]

    @property
    def shifted_sets(self) -> ShiftedSets:
        """The test split's images, corrupted on demand. The split is the one the test pass
        read (that pass runs first if it has not: it prepares and reads the data)."""
        if self._shifted_sets is None:
            self.tested("test")
            images, labels = self.run.datamodule.splits["test"]
            self._shifted_sets = ShiftedSets(images, labels, self.run.datamodule.root)
        return self._shifted_sets

    def share_shifted_sets(self, sets: ShiftedSets) -> None:
        """Corrupt through ``sets`` (another context's, of the same test images) from now on."""
        self._shifted_sets = sets

    def shifted_logits(self, corruption: str, severity: int, samples: int | None = None) -> SplitLogits:
        """(logits, labels) of the first ``samples`` test images (all: None) corrupted by
        ``corruption`` at ``severity`` (seed 0), through the same Trainer and preprocessing as
        the test split; each set is made and passed once."""
        from softcal.evaluation.passes import logits_pass

        sets = self.shifted_sets
        key = sets.key(corruption, severity, samples)
        if key not in self._shifted:
            images, labels = sets.corrupted(corruption, severity, samples)
            start = time.perf_counter()
            self._shifted[key] = logits_pass(self.run, self._datamodule_holding(images, labels))
            self.shift_seconds[key] = time.perf_counter() - start
        return self._shifted[key]

    def evaluation(self) -> Evaluation:
        """The evaluated split's scores (its pass runs on first use)."""
        if self._evaluation is None:
            calibration = self.calibration
            self._evaluation = Evaluation(
                checkpoint=self.run.checkpoint,
                run_dir=self.run.run_dir,
                split=self.split,
                dataset=self.dataset,
                temperature=calibration.temperature,
                metrics=self.tested().metrics,
                class_names=self.run.class_names,
                calibration_method=calibration.method,
                calibration_label=calibration.label(),
            )
        return self._evaluation

    def _datamodule_for(self, split: str) -> LightningDataModule:
        """A datamodule whose test split is the run's ``split``. The test split is the run's
        own datamodule (``trainer.test`` prepares and reads it, downloading missing files as
        training does); the validation split is carved from the training set with the run's
        seed, exactly as training carved it."""
        if split == "test":
            return self.run.datamodule
        if split != "val":
            raise ValueError(f"split must be 'val' or 'test', not {split!r}")
        self.run.datamodule.setup("fit")
        return self._datamodule_holding(*self.run.datamodule.splits["val"])

    def _datamodule_holding(self, images: torch.Tensor, labels: torch.Tensor) -> LightningDataModule:
        """A shallow copy of the run's datamodule with only this "test split": the run's own
        keeps its splits, and nothing is read from disk or downloaded."""
        datamodule = copy.copy(self.run.datamodule)
        datamodule.splits = {"test": (images, labels)}
        datamodule.download = False
        return datamodule


def _digest(images: torch.Tensor) -> str:
    """A key for the content of a batch of images: its shape, dtype and bytes."""
    pixels = images.detach().cpu().contiguous()
    digest = hashlib.blake2b(pixels.numpy().tobytes(), digest_size=16).hexdigest()
    return f"{tuple(pixels.shape)} {pixels.dtype} {digest}"
