"""Fitting split conformal predictors and the stored result: method, alpha and threshold(s).

:func:`fit_conformal` computes the thresholds on a validation split; a
:class:`ConformalPredictor` holds them and turns test probabilities into prediction sets. Its
:meth:`~ConformalPredictor.state` is a dict of plain Python values (JSON-safe: an infinite
threshold is written as the string ``"inf"``), for a checkpoint or a JSON file;
:meth:`~ConformalPredictor.from_state` rebuilds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from softcal.conformal.inputs import (
    as_labels,
    as_probabilities,
    check_alpha,
    check_raps_parameters,
    check_seed,
)
from softcal.conformal.quantile import classwise_quantiles, conformal_quantile
from softcal.conformal.raps import raps_parameters
from softcal.conformal.scores import (
    CALIBRATION_STREAM,
    PREDICTION_STREAM,
    SPLIT_STREAM,
    candidate_scores,
    label_scores,
    lac_scores,
    stream_generator,
    uniforms,
)
from softcal.conformal.sets import include_last_sets, score_rule_sets
from softcal.errors import SoftcalError

METHODS = ("lac", "aps", "aps_randomized", "raps", "classwise_lac")
RANDOMIZED = ("aps_randomized", "raps")
STATE_FORMAT = "softcal.conformal/1"


def check_method(method: object) -> str:
    if method not in METHODS:
        raise SoftcalError(f"unknown conformal method {method!r}; choose one of {', '.join(METHODS)}")
    return str(method)


def _plain(value: float) -> float | str:
    return "inf" if value == math.inf else value


@dataclass(frozen=True, eq=False)
class ConformalPredictor:
    """Stored split-conformal thresholds.

    ``threshold``: a 0-d float64 tensor, or for ``classwise_lac`` one per class (K,); +inf
    means "every class in every set" (too few validation examples for alpha). ``k_reg`` and
    ``lam`` are RAPS's (None otherwise). ``n_calibration`` counts the examples the threshold
    came from, ``n_tuning`` those RAPS tuned on. ``seed`` drives the randomised methods.
    """

    method: str
    alpha: float
    threshold: Tensor
    num_classes: int
    n_calibration: int
    k_reg: int | None = None
    lam: float | None = None
    n_tuning: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        check_method(self.method)
        object.__setattr__(self, "alpha", check_alpha(self.alpha))
        check_raps_parameters(self.method, self.k_reg, self.lam)
        if (
            isinstance(self.num_classes, bool)
            or not isinstance(self.num_classes, int)
            or self.num_classes < 1
        ):
            raise SoftcalError(
                f"a conformal predictor needs num_classes >= 1, got {self.num_classes!r};"
                " refit it with fit_conformal"
            )
        if self.method == "raps" and (self.k_reg is None or self.lam is None):
            raise SoftcalError(
                "the raps conformal predictor needs k_reg and lam; refit it with fit_conformal"
            )
        threshold = torch.as_tensor(self.threshold, dtype=torch.float64).detach().cpu()
        shape = (self.num_classes,) if self.method == "classwise_lac" else ()
        if tuple(threshold.shape) != shape:
            raise SoftcalError(
                f"the {self.method} conformal predictor needs a threshold of shape {shape} for"
                f" {self.num_classes} classes, got {tuple(threshold.shape)}; refit it with fit_conformal"
            )
        object.__setattr__(self, "threshold", threshold)
        check_seed(self.seed)

    @property
    def randomized(self) -> bool:
        return self.method in RANDOMIZED

    def prediction_sets(self, probs: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """The prediction sets of ``probs`` (N, K): a bool tensor (N, K).

        The randomised methods draw one uniform per row from ``generator``; without one, from a
        fresh generator of ``seed`` - so the same call gives the same sets, and row i of every
        call gets the same draw. For a stream of small batches (one image at a time) pass one
        generator for the whole stream: otherwise every image would get the same u, and the
        coverage would hold for that u only, not on average.
        """
        probs = as_probabilities(probs, allow_empty=True)
        if probs.shape[1] != self.num_classes:
            raise SoftcalError(
                f"this conformal predictor was fitted for {self.num_classes} classes, got probabilities"
                f" for {probs.shape[1]}; use the predictor fitted for this model"
            )
        if self.method == "aps":
            return include_last_sets(probs, self.threshold)
        u = None
        if self.randomized:
            u = uniforms(len(probs), generator or stream_generator(self.seed, PREDICTION_STREAM))
        scores = candidate_scores(self.method, probs, u=u, k_reg=self.k_reg, lam=self.lam)
        return score_rule_sets(scores, self.threshold)

    def state(self) -> dict:
        """Plain Python values (JSON-safe) that :meth:`from_state` turns back into this predictor."""
        values = [_plain(v) for v in self.threshold.reshape(-1).tolist()]
        return {
            "format": STATE_FORMAT,
            "method": self.method,
            "alpha": self.alpha,
            "threshold": values if self.method == "classwise_lac" else values[0],
            "num_classes": self.num_classes,
            "n_calibration": self.n_calibration,
            "k_reg": self.k_reg,
            "lam": self.lam,
            "n_tuning": self.n_tuning,
            "seed": self.seed,
        }

    @classmethod
    def from_state(cls, state: dict) -> ConformalPredictor:
        """The predictor a :meth:`state` dict describes."""
        fields = ("method", "alpha", "num_classes", "n_calibration", "k_reg", "lam", "n_tuning", "seed")
        try:
            if state["format"] != STATE_FORMAT:
                raise ValueError(state["format"])
            raw = state["threshold"]
            threshold = torch.tensor(
                [float(v) for v in raw] if isinstance(raw, list) else float(raw), dtype=torch.float64
            )
            values = {name: state[name] for name in fields}
        except (TypeError, ValueError, KeyError):
            raise SoftcalError(
                f"not a stored conformal predictor (expected the dict ConformalPredictor.state() returns,"
                f" format {STATE_FORMAT}); refit it with fit_conformal"
            ) from None
        return cls(**values, threshold=threshold)


def fit_conformal(
    method: str,
    alpha: float,
    probs_val: Tensor,
    labels_val: Tensor,
    *,
    seed: int = 0,
    k_reg: int | None = None,
    lam: float | None = None,
) -> ConformalPredictor:
    """Calibrate ``method`` at miscoverage ``alpha`` on validation probabilities (N, K) and
    labels (N,). ``seed`` drives the randomised methods' uniforms and RAPS's tuning split;
    ``k_reg``/``lam`` (RAPS only) fix those parameters instead of tuning them."""
    method, alpha, seed = check_method(method), check_alpha(alpha), check_seed(seed)
    k_reg, lam = check_raps_parameters(method, k_reg, lam)
    probs = as_probabilities(probs_val)
    labels = as_labels(labels_val, len(probs), probs.shape[1])
    common = {"method": method, "alpha": alpha, "num_classes": probs.shape[1], "seed": seed}
    if method == "classwise_lac":
        threshold = classwise_quantiles(
            label_scores(lac_scores(probs), labels), labels, probs.shape[1], alpha
        )
        return ConformalPredictor(**common, threshold=threshold, n_calibration=len(labels))
    u = uniforms(len(labels), stream_generator(seed, CALIBRATION_STREAM)) if method in RANDOMIZED else None
    rows = torch.arange(len(labels))
    if method == "raps":
        assert u is not None
        chosen = raps_parameters(probs, labels, u, alpha, stream_generator(seed, SPLIT_STREAM), k_reg, lam)
        k_reg, lam, rows = chosen.k_reg, chosen.lam, chosen.calibrate
        common.update(k_reg=k_reg, lam=lam, n_tuning=len(chosen.tune))
    scores = candidate_scores(method, probs[rows], u=None if u is None else u[rows], k_reg=k_reg, lam=lam)
    threshold = conformal_quantile(label_scores(scores, labels[rows]), alpha)
    return ConformalPredictor(**common, threshold=threshold, n_calibration=len(rows))
