"""The coverage guarantee, measured over many random validation/test re-splits of one pool.

The pool is 3000 examples of a realistic, overconfident 10-class problem (tests/conformal_data).
For a random split into n validation and N - n test examples, the split conformal threshold q
(k-th smallest of the n validation scores, k = ceil((n + 1)(1 - alpha))) covers each test
example with probability exactly k/(n + 1) when the scores are distinct, so over random splits

    1 - alpha <= mean coverage <= 1 - alpha + 1/(n + 1)

(the mean is exactly k/(n + 1) for every split-conformal method using the score rule). We check
the mean over SPLITS splits against that band widened by 3 standard errors (the splits' own
standard deviation / sqrt(SPLITS)).

**Power against an off-by-one quantile.** n is chosen so that (n + 1)(1 - alpha) ends in .5:
then k/(n + 1) sits in the middle of the band, 1/(2(n + 1)) from either edge, and a threshold one
order statistic lower (floor instead of ceil, n instead of n + 1) or higher (numpy's "higher"
interpolation at level k/n) moves the mean by 1/(n + 1), a full half-band outside it:

    alpha  n    k    k/(n+1)   band              k-1 gives  k+1 gives
    0.10   24   23   0.9200    [0.9000, 0.9400]  0.8800     0.9600
    0.05   29   29   0.9667    [0.9500, 0.9833]  0.9333     1 (q = +inf)
    0.01   149  149  0.9933    [0.9900, 0.9967]  0.9867     1 (q = +inf)

with a standard error of 0.0002-0.0012 (2000 splits): more than 10 standard errors either way.
``test_an_off_by_one_quantile_fails_the_band`` runs the same check with conformal_rank shifted by
-1 and +1 and asserts that it fails for every method - the check is not vacuous. A realistic
n = 999 is checked too (a narrow band; the off-by-one is then below the noise).

Everything is vectorised over the splits: the scores do not depend on the split (the uniforms of
the randomised methods are drawn once per pool example, which keeps them i.i.d.), so each split
only sorts its validation scores and compares its test scores. That these are the thresholds and
sets fit_conformal and prediction_sets produce is checked in test_conformal_methods.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from softcal.calibration.temperature import fit_temperature
from softcal.conformal import fit_conformal, quantile
from softcal.conformal.quantile import conformal_quantile
from softcal.conformal.scores import candidate_scores, label_scores, ranked_mass
from tests.conformal_data import K, miscalibrated_logits, miscalibrated_probs

SPLITS = 2000
PER_CLASS = 300
ALPHAS = (0.1, 0.05, 0.01)
#: (n + 1)(1 - alpha) ends in .5 (see the module docstring), and a realistic size.
SMALL_N = {0.1: 24, 0.05: 29, 0.01: 149}
LARGE_N = 999
#: RAPS at fixed parameters here (tuned RAPS: the slow end-to-end test below).
K_REG, LAM = 2, 0.05
EXACT = ("lac", "aps_randomized", "raps", "aps_score")


@pytest.fixture(scope="module")
def pool() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    probs, labels = miscalibrated_probs(PER_CLASS, seed=0)
    u = torch.rand(len(labels), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return probs, labels, u


@pytest.fixture(scope="module")
def orders() -> torch.Tensor:
    """SPLITS random orders of the pool: the first n of each are its validation split."""
    generator = torch.Generator().manual_seed(2)
    return torch.argsort(torch.rand(SPLITS, K * PER_CLASS, generator=generator), dim=1)


def true_label_statistics(method: str, probs, labels, u) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(calibration score, the statistic that puts the true label in its set, strict?).

    Score rule: the label is in its set iff its score <= q. Non-randomised APS ("aps"): iff the
    mass above it < q (the crossing class is included); "aps_score" is APS's own score rule,
    whose coverage is exact - the quantile check for the APS score.
    """
    name = "aps" if method == "aps_score" else method
    scores = label_scores(candidate_scores(name, probs, u=u, k_reg=K_REG, lam=LAM), labels)
    if method == "aps":
        return scores, label_scores(ranked_mass(probs)[2], labels), True
    return scores, scores, False


def count_within(values: torch.Tensor, threshold: torch.Tensor, strict: bool) -> torch.Tensor:
    """How many of ``values`` (any shape) are < or <= each threshold (S,): via one sort."""
    return torch.searchsorted(torch.sort(values.reshape(-1)).values, threshold, right=not strict)


