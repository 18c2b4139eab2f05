"""Scores of given logits, no Trainer involved: a set's metrics, or all that a test pass keeps.

Two users:

* the shift analysis scores each corrupted set's logits (accuracy, ECE, NLL, Brier; raw and
  calibrated by the run's calibration) - :func:`set_scores`;
* an ensemble's "logits" (the log of its members' mean probability) are no net's output, so
  no ``trainer.test`` can make its pass; :func:`scored_pass` builds the same
  :class:`~softcal.evaluation.results.SplitPass` from them - the metrics ``test_step`` logs
  (``<split>/...`` and ``<split>_calibrated/...`` with the selective-prediction ones, and the
  loss), the reliability-diagram bin sums, the confusion counts and the (confidence, correct)
  pairs of :class:`~softcal.calibration.callbacks.CalibrationFigures`.

Both use the very metric collections the Classifier's test stages hold
(:func:`softcal.calibration.metrics.calibration_metrics` with
:func:`softcal.uncertainty.selective_metrics.selective_metrics`, an undefined selective metric
left out as ``test_step`` leaves it out) on the probabilities ``calibration.probabilities``
gives, so for a single run's logits they reproduce its test pass up to float summation order
(``tests/test_ensemble.py`` checks that).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from softcal.evaluation.results import Confidences, SplitLogits, SplitPass

if TYPE_CHECKING:
    from softcal.calibration.run_calibration import RunCalibration

#: The metrics of each shifted set, by calibration_metrics' names.
SET_METRICS = ("acc", "ece", "nll", "brier")
#: (test_step's stage, calibrated?, the pass's name for it)
STAGES = (("test", False, "raw"), ("test_calibrated", True, "calibrated"))


def probability_metrics(probs: torch.Tensor, labels: torch.Tensor, n_bins: int, prefix: str = "",
                        selective: bool = False) -> dict[str, float]:  # fmt: skip
    """Every metric of :func:`~softcal.calibration.metrics.calibration_metrics` on the
    probabilities; with ``selective``, also those of a test stage (an undefined one left out)."""
    # torchmetrics takes seconds to import: only once something is scored
    from softcal.calibration.metrics import calibration_metrics
    from softcal.uncertainty.selective_metrics import selective_metrics, without_undefined

    metrics = calibration_metrics(probs.shape[1], prefix, n_bins, selective_metrics() if selective else None)
    metrics.update(probs, labels)
    return {key: float(value) for key, value in without_undefined(metrics.compute(), metrics).items()}


def set_scores(logits: torch.Tensor, labels: torch.Tensor, calibration: RunCalibration, n_bins: int) -> dict[
    str, dict[str, float]
]:  # fmt: skip
    """``{"raw": {acc, ece, nll, brier}, "calibrated": {...}}`` of one set of logits; the
    calibrated numbers are those of the run's stored calibration (the raw ones when it has none)."""
    scores = {}
    for _, calibrated, name in STAGES:
        found = probability_metrics(calibration.probabilities(logits, calibrated), labels, n_bins)
        scores[name] = {key: found[key] for key in SET_METRICS}
    return scores


def scored_pass(split: str, logits: SplitLogits, calibration: RunCalibration, n_bins: int) -> SplitPass:
    """The pass ``trainer.test`` would have made over ``split`` had the net output ``logits``."""
    from softcal.calibration.metrics import TopLabelBins
    from softcal.evaluation.passes import key_for_split

    scores, labels = logits
    metrics = {"test/loss": float(F.cross_entropy(scores.float(), labels))}
    bins, pairs = {}, {}
    for stage, calibrated, name in STAGES:
        probs = calibration.probabilities(scores, calibrated)
        metrics |= probability_metrics(probs, labels, n_bins, f"{stage}/", selective=True)
        binned = TopLabelBins(n_bins)
        binned.update(probs, labels)
        bins[name] = binned.compute()
        confidence, predicted = probs.max(dim=1)
        pairs[name] = Confidences(confidence.float(), predicted == labels)
    k = scores.shape[1]
    predicted = calibration.probabilities(scores, calibrated=False).argmax(dim=1)  # as the callback counts
    confusion = torch.bincount(labels * k + predicted, minlength=k * k).view(k, k)  # rows: true class
    return SplitPass(
        split=split,
        metrics={key_for_split(key, split): value for key, value in sorted(metrics.items())},
        logits=logits,
        bins=bins,
        confusion=confusion,
        confidences=pairs,
    )
