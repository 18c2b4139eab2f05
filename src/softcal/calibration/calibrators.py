"""Post-hoc calibrators: maps from a trained model's logits to calibrated probabilities.

Each is fitted on held-out (validation) logits and applied unchanged to any other logits:

* ``temperature``: softmax(z / T), one scalar (Guo et al. 2017).
* ``vector``: softmax(w * z + b), w and b in R^K (Guo et al. 2017).
* ``matrix``: softmax(W z + b) with ODIR, the off-diagonal and intercept regularisation of Kull
  et al. 2019 ("Beyond temperature scaling"), lambdas chosen by k-fold cross-validation.
  ``matrix_unregularised`` is the same without the penalty, kept to show why it is needed.
* ``histogram`` / ``isotonic``: one-vs-rest maps of each softmax probability, renormalised
  (in :mod:`softcal.calibration.binning_calibrators`).
* ``top_label_beta``: temperature scaling, then a monotone (beta) map of the top probability
  with the other classes rescaled in proportion (in :mod:`softcal.calibration.top_label`).

The first three and ``top_label_beta`` are logit transforms (``exportable``): ONNX or
TorchScript can carry them as a layer after the net. Everything fitted lives in the module's
extra state (a dict with the method's name), so a state_dict - or a Lightning checkpoint
holding the module - rebuilds it exactly. An unfitted calibrator is the identity: its forward
is the plain softmax.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from softcal.calibration.affine_fit import affine_logits, cross_validate_odir, fit_affine
from softcal.calibration.binning_calibrators import HistogramCalibrator, IsotonicCalibrator
from softcal.calibration.calibrator_base import Calibrator, compute_dtype
from softcal.calibration.temperature import fit_temperature
from softcal.calibration.top_label import TopLabelBetaCalibrator
from softcal.errors import SoftcalError

#: The methods ``evaluate.py --calibrators all`` compares and a run may store.
METHODS: tuple[str, ...] = (
    "temperature", "vector", "matrix", "histogram", "isotonic", "top_label_beta",
)  # fmt: skip
#: METHODS plus the unregularised matrix scaling, shown in the comparison table only: it
#: overfits (Guo et al. 2017 report 25% ECE on CIFAR-100), which is the point of showing it.
ALL_METHODS_FOR_COMPARISON: tuple[str, ...] = (*METHODS, "matrix_unregularised")


class TemperatureCalibrator(Calibrator):
    """softmax(z / T). A fit that fails (fit_temperature returns None) leaves T = 1, not fitted."""

    method = "temperature"
    exportable = True

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.temperature = 1.0

    def _fit(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        temperature = fit_temperature(logits, labels)
        self.temperature = 1.0 if temperature is None else temperature
        self._fitted = temperature is not None

    def calibrated_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.to(compute_dtype(logits)) / self.temperature

    def describe(self) -> str:
        if not self._fitted:
            return self._not_fitted("temperature scaling")
        return f"temperature scaling (T={self.temperature:.4g})"

    def _params(self) -> dict[str, Any]:
        return {"temperature": float(self.temperature)}

    def _load_params(self, params: dict[str, Any]) -> None:
        self.temperature = float(params["temperature"])


def _affine_on(logits: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The fitted affine map (vector or matrix scaling) on the logits' device, in their float type."""
    dtype = compute_dtype(logits)
    return affine_logits(logits.to(dtype), weight.to(logits.device, dtype), bias.to(logits.device, dtype))