def split_coverages(score, member, strict: bool, orders, n: int, alpha: float) -> torch.Tensor:
    """Coverage of the test part of every split, shape (SPLITS,): the pool's covered count
    at the split's threshold minus its validation part's (cheaper than gathering the test
    part, which is the larger one)."""
    val = orders[:, :n]
    threshold = conformal_quantile(score[val], alpha)
    cut = threshold[:, None]
    in_val = ((member[val] < cut) if strict else (member[val] <= cut)).sum(dim=1)
    n_test = orders.shape[1] - n
    return (count_within(member, threshold, strict) - in_val).to(torch.float64) / n_test


def band_violation(coverages: torch.Tensor, alpha: float, n: int, upper: bool = True) -> str | None:
    """None if the mean coverage lies in [1 - alpha, 1 - alpha + 1/(n + 1)] within 3 standard
    errors (only the lower bound when ``upper`` is False), else what is wrong."""
    mean, se = float(coverages.mean()), float(coverages.std()) / math.sqrt(len(coverages))
    low, high = 1 - alpha, 1 - alpha + 1 / (n + 1)
    if mean < low - 3 * se or (upper and mean > high + 3 * se):
        return f"mean coverage {mean:.5f} +- {se:.5f} outside [{low:.5f}, {high:.5f}] (n={n}, alpha={alpha})"
    return None


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("method", [*EXACT, "aps"])
def test_marginal_coverage_is_in_the_band(pool, orders, method: str, alpha: float) -> None:
    statistics = true_label_statistics(method, *pool)
    for n in (SMALL_N[alpha], LARGE_N):
        coverages = split_coverages(*statistics, orders, n, alpha)
        # Non-randomised APS keeps the class that crosses q: valid, but above the band.
        assert band_violation(coverages, alpha, n, upper=method in EXACT) is None


def test_an_off_by_one_quantile_fails_the_band(pool, orders, monkeypatch) -> None:
    """The same check with the threshold one order statistic off, either way: every exact
    method fails it at every alpha (conformal_quantile looks conformal_rank up at call time)."""
    exact = quantile.conformal_rank
    for shift in (-1, +1):
        monkeypatch.setattr(quantile, "conformal_rank", lambda n, a, s=shift: exact(n, a) + s)
        for method in EXACT:
            statistics = true_label_statistics(method, *pool)
            for alpha in ALPHAS:
                coverages = split_coverages(*statistics, orders, SMALL_N[alpha], alpha)
                assert band_violation(coverages, alpha, SMALL_N[alpha]) is not None, (shift, method, alpha)


def classwise_coverages(probs, labels, n_class: int, alpha: float) -> torch.Tensor:
    """Stratified splits (n_class validation examples of every class): coverage of each
    class's test examples, shape (SPLITS, K)."""
    scores = (1 - label_scores(probs, labels)).reshape(K, PER_CLASS)  # LAC, grouped by class
    generator = torch.Generator().manual_seed(3)
    order = torch.argsort(torch.rand(SPLITS, K, PER_CLASS, generator=generator), dim=2)
    per_split = scores.expand(SPLITS, K, PER_CLASS).gather(2, order)
    threshold = conformal_quantile(per_split[:, :, :n_class], alpha)  # (SPLITS, K)
    return (per_split[:, :, n_class:] <= threshold[:, :, None]).to(torch.float64).mean(dim=2)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_classwise_lac_covers_every_class(pool, alpha: float) -> None:
    probs, labels, _ = pool
    n = SMALL_N[alpha]
    coverages = classwise_coverages(probs, labels, n, alpha)
    for c in range(K):
        assert band_violation(coverages[:, c], alpha, n) is None, f"class {c}"
    exact = quantile.conformal_rank
    with pytest.MonkeyPatch.context() as patch:  # one order statistic lower: every class fails
        patch.setattr(quantile, "conformal_rank", lambda n, a: exact(n, a) - 1)
        low = classwise_coverages(probs, labels, n, alpha)
    assert all(band_violation(low[:, c], alpha, n) is not None for c in range(K))


