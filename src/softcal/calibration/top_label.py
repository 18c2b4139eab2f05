"""Top-label beta calibration: temperature scaling, then a monotone map of the top probability.

A single temperature changes the confidence of every prediction by the same rule, so it cannot
straighten a reliability curve that bends both ways - a net that is overconfident at high
confidence and underconfident at low confidence after temperature scaling (an S-shape, common
on many-class problems such as CIFAR-100). This calibrator keeps temperature scaling for the
shape of each row and fits a second, monotone map only for the probability of the predicted
class:

    c = max softmax(z / T),   logit f = a log c - b log(1 - c) + m,   a, b >= 0

- the beta calibration family of Kull et al. 2017, applied to the top label (top-label
calibration, Gupta & Ramdas 2022). The predicted class gets probability f, every other class
keeps its share of the remaining mass: p_j = softmax(z / T)_j (1 - f) / (1 - c). With a = b = 1,
m = 0 the map is the identity (temperature scaling alone).

Fitting: T by :func:`~softcal.calibration.temperature.fit_temperature`, then (a, b, m) by the
log-loss of f against "the predicted class is the label". That is the multiclass NLL of the
calibrated probabilities up to a term (a, b, m) do not change, so the fit minimises the NLL
with T fixed. A Gaussian prior of standard deviation PRIOR_SD around the identity keeps the
map at temperature scaling unless the validation set shows otherwise: on an already
calibrated 10-class net (few errors to learn from) an unpenalised fit adds noise to ECE, while
a 5000-row validation set of a badly bent net still moves the map far from the identity.

The calibrated logits are z / T with the top class shifted by log(f / c) and every other class
by log((1 - f) / (1 - c)): their softmax is the calibrated distribution, their log-sum-exp
stays that of z / T (so logit-based scores such as the energy keep their scale), and they are
computed from softplus terms of the top-label log-odds u = log(c / (1 - c)), finite in float32
for any finite logits. The predicted class never changes: where the map would put it below
another class, f is raised until it leads by MARGIN in the logits.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from softcal.calibration.calibrator_base import Calibrator, compute_dtype
from softcal.calibration.temperature import fit_temperature
from softcal.errors import SoftcalError

#: The prior's standard deviation for (a, b, m) around the identity (1, 1, 0).
PRIOR_SD = 0.1
#: How far (in logits) the predicted class stays ahead of the next when the map would demote
#: it; far above float32's rounding of logits of a trained net, far below any real gap.
MARGIN = 1e-3


def top_label_odds(scaled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(u, is_top, lead) of logits (N, K), K >= 2: u = log(c / (1 - c)) of the top probability c,
    is_top the (N, K) mask of the predicted class (the first largest logit, as argmax picks) and
    lead = u - log(p_2 / (1 - c)), how far the top leads the runner-up in the logits."""
    top = scaled.argmax(dim=1, keepdim=True)
    # A comparison with arange, not one_hot or scatter: traced and exported graphs keep it as is.
    is_top = torch.arange(scaled.shape[1], device=scaled.device) == top
    others = scaled.masked_fill(is_top, float("-inf"))
    rest = torch.logsumexp(others, dim=1)
    best = scaled.gather(1, top).squeeze(1)
    return best - rest, is_top, best - others.max(dim=1).values


def beta_map(u: torch.Tensor, a: torch.Tensor | float, b: torch.Tensor | float,
             m: torch.Tensor | float) -> torch.Tensor:  # fmt: skip
    """logit f = a log c - b log(1 - c) + m, with log c = -softplus(-u), log(1 - c) = -softplus(u)."""
    return -a * F.softplus(-u) + b * F.softplus(u) + m


def top_label_logits(scaled: torch.Tensor, a: float, b: float, m: float) -> torch.Tensor:
    """The calibrated logits of temperature-scaled logits (see the module docstring)."""
    u, is_top, lead = top_label_odds(scaled)
    # Keep the predicted class ahead: its calibrated logit leads the runner-up's by g - (u - lead).
    g = torch.maximum(beta_map(u, a, b, m), u - lead + MARGIN)
    # log(f / c) = softplus(-u) - softplus(-g); log((1 - f) / (1 - c)) = softplus(u) - softplus(g)
    shift_top = F.softplus(-u) - F.softplus(-g)
    shift_rest = F.softplus(u) - F.softplus(g)
    return scaled + torch.where(is_top, shift_top[:, None], shift_rest[:, None])


def fit_top_label_beta(scaled: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, float] | None:
    """(a, b, m) maximising the log-likelihood of "the top class is the label" plus the prior,
    by L-BFGS in float64 over (log a, log b, m) (a, b > 0: the map is increasing); None when
    the optimiser ends on a non-finite value."""
    u, is_top, _ = top_label_odds(scaled)
    correct = is_top.gather(1, labels[:, None]).squeeze(1).double()
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [theta], lr=1.0, max_iter=500, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-10, tolerance_change=1e-13,
    )  # fmt: skip
    prior_weight = 1.0 / (2 * PRIOR_SD**2 * len(labels))  # the prior per row, as the loss is a mean

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        a, b, m = theta[0].exp(), theta[1].exp(), theta[2]
        loss = F.binary_cross_entropy_with_logits(beta_map(u, a, b, m), correct)
        loss = loss + prior_weight * ((a - 1) ** 2 + (b - 1) ** 2 + m**2)
        loss.backward()
        return loss

    optimizer.step(closure)
    log_a, log_b, m = theta.detach().tolist()
    a, b = math.exp(log_a), math.exp(log_b)
    if not all(math.isfinite(x) for x in (a, b, m)) or a == 0 or b == 0:
        return None
    return a, b, m


class TopLabelBetaCalibrator(Calibrator):
    """Temperature scaling, then beta calibration of the top probability; keeps the argmax."""

    method = "top_label_beta"
    exportable = True

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.temperature, self.a, self.b, self.m = 1.0, 1.0, 1.0, 0.0

    def _fit(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        temperature = fit_temperature(logits, labels)
        if temperature is None:
            return
        # One class: its probability is 1 whatever the map; the identity map is exact.
        found = fit_top_label_beta(logits / temperature, labels) if self.num_classes > 1 else (1.0, 1.0, 0.0)
        if found is not None:
            self.temperature, (self.a, self.b, self.m), self._fitted = temperature, found, True

    def calibrated_logits(self, logits: torch.Tensor) -> torch.Tensor:
        # Not while jit.trace records the graph: there the shape is a traced value, and the
        # check would only repeat what the example batch already showed.
        if not torch.jit.is_tracing() and (logits.ndim != 2 or logits.shape[1] != self.num_classes):
            raise SoftcalError(
                f"calibrator: logits of shape {tuple(logits.shape)} do not match {self.num_classes} "
                "classes; apply it to the (N, num_classes) logits of the model it was fitted on"
            )
        scaled = logits.to(compute_dtype(logits)) / self.temperature
        if not self._fitted or self.num_classes < 2:  # the identity: no margin added to ties
            return scaled
        return top_label_logits(scaled, self.a, self.b, self.m)

    def describe(self) -> str:
        name = "top-label beta calibration"
        if not self._fitted:
            return self._not_fitted(name)
        return f"{name} (T={self.temperature:.4g}, a={self.a:.3g}, b={self.b:.3g}, m={self.m:.3g})"

    def _params(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "a": self.a, "b": self.b, "m": self.m}

    def _load_params(self, params: dict[str, Any]) -> None:
        self.temperature = float(params["temperature"])
        self.a, self.b, self.m = float(params["a"]), float(params["b"]), float(params["m"])
