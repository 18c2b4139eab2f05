"""The one calibration object of a run: what was fitted, how it is applied, what it is called.

A :class:`RunCalibration` lives in the Classifier (``model.calibration``), so every checkpoint
carries the calibration fitted for exactly its own weights. It answers every question about
calibration that training, evaluate, predict and export ask:

* ``method``: the calibration the calibrated numbers use - ``"temperature"`` (the default),
  ``"vector"``, ``"matrix"``, ``"histogram"``, ``"isotonic"``, ``"top_label_beta"`` - or None
  when nothing is fitted (a run trained with calibration off, a checkpoint saved mid-epoch, a
  fit that diverged);
* ``temperature``: the T fitted on the same logits whatever the method (runs of any method
  are compared on it), or None;
* ``probabilities(logits, calibrated)``, ``calibrated_logits(logits)``: applying it;
* ``describe()`` and ``label()``: its name in a sentence and in a legend;
* ``conformal(method, alpha)``: the split-conformal thresholds fitted with it on the same
  validation split, on the probabilities it calibrates (predict's ``--conformal-alpha``;
  :mod:`softcal.calibration.conformal_thresholds`), or None.

The state is one entry, ``calibration._extra_state`` = ``{"temperature": float | None,
"calibrator": <the fitted calibrator's own state> | None, "conformal": <list of conformal
predictor states> | None}``; checkpoints without ``"conformal"`` store no thresholds.
Checkpoints written before this object existed stored T in two buffers (``temperature``,
``temperature_fitted``) and another method in ``calibrator._extra_state``:
:func:`upgrade_state_dict` maps those keys.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from softcal.calibration.calibrator_base import Calibrator
from softcal.calibration.calibrators import (
    METHODS,
    TemperatureCalibrator,
    calibrator_from_state,
    make_calibrator,
)
from softcal.calibration.conformal_thresholds import ConformalThresholds
from softcal.calibration.temperature import fit_temperature
from softcal.conformal import ConformalPredictor
from softcal.errors import SoftcalError

#: What a run with nothing fitted applies, in words.
NOT_FITTED = "not fitted: raw softmax (T = 1)"


class RunCalibration(nn.Module):
    """The calibration a run fitted on its validation logits, or none ("not fitted").

    The fitted calibrator is deliberately not a registered submodule: its parameters would be
    state_dict keys that differ by method, and an empty model could not load a checkpoint of
    another method strictly. Everything is in the extra state instead.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.__dict__["_calibrator"] = None  # not nn.Module.__setattr__: see the class docstring
        self._temperature: float | None = None
        self._conformal: ConformalThresholds | None = None

    # ------------------------------------------------------------------ what is fitted
    @property
    def method(self) -> str | None:
        """The method calibrated probabilities use; None: nothing fitted (raw softmax)."""
        return self._calibrator.method if self._calibrator is not None else None

    @property
    def temperature(self) -> float | None:
        """T fitted on the validation logits (whatever the method), or None."""
        return self._temperature

    @property
    def calibrator(self) -> Calibrator | None:
        """The fitted calibrator that is applied (a TemperatureCalibrator by default), or None."""
        return self._calibrator

    @property
    def fitted(self) -> bool:
        return self._calibrator is not None

    @property
    def exportable(self) -> bool:
        """Whether an exported graph can carry it: a logit transform, or nothing fitted."""
        return self._calibrator is None or self._calibrator.exportable

    @property
    def conformal_thresholds(self) -> ConformalThresholds | None:
        """Every stored conformal predictor, or None (an older checkpoint, nothing fitted)."""
        return self._conformal

    def conformal(self, method: str, alpha: float) -> ConformalPredictor | None:
        """The conformal predictor of ``method`` at ``alpha`` fitted on the calibrated
        validation probabilities, or None when that one is not stored."""
        return None if self._conformal is None else self._conformal.get(method, alpha)

    def fit(self, logits: torch.Tensor, labels: torch.Tensor, method: str = "temperature") -> None:
        """Fit T and ``method`` on held-out logits, then the conformal thresholds on the
        probabilities they calibrate. A fit that fails (non-finite logits, a diverging
        optimiser) leaves that part "not fitted" rather than storing a broken map."""
        if method not in METHODS:
            raise SoftcalError(f"unknown calibrator {method!r}; choose one of {', '.join(METHODS)}")
        temperature = fit_temperature(logits, labels)
        calibrator: Calibrator | None = None
        if method == "temperature":
            calibrator = temperature_calibrator(temperature, self.num_classes)
        elif len(labels) > 0 and torch.isfinite(logits).all():
            calibrator = make_calibrator(method, self.num_classes).fit(logits, labels)
        if calibrator is None or not calibrator.fitted:  # the method failed: T, when it was fitted
            calibrator = temperature_calibrator(temperature, self.num_classes)
        self.set(temperature, calibrator)
        with torch.no_grad():  # after set: the thresholds belong to what predict will print
            self._conformal = ConformalThresholds.fit(self.probabilities(logits), labels)

    def set(self, temperature: float | None, calibrator: Calibrator | None) -> None:
        """Store a fitted T and calibrator (None: not fitted). Any stored conformal thresholds
        are dropped: they were fitted on the probabilities of the calibration this replaces."""
        if calibrator is not None and not calibrator.fitted:
            raise ValueError(f"a {calibrator.method} calibrator must be fitted before it is stored")
        # T as float32, the precision the logits it divides are in (and a checkpoint's buffer had).
        self._temperature = None if temperature is None else float(torch.tensor(temperature).float())
        self.__dict__["_calibrator"] = calibrator
        self._conformal = None

    def use_temperature(self, temperature: float | None) -> None:
        """Store temperature scaling with this T (None: not fitted)."""
        self.set(temperature, temperature_calibrator(temperature, self.num_classes))

    def reset(self) -> None:
        """Mark "not fitted": the weights are about to move, so the fit no longer belongs to them."""
        self.set(None, None)

    # ------------------------------------------------------------------ applying it
    def probabilities(self, logits: torch.Tensor, calibrated: bool = True) -> torch.Tensor:
        """Calibrated float32 probabilities; the raw softmax with ``calibrated=False`` or when
        nothing is fitted. Computed outside autocast: under bf16-mixed a matrix calibrator's
        matmul would otherwise run in bf16 while predict and export compute it in float32."""
        if not calibrated or self._calibrator is None:
            return torch.softmax(logits.float(), dim=1)
        with torch.autocast(logits.device.type, enabled=False):
            return self._calibrator(logits.float())

    def calibrated_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits whose softmax is :meth:`probabilities` (what an exported graph carries); a
        one-line SoftcalError for histogram and isotonic, which are not logit transforms."""
        if self._calibrator is None:
            return logits.float()
        return self._calibrator.calibrated_logits(logits.float())

    # ------------------------------------------------------------------ naming it
    def describe(self) -> str:
        """One line for reports: ``temperature scaling, T = 1.0710``, ``vector scaling (...)``."""
        if self._calibrator is None:
            return NOT_FITTED
        if self.method == "temperature":
            return f"temperature scaling, T = {self._temperature:.4f}"
        return self._calibrator.describe()

    def label(self) -> str:
        """A short legend or column header: ``T = 1.071``, ``vector``, ``T = 1, not fitted``."""
        if self._calibrator is None:
            return "T = 1, not fitted"
        return f"T = {self._temperature:.3f}" if self.method == "temperature" else str(self.method)

    def summary(self) -> dict[str, str] | None:
        """What results.json says about it: method and description; None when nothing is fitted."""
        return None if self.method is None else {"method": self.method, "description": self.describe()}

    # ------------------------------------------------------------------ state
    def get_extra_state(self) -> dict[str, Any]:
        state = self._calibrator.get_extra_state() if self._calibrator is not None else None
        conformal = self._conformal.state() if self._conformal is not None else None
        return {"temperature": self._temperature, "calibrator": state, "conformal": conformal}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        calibrator = state.get("calibrator")
        self.set(state.get("temperature"), calibrator_from_state(calibrator) if calibrator else None)
        self._conformal = ConformalThresholds.from_state(state.get("conformal"))  # absent: None


def temperature_calibrator(temperature: float | None, num_classes: int) -> TemperatureCalibrator | None:
    """A fitted TemperatureCalibrator holding ``temperature`` rounded to float32, or None."""
    if temperature is None:
        return None
    calibrator = TemperatureCalibrator(num_classes)
    calibrator.set_extra_state({"method": "temperature", "num_classes": num_classes, "fitted": True,
                                "temperature": float(torch.tensor(temperature).float())})  # fmt: skip
    return calibrator


#: The keys checkpoints written before RunCalibration held the calibration in.
OLD_KEYS = ("temperature", "temperature_fitted", "calibrator._extra_state")


def upgrade_state_dict(state_dict: dict[str, Any], prefix: str, num_classes: int) -> None:
    """Map an old checkpoint's ``temperature``/``temperature_fitted`` buffers and optional
    ``calibrator._extra_state`` onto ``calibration._extra_state``, in place."""
    if prefix + "temperature" not in state_dict or prefix + "calibration._extra_state" in state_dict:
        return
    value = state_dict.pop(prefix + "temperature")
    fitted = bool(state_dict.pop(prefix + "temperature_fitted", torch.tensor(False)))
    stored = state_dict.pop(prefix + "calibrator._extra_state", None)
    temperature = float(value) if fitted else None
    if stored is None:
        held = temperature_calibrator(temperature, num_classes)
        stored = held.get_extra_state() if held is not None else None
    state_dict[prefix + "calibration._extra_state"] = {"temperature": temperature, "calibrator": stored}
