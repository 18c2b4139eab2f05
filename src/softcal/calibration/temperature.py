"""Temperature scaling (Guo et al. 2017): one scalar T, fitted on held-out logits.

``softmax(logits / T)`` with T > 1 softens an overconfident model and T < 1 sharpens an
underconfident one (label smoothing makes models underconfident). Dividing by T > 0 keeps the
order of the logits, so predictions - and accuracy - never change; only the confidence does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Bounds on a fitted T. A model that knows nothing drives T towards infinity (uniform
#: predictions minimise its NLL); the bounds keep such a T readable and never bind on a
#: trained model.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-2, 1e2


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float | None:
    """The T minimising the NLL of ``softmax(logits / T)``; None when the fit diverges.

    T is optimised as log T, so it stays positive without constraints, with L-BFGS in float64
    (one scalar parameter: a handful of steps). None - "not fitted" - rather than a silent 1.0
    when the logits hold non-finite values or the optimiser ends on one.
    """
    logits = logits.detach().double().cpu()
    labels = labels.detach().long().cpu()
    if len(labels) == 0 or not torch.isfinite(logits).all():
        return None
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe",
        tolerance_grad=1e-10, tolerance_change=1e-12,
    )  # fmt: skip

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature):
        return None
    return min(max(temperature, MIN_TEMPERATURE), MAX_TEMPERATURE)