def test_marginal_lac_does_not_cover_the_hardest_class(pool, orders) -> None:
    """What classwise LAC is for: marginal LAC's coverage of class 3 (the hardest) is far
    below 0.9 while the marginal coverage is in the band."""
    probs, labels, u = pool
    score, _, _ = true_label_statistics("lac", probs, labels, u)
    threshold = conformal_quantile(score[orders[:, :LARGE_N]], 0.1)[:, None]
    tested = orders[:, LARGE_N:]
    covered = score[tested] <= threshold
    hardest = labels[tested] == 3
    class_3 = float((covered & hardest).sum() / hardest.sum())
    assert band_violation(covered.to(torch.float64).mean(dim=1), 0.1, LARGE_N) is None
    assert class_3 < 0.8, class_3


def mean_set_sizes(candidates: torch.Tensor, strict: bool, threshold: torch.Tensor, val) -> torch.Tensor:
    """Mean set size of each split's test part: ``candidates`` (N, K) holds each class's
    statistic (score, or mass above for APS), ``threshold`` (S,), ``val`` (S, n) the
    validation rows (the test part is the rest of the pool)."""
    values, cut = candidates[val], threshold[:, None, None]
    in_val = ((values < cut) if strict else (values <= cut)).sum(dim=(1, 2))
    n_test = len(candidates) - val.shape[1]
    return (count_within(candidates, threshold, strict) - in_val).to(torch.float64) / n_test


def test_temperature_scaling_keeps_coverage_and_changes_set_size(orders) -> None:
    """The guarantee holds for any score, calibrated or not: softmax(z / T), T fitted on other
    data, covers as the raw softmax does, at every alpha; only the set sizes change. For LAC
    the change is small - one temperature barely reorders 1 - p_k across examples: mean size
    2.29 -> 2.26 at alpha 0.05 (paired over the same splits, ~10 standard errors). For APS,
    whose score sums the overconfident tail, it is larger: 5.6 -> 5.3 at alpha 0.1."""
    logits, labels = miscalibrated_logits(PER_CLASS, seed=0)
    temperature = fit_temperature(*miscalibrated_logits(PER_CLASS, seed=1))
    assert temperature is not None and temperature > 1.5  # overconfident
    sizes, orders = {}, orders[:500]
    for name, t in (("raw", 1.0), ("calibrated", temperature)):
        probs = torch.softmax(logits / t, dim=1)
        lac = 1 - label_scores(probs, labels)
        aps, above = label_scores(ranked_mass(probs)[1], labels), ranked_mass(probs)[2]
        for alpha in ALPHAS:
            assert (
                band_violation(split_coverages(lac, lac, False, orders, LARGE_N, alpha), alpha, LARGE_N)
                is None
            )
            aps_coverages = split_coverages(aps, label_scores(above, labels), True, orders, LARGE_N, alpha)
            assert band_violation(aps_coverages, alpha, LARGE_N, upper=False) is None
        val = orders[:300, :LARGE_N]
        sizes["lac", name] = mean_set_sizes(1 - probs, False, conformal_quantile(lac[val], 0.05), val)
        sizes["aps", name] = mean_set_sizes(above, True, conformal_quantile(aps[val], 0.1), val)
    print({key: round(float(value.mean()), 3) for key, value in sizes.items()})
    lac_change = sizes["lac", "calibrated"] - sizes["lac", "raw"]
    assert abs(float(lac_change.mean())) > 5 * float(lac_change.std()) / math.sqrt(len(lac_change))
    assert float(sizes["aps", "calibrated"].mean()) < 0.97 * float(sizes["aps", "raw"].mean())


@pytest.mark.slow
@pytest.mark.parametrize(("method", "n"), [("lac", 24), ("aps_randomized", 24), ("raps", 106)])
def test_end_to_end_coverage_with_fit_conformal(pool, orders, method: str, n: int) -> None:
    """fit_conformal + prediction_sets on 1000 splits, RAPS with k_reg and lambda tuned per
    split: n = 106 leaves 74 to calibrate (75 * 0.9 = 67.5, mid-band as above)."""
    probs, labels, _ = pool
    coverages = []
    for split in range(1000):
        val, test = orders[split, :n], orders[split, n:]
        predictor = fit_conformal(method, 0.1, probs[val], labels[val], seed=split)
        sets = predictor.prediction_sets(probs[test], generator=torch.Generator().manual_seed(10_000 + split))
        coverages.append(sets.gather(1, labels[test][:, None]).to(torch.float64).mean())
    assert band_violation(torch.stack(coverages), 0.1, predictor.n_calibration) is None
