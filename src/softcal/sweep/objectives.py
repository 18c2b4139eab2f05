"""What a trial is scored on, measured on the validation split only.

    acc   validation accuracy (maximised): ``val/acc``, as the module logs it
    nll   validation NLL after temperature scaling (minimised): ``val_ts/nll``
    ece   validation ECE after temperature scaling (minimised): ``val_ts/ece``

"After temperature scaling" is the calibration a run ships with by default: T is fitted on the
validation logits (:func:`softcal.calibration.temperature.fit_temperature`, the fit every run
makes) and the same logits are scored at ``softmax(logits / T)``. It is always temperature
scaling, whatever ``--calibrator`` a config stores, so trials compare on one footing; one
scalar fitted on thousands of logits barely flatters the split it was fitted on.

The values are those of the validation the tested checkpoint came from (the best one by the
checkpoint's monitor, ``val/acc`` by default), so a trial's objectives describe the weights
its run directory holds; the test split is never read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch

from softcal.calibration.callbacks import _StepOutputs, gather_from_all_processes
from softcal.calibration.metrics import ExpectedCalibrationError, NegativeLogLikelihood
from softcal.calibration.temperature import fit_temperature
from softcal.errors import SoftcalError
from softcal.runs.checkpoints import load_checkpoint


@dataclass(frozen=True)
class Objective:
    name: str  # on the command line
    metric: str  # as logged, and in the report
    direction: str  # Optuna's: maximize | minimize
    label: str  # for people: axes, tables


OBJECTIVES = {
    "acc": Objective("acc", "val/acc", "maximize", "validation accuracy"),
    "nll": Objective("nll", "val_ts/nll", "minimize", "validation NLL after temperature scaling"),
    "ece": Objective("ece", "val_ts/ece", "minimize", "validation ECE after temperature scaling"),
}
DEFAULT_OBJECTIVES = "acc,nll"


def parse_objectives(text: str) -> tuple[Objective, ...]:
    """``acc,nll`` -> the objectives, in that order (the first is the one pruning watches)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in OBJECTIVES]
    if unknown or not names:
        raise SoftcalError(
            f"--objectives {text!r}: {'unknown objective ' + repr(unknown[0]) if unknown else 'none given'};"
            f" choose from {', '.join(OBJECTIVES)}, comma-separated (e.g. {DEFAULT_OBJECTIVES})"
        )
    if len(set(names)) < len(names):
        raise SoftcalError(f"--objectives {text!r}: an objective is named twice; name each once")
    return tuple(OBJECTIVES[name] for name in names)


class ValidationObjectives(_StepOutputs):
    """Logs ``val_ts/nll`` and ``val_ts/ece`` at every validation (so pruning and TensorBoard
    see them) and keeps every validation's objectives, by global step, for
    :meth:`values_for`."""

    def __init__(self, objectives: Sequence[Objective]) -> None:
        super().__init__()
        self.objectives = tuple(objectives)
        self.history: dict[int, dict[str, float]] = {}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._logits:
            return
        logits = gather_from_all_processes(pl_module, torch.cat(self._logits))
        labels = gather_from_all_processes(pl_module, torch.cat(self._labels))
        self._logits, self._labels = [], []
        for name, value in temperature_scaled(logits, labels, pl_module.hparams.calibration_bins).items():
            pl_module.log(name, float(value), sync_dist=False)  # every process holds the gathered logits

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After the module logged val/acc; before the checkpoint callbacks (Lightning runs them
        last), which save at this same global step."""
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        self.history[trainer.global_step] = {
            o.metric: float(metrics[o.metric]) if o.metric in metrics else math.nan for o in self.objectives
        }

    def values_for(self, checkpoint: str | None) -> dict[str, float]:
        """The objectives of the validation that ``checkpoint`` was saved at; those of the last
        validation when the run saved none (the final weights are what it tested)."""
        if not self.history:
            raise SoftcalError("the run validated no epoch, so it has no objectives; let it train an epoch")
        if not checkpoint:
            return self.history[max(self.history)]
        step = int(load_checkpoint(checkpoint).get("global_step", -1))
        if step not in self.history:  # a checkpoint not saved after a validation
            return self.history[max(self.history)]
        return self.history[step]


def temperature_scaled(logits: torch.Tensor, labels: torch.Tensor, n_bins: int) -> dict[str, torch.Tensor]:
    """NLL and ECE of ``softmax(logits / T)``, T fitted on these logits; NaN when T cannot be
    fitted (non-finite logits), which fails the trial rather than ranking it."""
    logits, labels = logits.detach().float().cpu(), labels.detach().long().cpu()  # a few MB at most
    temperature = fit_temperature(logits, labels)
    if temperature is None:
        nan = torch.tensor(math.nan)
        return {"val_ts/nll": nan, "val_ts/ece": nan}
    probabilities = torch.softmax(logits / temperature, dim=1)
    nll = NegativeLogLikelihood()(probabilities, labels)
    ece = ExpectedCalibrationError(n_bins)(probabilities, labels)
    return {"val_ts/nll": nll, "val_ts/ece": ece}


def describe(objectives: Sequence[Objective]) -> list[dict[str, Any]]:
    """The objectives as the study and the report store them."""
    return [{"name": o.name, "metric": o.metric, "direction": o.direction} for o in objectives]
