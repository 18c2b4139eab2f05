"""Selective prediction as torchmetrics Metrics, logged with the calibration metrics at test.

AURC, E-AURC, the risk at 80/90/95% coverage and the misclassification AUROC rank every
prediction, so each keeps one confidence and one correct flag per prediction
(:class:`TopLabelPairs`, 8 bytes; ``dist_reduce_fx="cat"``, so every process computes from the
pairs of all processes). They - and :class:`softcal.calibration.metrics.AdaptiveCalibrationError`,
which keeps the same pairs - define one state with one update, so in a MetricCollection with
``compute_groups=True`` the pairs are kept and updated once for all of them.

The math is :mod:`softcal.uncertainty.selective` (float64, on the CPU, once per evaluation).
Each metric returns a float64 tensor, so what is logged is that float64 number, not its
float32 rounding (0.000125 as 0.00012500000594). A metric that has no value is NaN - the
misclassification AUROC when every prediction is right or every one wrong, any of them when
nothing was seen - and :func:`without_undefined` leaves it out of what is logged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from softcal.uncertainty.selective import (
    REPORT_COVERAGES,
    aurc,
    e_aurc,
    misclassification_auroc,
    risk_at_coverage,
)


class TopLabelPairs(Metric):
    """The top-label confidence and whether the prediction is right, for every prediction.

    ``compute()`` returns ``{"confidence": float32, "correct": bool}``, in update order per
    process and processes in rank order: the pairs behind a risk-coverage curve.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("confidence", [], dist_reduce_fx="cat")
        self.add_state("correct", [], dist_reduce_fx="cat")

    def update(self, probs: Tensor, target: Tensor) -> None:
        confidence, prediction = probs.max(dim=1)
        self.confidence.append(confidence.float())
        self.correct.append((prediction == target).float())

    def pairs(self) -> tuple[Tensor, Tensor]:
        """(confidence, correct), both float32, concatenated (gathered, inside ``compute``)."""
        return _cat(self.confidence), _cat(self.correct)

    def compute(self) -> Any:
        confidence, correct = self.pairs()
        return {"confidence": confidence, "correct": correct > 0.5}


class SelectiveMetric(TopLabelPairs):
    """One number from all the pairs, as a float64 tensor; NaN when it has no value."""

    def value(self, confidence: Tensor, correct: Tensor) -> float:
        raise NotImplementedError

    def compute(self) -> Tensor:
        confidence, correct = self.pairs()
        value = self.value(confidence, correct) if len(confidence) else math.nan
        return torch.tensor(value, dtype=torch.float64)


class AURC(SelectiveMetric):
    """Area under the risk-coverage curve (:func:`softcal.uncertainty.selective.aurc`)."""

    higher_is_better = False

    def value(self, confidence: Tensor, correct: Tensor) -> float:
        return aurc(confidence, correct)


class ExcessAURC(SelectiveMetric):
    """AURC minus that of a perfect ranking at the same accuracy (``e_aurc``)."""

    higher_is_better = False

    def value(self, confidence: Tensor, correct: Tensor) -> float:
        return e_aurc(confidence, correct)


class RiskAtCoverage(SelectiveMetric):
    """The error among the ``coverage`` share of most confident predictions."""

    higher_is_better = False

    def __init__(self, coverage: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.coverage = coverage

    def value(self, confidence: Tensor, correct: Tensor) -> float:
        return risk_at_coverage(confidence, correct, self.coverage)


class MisclassificationAUROC(SelectiveMetric):
    """How well the confidence separates right from wrong predictions; NaN with only one kind."""

    higher_is_better = True

    def value(self, confidence: Tensor, correct: Tensor) -> float:
        return misclassification_auroc(confidence, correct)


def selective_metrics() -> dict[str, Metric]:
    """aurc, e_aurc, risk_at_80/90/95, misclassification_auroc: the keys of ``selective_report``."""
    metrics: dict[str, Metric] = {"aurc": AURC(), "e_aurc": ExcessAURC()}
    for percent in REPORT_COVERAGES:
        metrics[f"risk_at_{percent}"] = RiskAtCoverage(percent / 100)
    metrics["misclassification_auroc"] = MisclassificationAUROC()
    return metrics


def without_undefined(values: dict[str, Tensor], collection: MetricCollection) -> dict[str, Tensor]:
    """``values`` (``collection.compute()``) less the selective metrics that are NaN: no value
    is not a value of NaN. Other metrics keep a NaN, which there means something went wrong."""
    members = collection.items(keep_base=False, copy_state=False)
    undefined = {name for name, metric in members if isinstance(metric, SelectiveMetric)}
    return {k: v for k, v in values.items() if not (k in undefined and bool(torch.isnan(v)))}


def _cat(values: list[Tensor] | Tensor) -> Tensor:
    """A list state concatenated; after a sync it is already one tensor."""
    if isinstance(values, Tensor):
        return values
    return torch.cat(values) if values else torch.zeros(0)
