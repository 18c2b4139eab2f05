"""The split-conformal thresholds a run stores beside its calibrator, for predict's sets.

:class:`~softcal.calibration.run_calibration.RunCalibration` fits them at every validation, on
the CALIBRATED validation probabilities (what predict shows, so its sets threshold the very
numbers it prints), for the deterministic methods only - :data:`STORED_METHODS` at
:data:`STORED_ALPHAS`. The randomised ones (``aps_randomized``, ``raps``) are left out on
purpose: their sets depend on a uniform draw per image, so predicting the same image twice, or
in another batch, could give another set. ``scripts/evaluate.py RUN --conformal`` scores all
five methods at any alpha instead.

The nine thresholds are :func:`softcal.conformal.fit_conformal`'s; they cost 3 ms (K = 10) and
40 ms (K = 100) of CPU time on 5,000 validation images, against 20 and 110 ms for the
temperature fit beside them (docs/conformal.md), and consume no random numbers: the training
run's numbers stay what they were.

The state is a list of :meth:`ConformalPredictor.state` dicts (plain Python values: a
checkpoint read with ``weights_only=True`` holds them), or None when none are stored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from softcal.conformal import ConformalPredictor
from softcal.conformal.inputs import as_labels, as_probabilities
from softcal.conformal.quantile import conformal_quantile, conformal_rank
from softcal.conformal.scores import aps_scores, label_scores, lac_scores
from softcal.errors import SoftcalError

#: What every run stores: reproducible image by image (no random draw in the sets).
STORED_METHODS = ("lac", "aps", "classwise_lac")
#: 90%, 95% and 99% coverage.
STORED_ALPHAS = (0.1, 0.05, 0.01)


class ConformalThresholds:
    """The fitted predictors of a run, looked up by (method, alpha)."""

    def __init__(self, predictors: Sequence[ConformalPredictor]) -> None:
        self._by_key = {(p.method, p.alpha): p for p in predictors}

    @classmethod
    def fit(cls, probs: Tensor, labels: Tensor) -> ConformalThresholds | None:
        """Every stored method at every stored alpha, fitted on calibrated validation
        probabilities; None when they cannot be (no rows, non-finite probabilities after a
        diverged fit): a run without thresholds rather than a training run that stops.

        The thresholds are :func:`~softcal.conformal.fit_conformal`'s, bit for bit (the tests
        compare them), computed with its own score and quantile functions but each score once:
        the checks and the float64 copy once, not nine times, one sort of the probabilities
        for APS instead of three, and one sort per class for all alphas (:func:`_classwise`):
        a quarter of nine ``fit_conformal`` calls' time on 5,000 x 100.
        """
        try:
            probs = as_probabilities(probs)
            labels = as_labels(labels, len(probs), probs.shape[1])
        except SoftcalError:
            return None
        lac = label_scores(lac_scores(probs), labels)
        aps = label_scores(aps_scores(probs), labels)
        k, n = probs.shape[1], len(labels)
        classwise = _classwise(lac, labels, k, STORED_ALPHAS)
        predictors = []
        for method in STORED_METHODS:
            for alpha in STORED_ALPHAS:
                if method == "classwise_lac":
                    threshold = classwise[alpha]
                else:
                    threshold = conformal_quantile(lac if method == "lac" else aps, alpha)
                predictors.append(ConformalPredictor(method, alpha, threshold, k, n_calibration=n))
        return cls(predictors)

    def get(self, method: str, alpha: float) -> ConformalPredictor | None:
        return self._by_key.get((method, float(alpha)))

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(method for method, _ in self._by_key))

    @property
    def alphas(self) -> list[float]:
        return list(dict.fromkeys(alpha for _, alpha in self._by_key))

    def state(self) -> list[dict]:
        return [predictor.state() for predictor in self._by_key.values()]

    @classmethod
    def from_state(cls, state: list[dict] | None) -> ConformalThresholds | None:
        return None if not state else cls([ConformalPredictor.from_state(s) for s in state])


def _classwise(scores: Tensor, labels: Tensor, num_classes: int,
               alphas: Sequence[float]) -> dict[float, Tensor]:  # fmt: skip
    """:func:`~softcal.conformal.quantile.classwise_quantiles` at each alpha, each class's
    scores sorted once: its k-th smallest is the element ``kthvalue`` picks, so the thresholds
    are the same numbers; a class with fewer than k scores gets +inf, as there."""
    thresholds = {alpha: torch.full((num_classes,), math.inf, dtype=torch.float64) for alpha in alphas}
    for c in range(num_classes):
        ordered = scores[labels == c].sort().values
        for alpha in alphas:
            rank = conformal_rank(len(ordered), alpha)
            if rank <= len(ordered):
                thresholds[alpha][c] = ordered[rank - 1]
    return thresholds