class VectorCalibrator(Calibrator):
    """softmax(w * z + b), w and b in R^K; NLL by L-BFGS in float64, started at w = 1/T, b = 0."""

    method = "vector"
    exportable = True

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.weight = torch.ones(num_classes, dtype=torch.float64)
        self.bias = torch.zeros(num_classes, dtype=torch.float64)

    def _fit(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        start = 1.0 / (fit_temperature(logits, labels) or 1.0)
        weight, bias = fit_affine(logits, labels, start * torch.ones(self.num_classes, dtype=torch.float64))
        if weight is not None:
            self.weight, self.bias, self._fitted = weight, bias, True

    def calibrated_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return _affine_on(logits, self.weight, self.bias)

    def describe(self) -> str:
        if not self._fitted:
            return self._not_fitted("vector scaling")
        w = self.weight
        return f"vector scaling (w in [{float(w.min()):.3g}, {float(w.max()):.3g}])"

    def _params(self) -> dict[str, Any]:
        return {"weight": self.weight, "bias": self.bias}

    def _load_params(self, params: dict[str, Any]) -> None:
        self.weight, self.bias = params["weight"].double(), params["bias"].double()


class MatrixCalibrator(Calibrator):
    """softmax(W z + b) with ODIR: NLL + lambda_od * mean of the K(K-1) squared off-diagonal
    entries of W + lambda_b * mean of the K squared intercepts (Kull et al. 2019, eq. 9).

    The lambdas are chosen by 5-fold cross-validation on the fitting data (held-out NLL) over
    :data:`LAMBDA_GRID`; too little data for that (under 10 rows) takes lambda_od = lambda_b =
    1e-2. W starts at I / T (temperature scaling), b at 0.
    """

    method = "matrix"
    exportable = True
    regularised: ClassVar[bool] = True

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.weight = torch.eye(num_classes, dtype=torch.float64)
        self.bias = torch.zeros(num_classes, dtype=torch.float64)
        self.lambda_od = self.lambda_b = 0.0

    def _fit(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        start = torch.eye(self.num_classes, dtype=torch.float64) / (fit_temperature(logits, labels) or 1.0)
        if self.regularised:
            self.lambda_od, self.lambda_b = cross_validate_odir(logits, labels, start)
        weight, bias = fit_affine(logits, labels, start, self.lambda_od, self.lambda_b)
        if weight is not None:
            self.weight, self.bias, self._fitted = weight, bias, True

    def calibrated_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return _affine_on(logits, self.weight, self.bias)

    def describe(self) -> str:
        name = "matrix scaling" + ("" if self.regularised else ", unregularised")
        if not self._fitted:
            return self._not_fitted(name)
        if not self.regularised:
            return "matrix scaling (unregularised)"
        return f"matrix scaling (ODIR, lambda_od={self.lambda_od:.0e}, lambda_b={self.lambda_b:.0e})"

    def _params(self) -> dict[str, Any]:
        lambdas = {"lambda_od": self.lambda_od, "lambda_b": self.lambda_b}
        return {"weight": self.weight, "bias": self.bias, **lambdas}

    def _load_params(self, params: dict[str, Any]) -> None:
        self.weight, self.bias = params["weight"].double(), params["bias"].double()
        self.lambda_od, self.lambda_b = float(params["lambda_od"]), float(params["lambda_b"])


class UnregularisedMatrixCalibrator(MatrixCalibrator):
    """Matrix scaling by plain NLL: K^2 + K free parameters, which overfit a small validation set."""

    method = "matrix_unregularised"
    regularised = False


def _registry() -> dict[str, type[Calibrator]]:
    classes: list[type[Calibrator]] = [
        TemperatureCalibrator, VectorCalibrator, MatrixCalibrator, UnregularisedMatrixCalibrator,
        HistogramCalibrator, IsotonicCalibrator, TopLabelBetaCalibrator,
    ]  # fmt: skip
    return {cls.method: cls for cls in classes}


def exportable_methods() -> tuple[str, ...]:
    """The METHODS that are logit transforms, in METHODS' order: what an exported graph carries."""
    registry = _registry()
    return tuple(method for method in METHODS if registry[method].exportable)


def make_calibrator(method: str, num_classes: int) -> Calibrator:
    """An unfitted calibrator of ``method`` (one of ALL_METHODS_FOR_COMPARISON) for K classes."""
    registry = _registry()
    if method not in registry:
        raise SoftcalError(
            f"unknown calibrator {method!r}; choose one of {', '.join(ALL_METHODS_FOR_COMPARISON)}"
        )
    return registry[method](num_classes)


def calibrator_from_state(state: dict[str, Any]) -> Calibrator:
    """Rebuild a calibrator from its :meth:`Calibrator.get_extra_state` dict."""
    if not isinstance(state, dict) or "method" not in state or "num_classes" not in state:
        raise SoftcalError("calibrator: the saved state is not a calibrator's; refit the calibrator")
    calibrator = make_calibrator(str(state["method"]), int(state["num_classes"]))
    calibrator.set_extra_state(state)
    return calibrator
