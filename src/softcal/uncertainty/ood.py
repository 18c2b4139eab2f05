"""Out-of-distribution detection: does the model's confidence drop on inputs unlike its training data?

Each score turns a row of logits into one number, oriented so that HIGHER means "more like the
training data" (in-distribution). A detector accepts an input as in-distribution when its
score clears a threshold; the metrics sweep that threshold.

Scores, for logits z and temperature T (None means 1):

* ``msp``: max softmax(z / T), the baseline of Hendrycks & Gimpel 2017.
* ``max_logit``: max z. It does not depend on T (dividing by T > 0 keeps the order).
* ``energy``: T * logsumexp(z / T), the negative free energy of Liu et al. 2020 ("Energy-based
  out-of-distribution detection"); at T = 1 it is logsumexp(z).
* ``entropy``: minus the entropy of softmax(z / T), sum_k p_k ln p_k (0 ln 0 = 0).

Metrics, in-distribution as the positive class unless said otherwise:

* ``auroc``: the chance that a random in-distribution input scores higher than a random OOD
  one, ties counting one half.
* ``aupr_in``: average precision with in-distribution positive; ``aupr_out``: with OOD
  positive and the scores negated. Average precision as scikit-learn defines it: one step
  per distinct score, sum over thresholds of (recall_k - recall_{k-1}) * precision_k, no
  interpolation.
* ``fpr_at_95_tpr``: the threshold t is the highest score such that at least 95% of the
  in-distribution scores are >= t (inputs scoring exactly t are accepted); the result is the
  share of OOD scores >= t, the OOD inputs let through while 95% of the real ones are kept.
  This is the first point of scikit-learn's ROC curve (all thresholds kept) with TPR >= 0.95.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from softcal.errors import SoftcalError
from softcal.uncertainty.selective import auroc
from softcal.uncertainty.ties import tie_groups

#: The score names ood_scores returns, each higher for more in-distribution inputs.
SCORES = ("msp", "max_logit", "energy", "entropy")
#: The scores read from the logits themselves, not from the probabilities: a calibrator that
#: maps probabilities (histogram binning, isotonic regression) has no calibrated version of them.
LOGIT_SCORES = ("max_logit", "energy")

#: The share of in-distribution inputs kept when fpr_at_95_tpr is read.
TPR_LEVEL = 0.95


def ood_scores(logits: Tensor, temperature: float | None = None) -> dict[str, Tensor]:
    """Every score of :data:`SCORES` for each row of ``logits`` (N, C), float64 on the CPU."""
    logits = torch.as_tensor(logits).detach().cpu().to(torch.float64)
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise SoftcalError(f"OOD scores need logits of shape (N, classes), got {tuple(logits.shape)}")
    t = 1.0 if temperature is None else float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise SoftcalError(f"the temperature must be a positive number, got {temperature}")
    scaled = logits / t
    log_probs = torch.log_softmax(scaled, dim=1)
    found = {
        **probability_scores(log_probs.exp(), log_probs),
        "max_logit": logits.max(dim=1).values,
        "energy": t * torch.logsumexp(scaled, dim=1),
    }
    return {name: found[name] for name in SCORES}


def probability_scores(probs: Tensor, log_probs: Tensor | None = None) -> dict[str, Tensor]:
    """``msp`` and ``entropy`` of probability rows (N, C), float64 on the CPU: the scores that
    need only the probabilities, so any calibrator's output has them. ``log_probs`` is their
    logarithm when known more exactly than ``log(probs)`` (a log-softmax)."""
    probs = torch.as_tensor(probs).detach().cpu().to(torch.float64)
    log_probs = probs.log() if log_probs is None else log_probs
    return {
        "msp": probs.max(dim=1).values,
        # p ln p with p = 0 is 0, also where ln p underflowed to -inf
        "entropy": torch.where(probs > 0, probs * log_probs, torch.zeros_like(probs)).sum(dim=1),
    }


def average_precision(score: Tensor, positive: Tensor) -> float:
    """Average precision of ``score`` for the positives, one step per distinct score (the
    definition of scikit-learn's average_precision_score). NaN with no positives."""
    score = torch.as_tensor(score).detach().cpu().to(torch.float64).reshape(-1)
    positive = torch.as_tensor(positive).detach().cpu().reshape(-1).to(torch.float64)
    n_pos = float(positive.sum())
    if n_pos == 0:
        return math.nan
    groups = tie_groups(score)
    true_pos = groups.totals(positive)
    precision = true_pos / groups.ends.to(torch.float64)
    recall = true_pos / n_pos
    recall_steps = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((recall_steps * precision).sum())


def fpr_at_tpr(score_in: Tensor, score_out: Tensor, tpr: float = TPR_LEVEL) -> float:
    """Share of OOD scores >= t, t the highest score keeping at least ``tpr`` of the
    in-distribution scores (>= t)."""
    score_in, score_out = _as_scores(score_in, score_out)
    scores = torch.cat([score_in, score_out])
    positive = torch.cat([torch.ones_like(score_in), torch.zeros_like(score_out)])
    groups = tie_groups(scores)
    true_pos = groups.totals(positive)
    false_pos = groups.ends.to(torch.float64) - true_pos
    # The same float division scikit-learn's roc_curve makes, so a TPR of exactly 0.95 counts.
    reached = torch.nonzero(true_pos / len(score_in) >= tpr)[0, 0]
    return float(false_pos[reached] / len(score_out))


def _as_scores(score_in: Tensor, score_out: Tensor) -> tuple[Tensor, Tensor]:
    score_in = torch.as_tensor(score_in).detach().cpu().to(torch.float64).reshape(-1)
    score_out = torch.as_tensor(score_out).detach().cpu().to(torch.float64).reshape(-1)
    if len(score_in) == 0 or len(score_out) == 0:
        raise SoftcalError(
            f"OOD detection needs in-distribution and OOD inputs, got {len(score_in)} and"
            f" {len(score_out)}; check the OOD data"
        )
    if not (torch.isfinite(score_in).all() and torch.isfinite(score_out).all()):
        raise SoftcalError("OOD detection: a score is NaN or infinite; check the logits")
    return score_in, score_out


def detection_metrics(score_in: Tensor, score_out: Tensor) -> dict[str, float]:
    """auroc, aupr_in, aupr_out and fpr_at_95_tpr of one score (higher = in-distribution)."""
    score_in, score_out = _as_scores(score_in, score_out)
    scores = torch.cat([score_in, score_out])
    is_in = torch.cat([torch.ones_like(score_in), torch.zeros_like(score_out)]).bool()
    return {
        "auroc": auroc(scores, is_in),
        "aupr_in": average_precision(scores, is_in),
        "aupr_out": average_precision(-scores, ~is_in),
        "fpr_at_95_tpr": fpr_at_tpr(score_in, score_out),
    }
