"""Lightning callbacks for calibration: fit the run's calibration, draw the pictures.

Both read what a LightningModule's ``validation_step`` / ``test_step`` return -
``{"logits": ..., "labels": ...}`` - so they work in any Trainer with any module that does so.
The calibration lives in the module (``pl_module.calibration``), which makes it part of every
checkpoint the Trainer writes; nothing is rewritten afterwards.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from softcal.calibration.calibrators import METHODS
from softcal.calibration.metrics import TopLabelBins


def gather_from_all_processes(module: L.LightningModule, values: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor whose first dimension differs by process (evaluation shards do)."""
    if module.trainer.world_size == 1:
        return values
    sizes = module.all_gather(torch.tensor(len(values), device=values.device))
    padded = torch.zeros((int(sizes.max()), *values.shape[1:]), dtype=values.dtype, device=values.device)
    padded[: len(values)] = values
    everything = module.all_gather(padded)  # (world_size, max_size, ...)
    return torch.cat([part[: int(n)] for part, n in zip(everything, sizes, strict=True)])


class _StepOutputs(L.Callback):
    """Collects the (logits, labels) each validation step returns, on every process."""

    def __init__(self) -> None:
        self._logits: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._logits, self._labels = [], []

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if not trainer.sanity_checking and isinstance(outputs, dict) and "logits" in outputs:
            self._logits.append(outputs["logits"].detach().float())
            self._labels.append(outputs["labels"].detach())


class FitCalibration(_StepOutputs):
    """Fit the run's calibration on the validation logits at the end of every validation.

    The module stores it (``pl_module.calibration``, a
    :class:`~softcal.calibration.run_calibration.RunCalibration`), so each checkpoint carries
    the calibration fitted for its own weights: the best checkpoint and ``last.ckpt`` never
    disagree about which weights it belongs to. When a training epoch starts it is marked "not
    fitted" again - the weights are about to move - so a checkpoint saved mid-epoch says so
    instead of carrying a stale fit. Every process fits the same calibration from the logits
    of all processes. T is fitted and logged (``val/temperature``) whatever the ``method``, so
    runs of any method can be compared on it.

    Args:
        method: temperature (default), vector, matrix, histogram or isotonic
            (``--calibration.method``).
        enabled: False (``--calibration.enabled false``) makes the callback do nothing at all:
            it stays in the Trainer's list, as its config group says, and the module keeps
            "not fitted" (raw softmax).
    """

    def __init__(self, method: str = "temperature", enabled: bool = True) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown calibrator {method!r}; choose one of {', '.join(METHODS)}")
        self.method, self.enabled = method, enabled

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if self.enabled:  # disabled: keep no logits (they would only cost memory)
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:  # also one restored from a run resumed with another method is stale
            pl_module.calibration.reset()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.sanity_checking or not self._logits:
            return
        logits = gather_from_all_processes(pl_module, torch.cat(self._logits))
        labels = gather_from_all_processes(pl_module, torch.cat(self._labels))
        self._logits, self._labels = [], []
        pl_module.calibration.fit(logits, labels, self.method)
        temperature = pl_module.calibration.temperature
        if temperature is not None:  # val/temperature per epoch: how overconfident it grows
            pl_module.log("val/temperature", temperature, sync_dist=False)


class CalibrationFigures(L.Callback):
    """Reliability diagram, confidence histogram and confusion matrix in TensorBoard, at the
    end of every validation and of testing (raw and, at test, calibrated by the run's method).

    Keeps its own per-bin sums and confusion counts (exact, constant in memory, summed across
    processes when drawn) from the logits each step returns. ``finished[stage]`` keeps the last
    drawn state of each stage (bin sums and ``confusion``), for pictures saved elsewhere; with
    no logger nothing is drawn, but ``finished`` is still filled. ``enabled=False``
    (``--figures.enabled false``) makes the callback do nothing: no sums, no pictures.
    """

    def __init__(self, n_bins: int = 15, enabled: bool = True) -> None:
        """
        Args:
            n_bins: equal-width confidence bins of the reliability diagram.
            enabled: draw at every validation and at test; false (``--figures.enabled false``):
                no sums, no pictures.
        """
        self.n_bins, self.enabled = n_bins, enabled
        self._state: dict[str, tuple[TopLabelBins, MulticlassConfusionMatrix]] = {}
        self.finished: dict[str, dict[str, torch.Tensor]] = {}

    def _update(self, stage: str, pl_module: L.LightningModule, outputs: Any, calibrated: bool) -> None:
        if not self.enabled:
            return
        if stage not in self._state:
            num_classes = int(pl_module.hparams.num_classes)
            self._state[stage] = (TopLabelBins(self.n_bins).to(pl_module.device),
                                  MulticlassConfusionMatrix(num_classes).to(pl_module.device))  # fmt: skip
        probs = pl_module.calibration.probabilities(outputs["logits"], calibrated=calibrated)
        for metric in self._state[stage]:
            metric.update(probs, outputs["labels"])

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if not trainer.sanity_checking:
            self._update("val", pl_module, outputs, calibrated=False)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        self._update("test", pl_module, outputs, calibrated=False)
        if pl_module.calibration.fitted:
            self._update("test_calibrated", pl_module, outputs, calibrated=True)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer, pl_module, ["val"])

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer, pl_module, ["test", "test_calibrated"])

    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, stages: list[str]) -> None:
        for stage in stages:
            if stage not in self._state:
                continue
            bins_metric, confusion_metric = self._state.pop(stage)
            bins, confusion = bins_metric.compute(), confusion_metric.compute()  # synced
            self.finished[stage] = {**{k: v.cpu() for k, v in bins.items()}, "confusion": confusion.cpu()}
            experiment = getattr(trainer.logger, "experiment", None)
            if trainer.is_global_zero and hasattr(experiment, "add_image"):
                where = f"{stage} (epoch {trainer.current_epoch}, step {trainer.global_step})"
                for name, image in stage_images(bins, confusion, pl_module.hparams.class_names, where):
                    experiment.add_image(f"{stage}/{name}", image, trainer.global_step, dataformats="HWC")


def stage_images(bins: dict[str, torch.Tensor], confusion: torch.Tensor,
                 class_names: list[str] | None, where: str) -> list[tuple[str, Any]]:  # fmt: skip
    """(tag, RGB array) for each picture of one stage."""
    from softcal.calibration import figures  # matplotlib is imported only when drawing

    made = [
        ("reliability_diagram",
         figures.reliability_diagram(**bins, title=f"Reliability diagram, {where}")),
        ("confidence_histogram",
         figures.confidence_histogram(**bins, title=f"Confidence histogram, {where}")),
        ("confusion_matrix", figures.confusion_matrix_figure(
            confusion, class_names or [], title=f"Confusion matrix, {where}")),
    ]  # fmt: skip
    return [(name, figures.to_rgb_array(fig)) for name, fig in made]
