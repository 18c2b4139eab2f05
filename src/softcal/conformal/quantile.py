"""The split-conformal threshold: one order statistic of the validation scores.

Definition (Vovk et al. 2005; Sadinle et al. 2019; Angelopoulos & Bates 2021, "A gentle
introduction to conformal prediction", Thm 1): with n validation scores s_1..s_n and

    k = ceil((n + 1) * (1 - alpha)),

the threshold is the k-th smallest score, q = s_(k). It is the empirical quantile of level k/n in
the inverse-CDF sense, q = inf{s : #{i : s_i <= s} >= k}, i.e. the level-k/n quantile "rounded
up" to an observed score (numpy: ``np.quantile(s, k/n, method="inverted_cdf")``, equal to
``method="lower"`` at this level - what MAPIE 1.x computes). NumPy's ``method="higher"`` at
level k/n is a different number - the (k+1)-th smallest when k < n - and is not used.

If k > n - that is n < 1/alpha - 1, the validation split is too small for alpha - the threshold
is **+inf**: every class is in every set. That keeps the guarantee: the conformal argument needs
the k-th smallest of n + 1 exchangeable scores, which for k = n + 1 is the test score itself
(or larger), so only the trivial set is certain to reach 1 - alpha; the largest validation score
would give coverage n/(n + 1) < 1 - alpha.

Guarantee: if the validation and test examples are exchangeable, P(s_test <= q) >= k/(n + 1)
>= 1 - alpha, and without ties among the scores P(s_test <= q) = k/(n + 1) <= 1 - alpha +
1/(n + 1). With tied scores only the lower bound holds.

k is computed exactly: alpha is read as the decimal it prints as (``repr``), so alpha = 0.1
with n = 9 gives k = ceil(10 * 9/10) = 9, whatever the binary rounding of 1 - 0.1.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
from torch import Tensor


def _decimal(alpha: float) -> Fraction:
    return Fraction(repr(float(alpha)))


def conformal_rank(n: int, alpha: float) -> int:
    """k = ceil((n + 1)(1 - alpha)): the threshold is the k-th smallest of n scores (k may be
    n + 1: then the threshold is +inf)."""
    return math.ceil((n + 1) * (1 - _decimal(alpha)))


def min_calibration_size(alpha: float) -> int:
    """The fewest scores that give a finite threshold: the smallest n with k <= n, which is
    ceil(1/alpha) - 1 (n >= 1/alpha - 1)."""
    return math.ceil(1 / _decimal(alpha)) - 1


def conformal_quantile(scores: Tensor, alpha: float) -> Tensor:
    """The conformal threshold of the scores along the last dimension (float64): the k-th
    smallest of them, k = :func:`conformal_rank` (n, alpha), or +inf when k > n.

    ``scores`` of shape (..., n) give thresholds of shape (...): a batch of calibration sets
    (e.g. one per random split) is handled at once.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64)
    n = scores.shape[-1]
    k = conformal_rank(n, alpha)
    if k > n:
        return torch.full(scores.shape[:-1], math.inf, dtype=torch.float64)
    return torch.kthvalue(scores, k, dim=-1).values


def classwise_quantiles(scores: Tensor, labels: Tensor, num_classes: int, alpha: float) -> Tensor:
    """One conformal threshold per class (Mondrian / class-conditional conformal prediction,
    Vovk 2012; Sadinle et al. 2019 sec. 4.3): class c's threshold is :func:`conformal_quantile`
    of the scores of the n_c validation examples labelled c.

    A class with fewer than :func:`min_calibration_size` (alpha) = ceil(1/alpha) - 1 examples,
    absent ones included, gets +inf: it is in every set (the rule above, per class).
    """
    thresholds = torch.empty(num_classes, dtype=torch.float64)
    for c in range(num_classes):
        thresholds[c] = conformal_quantile(scores[labels == c], alpha)
    return thresholds


def smallest_covering(values: Tensor, alpha: float) -> Tensor:
    """The smallest v with #{i : values_i <= v} >= (1 - alpha) * n, over the last dimension:
    the ceil((1 - alpha) n)-th smallest value (the inverse-CDF quantile of level 1 - alpha,
    without the finite-sample correction of :func:`conformal_quantile`). Needs n >= 1."""
    n = values.shape[-1]
    return torch.kthvalue(values, math.ceil((1 - _decimal(alpha)) * n), dim=-1).values
