"""The calibrator interface: a fitted map from a model's logits to calibrated probabilities.

Every method (:mod:`softcal.calibration.calibrators`, :mod:`softcal.calibration.binning_calibrators`)
subclasses :class:`Calibrator`: it is fitted on held-out (validation) logits, applied unchanged to
any other logits, and keeps everything it fitted in its extra state (a dict with the method's
name), from which :func:`softcal.calibration.calibrators.calibrator_from_state` rebuilds it.
An unfitted calibrator is the identity: its forward is the plain softmax.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from softcal.calibration.affine_fit import single_threaded
from softcal.errors import SoftcalError


def check_fit_inputs(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[
    torch.Tensor, torch.Tensor
]:  # fmt: skip
    """Validated float64 CPU logits (N, K) and int64 labels (N,); a one-line SoftcalError if not."""
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise SoftcalError(
            f"calibrator: logits of shape {tuple(logits.shape)} do not match {num_classes} classes; "
            "fit on the (N, num_classes) logits of the same model"
        )
    if labels.shape != (logits.shape[0],):
        raise SoftcalError(
            f"calibrator: {tuple(labels.shape)} labels for {logits.shape[0]} logit rows; "
            "pass one label per row"
        )
    if logits.shape[0] == 0:
        raise SoftcalError("calibrator: no validation logits to fit on; fit on a non-empty validation split")
    logits = logits.detach().to("cpu", torch.float64, copy=True)
    labels = labels.detach().to("cpu", torch.long, copy=True)
    if not torch.isfinite(logits).all():
        bad = int((~torch.isfinite(logits)).any(dim=1).sum())
        raise SoftcalError(
            f"calibrator: {bad} of {len(logits)} validation logit rows hold NaN or infinity; fix the model "
            "(did its training diverge?) before calibrating it"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise SoftcalError(
            f"calibrator: labels outside 0..{num_classes - 1}; the labels do not belong to these logits"
        )
    return logits, labels


def compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """float32 for half/bf16/float32 logits (what export runs in), float64 for float64 logits."""
    return torch.promote_types(logits.dtype, torch.float32)


class Calibrator(torch.nn.Module):
    """A fitted map from logits (N, K) to calibrated probabilities (N, K)."""

    method: ClassVar[str]
    exportable: ClassVar[bool]

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise SoftcalError(f"calibrator: num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self._fitted = False

    @property
    def fitted(self) -> bool:
        return self._fitted

    def fit(self, logits: torch.Tensor, labels: torch.Tensor) -> Calibrator:
        """Fit on held-out logits and labels (in float64, on the CPU); returns self."""
        # Fitting needs autograd: it may be called from a hook under no_grad or inference_mode,
        # on logits made in inference mode (check_fit_inputs copies them into normal tensors).
        with torch.inference_mode(False), torch.enable_grad(), single_threaded():
            self._fit(*check_fit_inputs(logits, labels, self.num_classes))
        return self

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities: float32 (N, K), rows summing to 1, on the logits' device."""
        return F.softmax(self.calibrated_logits(logits), dim=1).float()

    def calibrated_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits whose softmax is :meth:`forward`; only the logit transforms have them."""
        raise SoftcalError(
            f"calibrator: {self.method} is not a logit transform and cannot be exported; "
            "use temperature, vector, matrix or top_label_beta"
        )

    def describe(self) -> str:
        raise NotImplementedError

    def _fit(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        """The fitted values (tensors, floats, ints) that :meth:`get_extra_state` stores."""
        raise NotImplementedError

    def _load_params(self, params: dict[str, Any]) -> None:
        raise NotImplementedError

    def get_extra_state(self) -> dict[str, Any]:
        params = {k: v.detach().cpu().clone() if torch.is_tensor(v) else v for k, v in self._params().items()}
        return {"method": self.method, "num_classes": self.num_classes, "fitted": self._fitted, **params}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("method") != self.method:
            found = state.get("method") if isinstance(state, dict) else type(state).__name__
            raise SoftcalError(
                f"calibrator: the saved state is for {found!r}, not {self.method!r}; rebuild it with "
                "calibrator_from_state(state)"
            )
        if state["num_classes"] != self.num_classes:
            raise SoftcalError(
                f"calibrator: the saved {self.method} calibrator has {state['num_classes']} classes, this "
                f"one {self.num_classes}; load a calibrator fitted for this model"
            )
        self._load_params({k: v for k, v in state.items() if k not in ("method", "num_classes", "fitted")})
        self._fitted = bool(state["fitted"])

    def _not_fitted(self, name: str) -> str:
        return f"{name} (not fitted: uncalibrated softmax)"
