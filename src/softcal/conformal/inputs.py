"""Checked inputs of the conformal functions: alphas, probability matrices, labels, seeds.

Every check raises a one-line :class:`~softcal.errors.SoftcalError` that names the fix. Tensors
come back as CPU tensors: probabilities in float64 (every conformal computation is done in
float64), labels in int64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from softcal.errors import SoftcalError

#: How far a probability row's sum may be from 1 (a float16 or float32 softmax is off by far
#: less; logits or unnormalised scores are off by far more).
ROW_SUM_TOLERANCE = 1e-3


def check_alpha(alpha: object) -> float:
    """``alpha`` as a float in the open interval (0, 1), the miscoverage level."""
    try:
        value = float(alpha)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SoftcalError(
            f"conformal alpha {alpha!r} is not a number; give the miscoverage, e.g. 0.1 for 90% coverage"
        ) from None
    if isinstance(alpha, bool) or not 0.0 < value < 1.0:
        raise SoftcalError(
            f"conformal alpha {alpha!r} is outside (0, 1); give the miscoverage, e.g. 0.1 for 90% coverage"
        )
    return value


def parse_alphas(text: str) -> list[float]:
    """``"0.1,0.05,0.01"`` -> ``[0.1, 0.05, 0.01]``, in the order given (spaces allowed)."""
    parts = [part.strip() for part in str(text).split(",")]
    if not any(parts):
        raise SoftcalError(
            f"no conformal alpha in {text!r}; give one or more in (0, 1), comma-separated, e.g. 0.1,0.05"
        )
    return [check_alpha(part) for part in parts]


def check_seed(seed: object) -> int:
    """A seed for the randomised methods: a whole number >= 0."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SoftcalError(f"conformal seed must be a whole number >= 0, got {seed!r}")
    return seed


def as_probabilities(probs: object, *, allow_empty: bool = False) -> Tensor:
    """An (N, K) matrix of class probabilities as a float64 CPU tensor, or a one-line error.

    Rows must be finite, in [0, 1] and sum to 1 within :data:`ROW_SUM_TOLERANCE`: the methods
    are defined on probabilities, and logits passed by mistake would give sets without meaning.
    """
    tensor = torch.as_tensor(probs).detach().cpu()
    if tensor.dim() != 2 or tensor.shape[1] == 0:
        raise SoftcalError(
            f"conformal prediction needs probabilities of shape (N, K), got shape {tuple(tensor.shape)};"
            " pass one row of class probabilities per example"
        )
    tensor = tensor.to(torch.float64)
    if len(tensor) == 0 and not allow_empty:
        raise SoftcalError(
            "conformal calibration needs at least one validation example; the validation split is empty"
        )
    in_range = torch.isfinite(tensor).all(dim=1) & (tensor >= 0).all(dim=1) & (tensor <= 1).all(dim=1)
    summed = (tensor.sum(dim=1) - 1).abs() <= ROW_SUM_TOLERANCE
    bad = int((~(in_range & summed)).sum())
    if bad:
        raise SoftcalError(
            f"conformal prediction needs probabilities (finite, in [0, 1], rows summing to 1); {bad} of"
            f" {len(tensor)} rows are not - pass softmax(logits), not logits"
        )
    return tensor


def as_labels(labels: object, num_rows: int, num_classes: int) -> Tensor:
    """Class indices 0..K-1, one per probability row, as an int64 CPU tensor."""
    tensor = torch.as_tensor(labels).detach().cpu()
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise SoftcalError(f"conformal labels must be class indices (integers), got {tensor.dtype}")
    if tensor.dim() != 1 or len(tensor) != num_rows:
        raise SoftcalError(
            f"conformal prediction needs one label per probability row, got labels of shape"
            f" {tuple(tensor.shape)} for {num_rows} rows"
        )
    tensor = tensor.to(torch.int64)
    if len(tensor) and (int(tensor.min()) < 0 or int(tensor.max()) >= num_classes):
        raise SoftcalError(
            f"conformal labels run {int(tensor.min())}..{int(tensor.max())}, expected 0..{num_classes - 1}"
            " (one per probability column); the labels do not belong to these probabilities"
        )
    return tensor


def check_raps_parameters(method: str, k_reg: object, lam: object) -> tuple[int | None, float | None]:
    """Given RAPS parameters, checked: k_reg a whole number >= 0, lam a finite number >= 0; both
    only for ``raps``."""
    if method != "raps":
        if k_reg is not None or lam is not None:
            raise SoftcalError(f"k_reg and lam belong to raps, not {method}; leave them out")
        return None, None
    if k_reg is not None and (isinstance(k_reg, bool) or not isinstance(k_reg, int) or k_reg < 0):
        raise SoftcalError(f"raps k_reg must be a whole number >= 0, got {k_reg!r}")
    value = None
    if lam is not None:
        try:
            value = float(lam)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            value = math.nan
        if isinstance(lam, bool) or not (math.isfinite(value) and value >= 0):
            raise SoftcalError(f"raps lam must be a finite number >= 0, got {lam!r}")
    return k_reg, value  # type: ignore[return-value]
