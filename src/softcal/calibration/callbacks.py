"""Lightning callbacks for calibration: fit the temperature, draw the pictures.

Both read what a LightningModule's ``validation_step`` / ``test_step`` return -
``{"logits": ..., "labels": ...}`` - so they work in any Trainer with any module that does so.
The temperature lives in the module (``set_temperature`` / ``fitted_temperature``), which makes
it part of every checkpoint the Trainer writes; nothing is rewritten afterwards.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from softcal.calibration.calibrators import METHODS, Calibrator, make_calibrator
from softcal.calibration.metrics import TopLabelBins
from softcal.calibration.temperature import fit_temperature


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
    """Fit the softmax temperature on the validation logits at the end of every validation.

    The module stores T (a buffer), so each checkpoint carries the T fitted for its own
    weights: the best checkpoint and ``last.ckpt`` never disagree about what T belongs to
    which weights. When a training epoch starts the module is marked "not fitted" again - its
    weights are about to move - so a checkpoint saved mid-epoch says so instead of carrying a
    stale T. Every process fits the same T from the logits of all processes.

    With ``method`` other than ``"temperature"`` (``--calibration.method``), that calibrator is
    fitted too, on the same logits, and stored with ``pl_module.set_calibrator`` under the same
    rules; T is still fitted and reported, so runs of any method can be compared on it.
    ``enabled=False`` (``--calibration.enabled false``) makes the callback do nothing at all: it
    stays in the Trainer's list, as its config group says, and the module keeps "not fitted".
    """

    def __init__(self, method: str = "temperature", enabled: bool = True) -> None:
        """
        Args:
            method: the calibration the run stores (temperature, vector, matrix, histogram or
                isotonic); T is fitted whatever it is.
            enabled: fit at every validation; false: fit nothing (--calibrate false).
        """
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown calibrator {method!r}; choose one of {', '.join(METHODS)}")
        self.method = method
        self.enabled = enabled

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if self.enabled:  # disabled: keep no logits (they would only cost memory)
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        pl_module.set_temperature(None)
        if hasattr(pl_module, "set_calibrator"):  # also a calibrator restored from a run resumed
            pl_module.set_calibrator(None)       # with another method: it is stale too

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.sanity_checking or not self._logits:
            return
        logits = gather_from_all_processes(pl_module, torch.cat(self._logits))
        labels = gather_from_all_processes(pl_module, torch.cat(self._labels))
        self._logits, self._labels = [], []
        temperature = fit_temperature(logits, labels)
        pl_module.set_temperature(temperature)
        if temperature is not None:  # val/temperature per epoch: how overconfident it grows
            pl_module.log("val/temperature", temperature, sync_dist=False)
        if self.method != "temperature":
            pl_module.set_calibrator(fit_stored_calibrator(self.method, logits, labels))


#: The name this callback had before its config group (``calibration:``) existed; kept for
#: code that builds it by hand, until every caller says FitCalibration.
TemperatureScaling = FitCalibration


def fit_stored_calibrator(method: str, logits: torch.Tensor, labels: torch.Tensor) -> Calibrator | None:
    """A fitted calibrator of ``method``, or None ("not fitted", like a T that failed) when the
    logits are not finite or the fit fails: a diverged model stores nothing rather than a
    broken calibrator."""
    if len(labels) == 0 or not torch.isfinite(logits).all():
        return None
    calibrator = make_calibrator(method, logits.shape[1]).fit(logits, labels)  # fit copies to the CPU
    return calibrator if calibrator.fitted else None


class CalibrationFigures(L.Callback):
    """Reliability diagram, confidence histogram and confusion matrix in TensorBoard, at the
    end of every validation and of testing (raw and, at test, calibrated by the run's method).

    Keeps its own per-bin sums and confusion counts (exact, constant in memory, summed across
    processes when drawn) from the logits each step returns. ``finished[stage]`` keeps the last
    drawn state of each stage (bin sums and ``confusion``), for pictures saved elsewhere; with
    no logger nothing is drawn, but ``finished`` is still filled. ``enabled=False``
    (``--figures.enabled false``) makes the callback do nothing: no sums, no pictures.
    """

    def __init__(self, enabled: bool = True, n_bins: int = 15) -> None:
        """
        Args:
            enabled: draw at every validation and at test; false: draw nothing (--figures false).
            n_bins: equal-width confidence bins of the reliability diagram.
        """
        if type(enabled) is int:  # CalibrationFigures(n_bins), as callers wrote it before
            enabled, n_bins = True, enabled  # `enabled` came first; until they pass n_bins=
        self.enabled = enabled
        self.n_bins = n_bins
        self._state: dict[str, tuple[TopLabelBins, MulticlassConfusionMatrix]] = {}
        self.finished: dict[str, dict[str, torch.Tensor]] = {}

    def _update(self, stage: str, pl_module: L.LightningModule, outputs: Any, calibrated: bool) -> None:
        if not self.enabled:
            return
        if stage not in self._state:
            num_classes = int(pl_module.hparams.num_classes)
            self._state[stage] = (TopLabelBins(self.n_bins).to(pl_module.device),
                                  MulticlassConfusionMatrix(num_classes).to(pl_module.device))  # fmt: skip
        probs = pl_module.probabilities(outputs["logits"], calibrated=calibrated)
        for metric in self._state[stage]:
            metric.update(probs, outputs["labels"])

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if not trainer.sanity_checking:
            self._update("val", pl_module, outputs, calibrated=False)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        self._update("test", pl_module, outputs, calibrated=False)
        method = getattr(pl_module, "calibration_method", pl_module.fitted_temperature)()
        if method is not None:
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
