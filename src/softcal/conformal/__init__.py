"""Split conformal classification: prediction sets that contain the true class with probability
at least 1 - alpha, from any classifier's probabilities and a held-out validation split.

Pure functions on probability matrices (N, K) and int labels, computed in float64 on the CPU;
nothing here touches a model, a file or Lightning.

Methods (:data:`METHODS`; scores in :mod:`.scores`, threshold in :mod:`.quantile`, set rules
in :mod:`.sets`):

=================  ====================================  =====================================
method             score of candidate label k            set
=================  ====================================  =====================================
``lac``            1 - p_k (Sadinle et al. 2019)         {k : 1 - p_k <= q}
``aps``            M(k), mass through k's rank           smallest prefix with mass >= q, the
                   (Romano et al. 2020)                  crossing class included
``aps_randomized`` M(k) - u p_k, u ~ U(0, 1) per row     {k : M(k) - u p_k <= q}
``raps``           APS randomised + lam (r(k) - k_reg)+  {k : score <= q}; k_reg, lam tuned on
                   (Angelopoulos et al. 2021)            30% of the split (:mod:`.raps`)
``classwise_lac``  1 - p_k, one q per class (Mondrian)   {k : 1 - p_k <= q_k}
=================  ====================================  =====================================

q is the k-th smallest of the n validation scores of the true labels, k = ceil((n + 1)(1 -
alpha)); +inf when k > n (too few examples for alpha: every set holds every class). Ties in
probability are ranked by class index. Guarantee for exchangeable data: coverage >= 1 - alpha
for every method (per class for ``classwise_lac``), and <= 1 - alpha + 1/(n + 1) for
continuous scores under the score rule (all but ``aps``, which is conservative).

Public API::

    predictor = fit_conformal("aps", 0.1, probs_val, labels_val, seed=0)
    sets = predictor.prediction_sets(probs_test)      # bool (N, K)
    coverage_report(sets, labels_test)               # coverage, sizes, per class
    ConformalPredictor.from_state(predictor.state())  # plain dict, JSON-safe
    parse_alphas("0.1,0.05,0.01")                    # [0.1, 0.05, 0.01]
"""

from softcal.conformal.inputs import parse_alphas
from softcal.conformal.predictor import METHODS, ConformalPredictor, fit_conformal
from softcal.conformal.report import coverage_report

__all__ = ["METHODS", "ConformalPredictor", "coverage_report", "fit_conformal", "parse_alphas"]
