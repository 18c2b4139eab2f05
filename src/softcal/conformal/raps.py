"""Choosing RAPS's k_reg and lambda on a tuning part of the validation split.

Following Angelopoulos et al. (ICLR 2021) and their reference implementation
(github.com/aangelopoulos/conformal_classification, ``conformal.py``: ``pick_parameters``,
``pick_kreg``, ``pick_lamda_size``):

1. **Split.** n_tune = ceil(0.3 n) validation examples, drawn at random with the seed
   (``pct_paramtune = 0.3`` there), tune; the other n - n_tune calibrate the threshold. The
   tuning examples are never used for the threshold, so the guarantee holds as for fixed
   parameters.
2. **k_reg** = the smallest k such that the true class is among the top k for at least
   1 - alpha of the tuning examples: the ceil((1 - alpha) n_tune)-th smallest true-class rank
   (1-based). (The reference takes ``np.quantile(ranks0, 1 - alpha, "higher") + 1``, which can
   be one order statistic higher; MAPIE uses the conformal k-th smallest.)
3. **lambda** from the grid (0.001, 0.01, 0.1, 0.2, 0.5) (the paper's and MAPIE's): for each,
   the threshold is calibrated on the tuning part itself (:func:`conformal_quantile` of its
   RAPS scores, its own uniforms) and the tuning part's mean set size is computed; the
   smallest wins, ties to the smaller lambda. The size is the expectation over the
   randomisation (:func:`expected_raps_size`) instead of one random draw: less noise, same
   target.

**Too small to tune.** When the tuning part has fewer than ceil(1/alpha) - 1 examples its own
threshold would be +inf, every lambda would give full sets and the criterion could not choose;
the same when nothing would be left to calibrate. Then nothing is tuned: the missing parameters
take the reference README's suggestion, k_reg = 5 and lambda = 0.01, and all n examples
calibrate. Given k_reg and lam, nothing is tuned either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

from softcal.conformal.quantile import conformal_quantile, min_calibration_size, smallest_covering
from softcal.conformal.scores import label_scores, ranked_mass, raps_scores
from softcal.conformal.sets import expected_raps_size

TUNE_FRACTION = Fraction(3, 10)
LAMBDA_GRID = (0.001, 0.01, 0.1, 0.2, 0.5)
DEFAULT_K_REG, DEFAULT_LAMBDA = 5, 0.01


@dataclass(frozen=True)
class RapsParameters:
    """The chosen k_reg and lambda, and which validation rows tuned (``tune``) and calibrate
    (``calibrate``) - index tensors into the validation split."""

    k_reg: int
    lam: float
    tune: Tensor
    calibrate: Tensor


def tuning_size(n: int, alpha: float) -> int:
    """n_tune = ceil(0.3 n), or 0 when the split is too small to tune (see the module)."""
    n_tune = math.ceil(TUNE_FRACTION * n)
    if n_tune < max(1, min_calibration_size(alpha)) or n - n_tune < 1:
        return 0
    return n_tune


def choose_k_reg(probs: Tensor, labels: Tensor, alpha: float) -> int:
    """The smallest k with top-k coverage >= 1 - alpha on these examples."""
    rank, _, _ = ranked_mass(probs)
    true_rank = label_scores(rank, labels)
    return int(smallest_covering(true_rank.to(torch.float64), alpha))


def choose_lambda(probs: Tensor, labels: Tensor, u: Tensor, alpha: float, k_reg: int) -> float:
    """The grid lambda with the smallest expected mean set size on these examples, each lambda's
    threshold calibrated on them; ties to the smaller lambda."""
    best, best_size = LAMBDA_GRID[0], math.inf
    for lam in LAMBDA_GRID:
        threshold = conformal_quantile(label_scores(raps_scores(probs, u, k_reg, lam), labels), alpha)
        size = float(expected_raps_size(probs, threshold, k_reg, lam).mean())
        if size < best_size:
            best, best_size = lam, size
    return best


def raps_parameters(
    probs: Tensor,
    labels: Tensor,
    u: Tensor,
    alpha: float,
    generator: torch.Generator,
    k_reg: int | None = None,
    lam: float | None = None,
) -> RapsParameters:
    """k_reg and lambda as given, or tuned on a random ceil(0.3 n) of the rows (see the module)."""
    n = len(labels)
    everything = torch.arange(n)
    if k_reg is not None and lam is not None:
        return RapsParameters(k_reg, lam, everything[:0], everything)
    n_tune = tuning_size(n, alpha)
    if n_tune == 0:
        return RapsParameters(
            DEFAULT_K_REG if k_reg is None else k_reg,
            DEFAULT_LAMBDA if lam is None else lam,
            everything[:0],
            everything,
        )
    order = torch.randperm(n, generator=generator)
    tune, calibrate = order[:n_tune].sort().values, order[n_tune:].sort().values
    if k_reg is None:
        k_reg = choose_k_reg(probs[tune], labels[tune], alpha)
    if lam is None:
        lam = choose_lambda(probs[tune], labels[tune], u[tune], alpha, k_reg)
    return RapsParameters(k_reg, lam, tune, calibrate)
