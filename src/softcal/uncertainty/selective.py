"""Selective prediction: how much the error drops when the least confident predictions are set aside.

A classifier that may abstain keeps its most confident predictions and rejects the rest. The
**risk-coverage curve** (Geifman & El-Yaniv 2017) plots, for each share of kept predictions
(coverage), the error among them (selective risk). **AURC** is the area under it: low when the
wrong predictions are the least confident ones. It mixes accuracy with ranking, so **E-AURC**
subtracts the best AURC possible with the same accuracy (Geifman et al. 2019, "Bias-reduced
uncertainty estimation for deep neural classifiers"), leaving the cost of the ranking alone.

Definitions (n predictions, confidence c_i, correct_i in {0, 1}):

* Sorted by confidence, most confident first, ``risk(k)`` = share wrong among the k most
  confident, for k = 1..n. **Ties**: predictions with equal confidence cannot be told apart,
  so no order among them is preferred: where k cuts through a group of tied predictions,
  ``risk(k)`` is its expected value when the group's order is random (the group's errors
  count in proportion to how many of it are kept). Without ties this is the plain risk.
* ``AURC = (1/n) * sum_k risk(k)``: the mean of the risks over the n coverage steps k/n, the
  definition of Geifman et al. (torch-uncertainty's trapezoid rule normalised by 1 - 1/n
  differs by O(1/n)). With ties it is the mean AURC over all orders of the tied predictions.
* ``E-AURC = AURC - AURC*``, AURC* the AURC of a perfect ranking (all correct ones first)
  with the same n and the same number correct. Its limit for large n is the closed form
  ``(1 - a) + a ln a`` (a the accuracy, 0 ln 0 = 0); the finite-n value is larger by about
  ``(1 - a) / (2n)``, and using it makes E-AURC exactly 0 for a perfect ranking and never
  negative (each risk(k) is smallest when the correct ones come first).
* ``risk_at_coverage(c)`` = ``risk(k)`` with k = ceil(c * n) (at least 1): the error among
  the smallest number of most confident predictions that covers at least c of them.

Everything is computed in float64 on the CPU: these run once per evaluation, on one value
per prediction.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from softcal.errors import SoftcalError
from softcal.uncertainty.ties import tie_groups

#: The coverages selective_report gives the risk at, as key suffixes (risk_at_80 ...).
REPORT_COVERAGES = (80, 90, 95)


def _as_pairs(confidence: Tensor, correct: Tensor) -> tuple[Tensor, Tensor]:
    """(confidence, correct) as 1-D float64 CPU tensors of one length, or a one-line error."""
    confidence = torch.as_tensor(confidence).detach().cpu().to(torch.float64).reshape(-1)
    correct = torch.as_tensor(correct).detach().cpu().to(torch.float64).reshape(-1)
    if len(confidence) != len(correct):
        raise SoftcalError(
            f"selective prediction needs one correctness per confidence, got {len(confidence)}"
            f" confidences and {len(correct)} correctness values"
        )
    if len(confidence) == 0:
        raise SoftcalError("selective prediction needs at least one prediction; the split is empty")
    if not torch.isfinite(confidence).all():
        raise SoftcalError("selective prediction: a confidence is NaN or infinite; check the logits")
    return confidence, correct


def _tie_groups(confidence: Tensor, correct: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Groups of equal confidence, most confident first: (size, end, errors up to the end),
    where ``end`` counts the predictions in this group and all more confident ones."""
    groups = tie_groups(confidence)
    return groups.sizes, groups.ends, groups.totals(1.0 - correct)


def step_risks(confidence: Tensor, correct: Tensor) -> Tensor:
    """``risk(k)`` for k = 1..n (float64), tied groups by expectation (see the module docstring)."""
    confidence, correct = _as_pairs(confidence, correct)
    sizes, ends, errors_end = _tie_groups(confidence, correct)
    starts = ends - sizes
    errors_start = torch.cat([errors_end.new_zeros(1), errors_end[:-1]])
    group_error_rate = (errors_end - errors_start) / sizes
    group = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    kept = torch.arange(1, len(confidence) + 1, dtype=torch.float64)
    expected_errors = errors_start[group] + (kept - starts[group]) * group_error_rate[group]
    return expected_errors / kept


def risk_coverage_curve(confidence: Tensor, correct: Tensor) -> tuple[Tensor, Tensor]:
    """(coverage, risk) in float64, most confident first, ending at coverage 1 (risk = error rate).

    Tied confidences enter together: one point per distinct confidence, after the whole group
    of predictions with that confidence is kept (no threshold on the confidence keeps part of
    a group). These points lie on the ``step_risks`` that AURC averages.
    """
    confidence, correct = _as_pairs(confidence, correct)
    _, ends, errors_end = _tie_groups(confidence, correct)
    ends = ends.to(torch.float64)
    return ends / len(confidence), errors_end / ends


