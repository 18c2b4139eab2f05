"""Prediction sets from a threshold: boolean (N, K) matrices, True = class k is in row i's set.

* **Score rule** (LAC, class-conditional LAC, randomised APS, RAPS): C(x) = {k : s(x, k) <= q},
  with q one threshold or one per class. A label is in its set exactly when its calibration
  score would be at most q, which is what makes the coverage exact (k/(n + 1)) for continuous
  scores. For the randomised APS/RAPS scores, s(x, k) grows with the rank of k for a fixed u,
  so the set is a prefix of the ranking: all classes with M(k) (+ penalty) <= q, then the class
  that crosses q with probability 1 - (M + penalty - q) / p_k - Romano et al.'s randomisation.
* **Include-last rule** (non-randomised APS, Romano et al. 2020; MAPIE's
  ``include_last_label=True``): the smallest prefix of the ranking whose mass reaches q,
  the class that crosses q included: C(x) = {k : A(k) < q} (A = mass above). It contains
  every label with M(k) <= q, and more: coverage is >= 1 - alpha but can exceed
  1 - alpha + 1/(n + 1) by a lot (the crossing class is always kept).

Empty sets are kept, never filled in: LAC gives one when no class has 1 - p_k <= q (every
probability of the row below 1 - q), the randomised rules when the first class is dropped.
Filling them would only add coverage; :func:`softcal.conformal.report.coverage_report` gives
their rate.
"""

from __future__ import annotations

import torch
from torch import Tensor

from softcal.conformal.scores import ranked_mass


def score_rule_sets(scores: Tensor, threshold: Tensor) -> Tensor:
    """{k : s(x, k) <= q}; ``threshold`` a scalar or one per class (K,)."""
    return scores <= threshold


def include_last_sets(probs: Tensor, threshold: Tensor) -> Tensor:
    """{k : A(k) < q}: the smallest prefix of the ranking with mass >= q, the crossing class
    included (all classes when the row's total mass stays below q, e.g. q = +inf)."""
    _, _, above = ranked_mass(probs)
    return above < threshold


def expected_raps_size(probs: Tensor, threshold: Tensor, k_reg: int, lam: float) -> Tensor:
    """The mean, over u ~ Uniform(0, 1), of the RAPS set size of each row, shape (N,).

    Class k is in the set when M(k) - u p_k + penalty <= q, i.e. u >= e / p_k with
    e = M(k) + penalty - q: probability clamp(1 - e / p_k, 0, 1) (for p_k = 0: 1 if e <= 0).
    """
    rank, through, _ = ranked_mass(probs)
    excess = through + lam * (rank - k_reg).clamp(min=0).to(torch.float64) - threshold
    positive = probs > 0
    share = (1 - excess / torch.where(positive, probs, torch.ones_like(probs))).clamp(0, 1)
    share = torch.where(positive, share, (excess <= 0).to(torch.float64))
    return share.sum(dim=1)