def aurc(confidence: Tensor, correct: Tensor) -> float:
    """Area under the risk-coverage curve: the mean of ``risk(k)`` over k = 1..n. Lower is better."""
    return float(step_risks(confidence, correct).mean())


def optimal_aurc(n_correct: int, n: int) -> float:
    """AURC of a perfect ranking of n predictions of which n_correct are right:
    (1/n) * sum_{k > n_correct} (k - n_correct) / k."""
    if n < 1 or not 0 <= n_correct <= n:
        raise ValueError(f"optimal_aurc needs 0 <= n_correct <= n and n >= 1, got {n_correct} of {n}")
    kept = torch.arange(1, n + 1, dtype=torch.float64)
    # the same float operations as step_risks on a perfect ranking, so E-AURC is exactly 0 there
    return float(((kept - n_correct).clamp_min(0) / kept).mean())


def optimal_aurc_limit(accuracy: float) -> float:
    """The large-n limit of :func:`optimal_aurc`: (1 - a) + a ln a, with 0 ln 0 = 0."""
    return (1.0 - accuracy) + (accuracy * math.log(accuracy) if accuracy > 0 else 0.0)


def e_aurc(confidence: Tensor, correct: Tensor) -> float:
    """Excess AURC: AURC minus that of a perfect ranking with the same n and accuracy; >= 0,
    0 for a perfect ranking. Lower is better."""
    confidence, correct = _as_pairs(confidence, correct)
    n_correct = int(round(float(correct.sum())))
    return max(aurc(confidence, correct) - optimal_aurc(n_correct, len(correct)), 0.0)


def risk_at_coverage(confidence: Tensor, correct: Tensor, coverage: float) -> float:
    """The error among the ceil(coverage * n) most confident predictions (at least one).

    A fractional ``coverage * n`` rounds up: the smallest set of most confident predictions
    that covers at least ``coverage``. Where that count cuts a group of tied confidences, the
    group's errors count in proportion (the expected risk over its orders). 1e-9 of slack
    keeps products such as 0.9 * 10 from rounding up to the next count.
    """
    risks = step_risks(confidence, correct)
    return float(risks[_kept(coverage, len(risks)) - 1])


def _kept(coverage: float, n: int) -> int:
    """How many predictions a coverage keeps: ceil(coverage * n), at least 1."""
    if not 0.0 < coverage <= 1.0:
        raise SoftcalError(f"coverage must be in (0, 1], got {coverage}")
    return max(1, math.ceil(coverage * n - 1e-9))


def auroc(score: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve of ``score`` separating positives (``positive`` true) from the
    rest: the probability that a random positive scores higher than a random negative, ties
    counting one half (Mann-Whitney U with average ranks). NaN when either class is empty."""
    score = torch.as_tensor(score).detach().cpu().to(torch.float64).reshape(-1)
    positive = torch.as_tensor(positive).detach().cpu().reshape(-1).bool()
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    groups = tie_groups(score, descending=False)
    sizes, ends = groups.sizes, groups.ends.to(torch.float64)
    mean_rank = ends - (sizes.to(torch.float64) - 1) / 2  # ranks from 1; tied ones share the mean
    ranks = torch.empty_like(score)
    ranks[groups.order] = torch.repeat_interleave(mean_rank, sizes)
    rank_sum = float(ranks[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def misclassification_auroc(confidence: Tensor, correct: Tensor) -> float:
    """AUROC of the confidence separating correct predictions (positive) from wrong ones:
    the chance that a random correct prediction is more confident than a random wrong one
    (ties count one half). 0.5 is no better than chance. NaN when all predictions are correct
    or all are wrong: there is nothing to separate."""
    confidence, correct = _as_pairs(confidence, correct)
    return auroc(confidence, correct > 0.5)


def selective_report(confidence: Tensor, correct: Tensor) -> dict[str, float]:
    """aurc, e_aurc, risk_at_80, risk_at_90, risk_at_95, misclassification_auroc (floats)."""
    confidence, correct = _as_pairs(confidence, correct)
    risks = step_risks(confidence, correct)
    n_correct = int(round(float(correct.sum())))
    area = float(risks.mean())
    report = {"aurc": area, "e_aurc": max(area - optimal_aurc(n_correct, len(risks)), 0.0)}
    for percent in REPORT_COVERAGES:
        report[f"risk_at_{percent}"] = float(risks[_kept(percent / 100, len(risks)) - 1])
    report["misclassification_auroc"] = misclassification_auroc(confidence, correct)
    return report
