"""The definitions of softcal.conformal, each against a hand-worked case or a plain numpy
reference written here (row by row, no vectorisation shared with the code): scores, ranks and
ties, the order statistic, the set rules, RAPS's tuning, and the seeded randomisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from softcal.conformal import METHODS, fit_conformal
from softcal.conformal.quantile import conformal_quantile, conformal_rank, min_calibration_size
from softcal.conformal.raps import LAMBDA_GRID, choose_lambda, raps_parameters
from softcal.conformal.scores import (
    CALIBRATION_STREAM,
    PREDICTION_STREAM,
    SPLIT_STREAM,
    candidate_scores,
    ranked_mass,
    stream_generator,
    uniforms,
)
from softcal.conformal.sets import expected_raps_size, include_last_sets
from tests.conformal_data import miscalibrated_probs

# ----------------------------------------------------------------------------- references


def np_rank_mass(row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1-based rank, mass through) of each class of one row; ties by ascending class index."""
    order = sorted(range(len(row)), key=lambda k: (-row[k], k))
    rank, through, total = np.empty(len(row), int), np.empty(len(row)), 0.0
    for position, k in enumerate(order, start=1):
        total += row[k]
        rank[k], through[k] = position, total
    return rank, through


def np_scores(method: str, probs: np.ndarray, u=None, k_reg=None, lam=None) -> np.ndarray:
    out = np.empty_like(probs)
    for i, row in enumerate(probs):
        rank, through = np_rank_mass(row)
        if method in ("lac", "classwise_lac"):
            out[i] = 1 - row
        elif method == "aps":
            out[i] = through
        else:
            out[i] = through - u[i] * row + (lam * np.maximum(rank - k_reg, 0) if method == "raps" else 0)
    return out


def np_threshold(scores: np.ndarray, alpha: float) -> float:
    """The ceil((n + 1)(1 - alpha))-th smallest, by the textbook formula (alphas used here
    are exact enough in floating point)."""
    k = math.ceil((len(scores) + 1) * (1 - alpha) - 1e-9)
    return math.inf if k > len(scores) else float(np.sort(scores)[k - 1])


def np_sets(method: str, probs: np.ndarray, q, u=None, k_reg=None, lam=None) -> np.ndarray:
    """Non-randomised APS: walk down the ranking, adding classes until the mass reaches q."""
    if method != "aps":
        return np_scores(method, probs, u, k_reg, lam) <= q
    sets = np.zeros(probs.shape, bool)
    for i, row in enumerate(probs):
        total = 0.0
        for k in sorted(range(len(row)), key=lambda k: (-row[k], k)):
            if total >= q:
                break
            sets[i, k], total = True, total + row[k]
    return sets


@pytest.fixture(scope="module")
def split() -> tuple[torch.Tensor, ...]:
    probs, labels = miscalibrated_probs(40, seed=5)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    val, test = order[:300], order[300:]
    return probs[val], labels[val], probs[test], labels[test]


# ----------------------------------------------------------------------------- definitions


def test_scores_of_a_hand_worked_row() -> None:
    """p = [0.1, 0.5, 0.4]: ranks 3, 1, 2; mass through 1.0, 0.5, 0.9; mass above 0.9, 0, 0.5."""
    probs = torch.tensor([[0.1, 0.5, 0.4]], dtype=torch.float64)
    rank, through, above = ranked_mass(probs)
    assert rank.tolist() == [[3, 1, 2]]
    torch.testing.assert_close(through, torch.tensor([[1.0, 0.5, 0.9]], dtype=torch.float64))
    torch.testing.assert_close(above, torch.tensor([[0.9, 0.0, 0.5]], dtype=torch.float64))
    u = torch.tensor([0.5], dtype=torch.float64)
    expected = {
        "lac": [0.9, 0.5, 0.6],
        "aps": [1.0, 0.5, 0.9],
        "aps_randomized": [0.95, 0.25, 0.7],
        "raps": [0.95 + 0.2, 0.25, 0.7 + 0.1],  # k_reg 1, lam 0.1: ranks 3 and 2 pay 2 and 1 lam
    }
    for method, values in expected.items():
        got = candidate_scores(method, probs, u=u, k_reg=1, lam=0.1)
        torch.testing.assert_close(got, torch.tensor([values], dtype=torch.float64), msg=method)


def test_ties_are_ranked_by_class_index() -> None:
    """Equal probabilities: the lower class index ranks first, so p = [0.3, 0.4, 0.3] ranks
    class 0 second and class 2 third, and a set reaching 0.65 holds class 0 but not class 2."""
    probs = torch.tensor([[0.3, 0.4, 0.3]], dtype=torch.float64)
    rank, through, _ = ranked_mass(probs)
    assert rank.tolist() == [[2, 1, 3]]
    torch.testing.assert_close(through, torch.tensor([[0.7, 0.4, 1.0]], dtype=torch.float64))
    assert include_last_sets(probs, torch.tensor(0.65, dtype=torch.float64)).tolist() == [[True, True, False]]
    uniform = torch.full((1, 4), 0.25, dtype=torch.float64)
    assert ranked_mass(uniform)[0].tolist() == [[1, 2, 3, 4]]
    wide = torch.cat([torch.full((1, 40), 1 / 40), torch.tensor([[0.3, 0.4, 0.3] + [0.0] * 37])]).double()
    assert ranked_mass(wide)[0].tolist() == [list(range(1, 41)), [2, 1, 3, *range(4, 41)]]
    predictor = fit_conformal("aps", 0.5, uniform.expand(3, 4), torch.tensor([0, 1, 3]))
    assert float(predictor.threshold) == 0.5  # scores 0.25, 0.5, 1.0: k = ceil(4 * 0.5) = 2
    assert predictor.prediction_sets(uniform).tolist() == [[True, True, False, False]]


@pytest.mark.parametrize(
    ("n", "alpha", "k"),
    [(99, 0.1, 90), (9, 0.1, 9), (8, 0.1, 9), (19, 0.05, 19), (18, 0.05, 19), (99, 0.01, 99), (98, 0.01, 99),
     (99, 0.45, 55), (9, 0.7, 3), (2000, 0.1, 1801), (0, 0.1, 1)],
)  # fmt: skip
def test_conformal_rank_is_exact(n: int, alpha: float, k: int) -> None:
    """k = ceil((n + 1)(1 - alpha)) with alpha as the decimal it prints as: (99, 0.45) and
    (9, 0.7) are where float arithmetic gives k + 1 (100 * 0.55 = 55.000000000000007)."""
    assert conformal_rank(n, alpha) == k


def test_min_calibration_size_is_the_first_n_with_a_finite_threshold() -> None:
    for alpha in (0.1, 0.05, 0.01, 0.3, 0.5, 0.7, 0.45, 0.999):
        n_min = min_calibration_size(alpha)
        assert conformal_rank(n_min, alpha) <= n_min and conformal_rank(n_min - 1, alpha) > n_min - 1
        assert n_min == math.ceil(1 / alpha - 1e-12) - 1


def test_conformal_quantile_is_the_kth_smallest_batched() -> None:
    scores = torch.tensor([[0.5, 0.1, 0.9, 0.3, 0.7], [5.0, 4.0, 3.0, 2.0, 1.0]], dtype=torch.float64)
    # n = 5, alpha 0.3: k = ceil(6 * 0.7) = ceil(4.2) = 5 - the largest; alpha 0.5: k = 3.
    assert conformal_quantile(scores, 0.3).tolist() == [0.9, 5.0]
    assert conformal_quantile(scores, 0.5).tolist() == [0.5, 3.0]
    assert conformal_quantile(scores, 0.1).tolist() == [math.inf, math.inf]  # k = 6 > 5


# ----------------------------------------------------------------------------- fit and sets


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("alpha", [0.1, 0.02])
def test_fit_and_sets_equal_the_numpy_reference(split, method: str, alpha: float) -> None:
    """Thresholds (1e-12) and sets (exactly) against the numpy reference; the randomised
    methods' validation uniforms are the seed's calibration stream, test uniforms the
    generator passed in. RAPS at given k_reg and lam (tuning: the RAPS tests below)."""
    probs, labels, test_probs, _ = (t.numpy() for t in split)
    extra = {"k_reg": 2, "lam": 0.05} if method == "raps" else {}
    predictor = fit_conformal(method, alpha, split[0], split[1], seed=7, **extra)
    u_val = uniforms(len(labels), stream_generator(7, CALIBRATION_STREAM)).numpy()
    u_test = torch.rand(
        len(test_probs), generator=torch.Generator().manual_seed(3), dtype=torch.float64
    ).numpy()
    scores = np_scores(method, probs, u_val, **extra)[np.arange(len(labels)), labels]
    if method == "classwise_lac":
        expected = [np_threshold(scores[labels == c], alpha) for c in range(probs.shape[1])]
    else:
        expected = np_threshold(scores, alpha)
    np.testing.assert_allclose(predictor.threshold.numpy(), expected, rtol=0, atol=1e-12)
    sets = predictor.prediction_sets(split[2], generator=torch.Generator().manual_seed(3)).numpy()
    np.testing.assert_array_equal(
        sets, np_sets(method, test_probs, predictor.threshold.numpy(), u_test, **extra)
    )


def test_randomised_sets_are_a_prefix_with_romanos_last_class_rule(split) -> None:
    """For a fixed u the randomised APS set is a prefix of the ranking: every class with
    M(k) <= q, plus the crossing class exactly when u >= (M - q) / p."""
    probs, q = split[2], torch.tensor(0.9, dtype=torch.float64)
    u = torch.rand(len(probs), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sets = candidate_scores("aps_randomized", probs, u=u) <= q
    rank, through, _ = ranked_mass(probs)
    sure = through <= q
    crossing = (rank == (sure.sum(dim=1, keepdim=True) + 1)) & ~sure
    expected = sure | (crossing & (u[:, None] >= (through - q) / probs))
    assert torch.equal(sets, expected)
    sizes = sets.sum(dim=1, keepdim=True)
    assert torch.equal(sets, rank <= sizes)  # a prefix


# ----------------------------------------------------------------------------- RAPS tuning


def test_raps_tunes_on_a_random_30_percent_and_calibrates_on_the_rest(split) -> None:
    probs, labels = split[0], split[1]
    n, alpha = len(labels), 0.1
    u = uniforms(n, stream_generator(0, CALIBRATION_STREAM))
    chosen = raps_parameters(probs, labels, u, alpha, stream_generator(0, SPLIT_STREAM))
    assert len(chosen.tune) == math.ceil(0.3 * n) == 90 and len(chosen.calibrate) == n - 90
    assert sorted(torch.cat([chosen.tune, chosen.calibrate]).tolist()) == list(range(n))
    tune_probs, tune_labels = probs[chosen.tune].numpy(), labels[chosen.tune].numpy()
    ranks = np.sort([np_rank_mass(row)[0][y] for row, y in zip(tune_probs, tune_labels, strict=True)])
    assert chosen.k_reg == ranks[math.ceil(0.9 * 90) - 1]  # smallest k with top-k coverage >= 90 %
    assert np.mean(ranks <= chosen.k_reg) >= 0.9 > np.mean(ranks <= chosen.k_reg - 1)
    sizes = {}
    for lam in LAMBDA_GRID:  # each lambda calibrated on the tuning part, sized on it
        scores = np_scores("raps", tune_probs, u[chosen.tune].numpy(), chosen.k_reg, lam)
        q = np_threshold(scores[np.arange(90), tune_labels], alpha)
        sizes[lam] = float(expected_raps_size(probs[chosen.tune], torch.tensor(q), chosen.k_reg, lam).mean())
    assert chosen.lam == min(LAMBDA_GRID, key=lambda lam: (sizes[lam], lam))
    predictor = fit_conformal("raps", alpha, probs, labels, seed=0)
    assert (predictor.k_reg, predictor.lam, predictor.n_tuning, predictor.n_calibration) == (
        chosen.k_reg, chosen.lam, 90, 210)  # fmt: skip


def test_expected_raps_size_is_the_mean_over_the_randomisation(split) -> None:
    probs, q, draws = split[2][:50], torch.tensor(0.93, dtype=torch.float64), 4000
    u = torch.rand(draws * len(probs), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    sets = candidate_scores("raps", probs.repeat(draws, 1), u=u, k_reg=2, lam=0.05) <= q
    sampled = sets.sum(dim=1).reshape(draws, len(probs)).to(torch.float64).mean(dim=0)
    expected = expected_raps_size(probs, q, 2, 0.05)
    assert (expected % 1 > 0.05).sum() > 20  # most rows have a random last class
    torch.testing.assert_close(sampled, expected, rtol=0, atol=0.04)  # SE <= 0.5 / sqrt(4000) = 0.008


def test_lambda_ties_go_to_the_smallest() -> None:
    """Confident rows whose sets are one class for every lambda: all sizes tie."""
    probs = torch.tensor([[0.99, 0.01, 0.0]] * 30, dtype=torch.float64)
    u = torch.full((30,), 0.5, dtype=torch.float64)
    assert choose_lambda(probs, torch.zeros(30, dtype=torch.int64), u, 0.1, 1) == LAMBDA_GRID[0]


def test_raps_too_small_to_tune_uses_the_defaults_and_all_examples(split) -> None:
    """n = 20 at alpha 0.1: the tuning part would be 6 < ceil(1/0.1) - 1 = 9 examples."""
    predictor = fit_conformal("raps", 0.1, split[0][:20], split[1][:20])
    assert (predictor.k_reg, predictor.lam, predictor.n_tuning, predictor.n_calibration) == (5, 0.01, 0, 20)
    given = fit_conformal("raps", 0.1, split[0], split[1], k_reg=3, lam=0.2)
    assert (given.k_reg, given.lam, given.n_tuning, given.n_calibration) == (3, 0.2, 0, 300)
    half = fit_conformal("raps", 0.1, split[0], split[1], lam=0.2)  # k_reg tuned, lam given
    assert half.lam == 0.2 and half.n_tuning == 90


# ----------------------------------------------------------------------------- randomisation


@pytest.mark.parametrize("method", ["aps_randomized", "raps"])
def test_randomised_methods_are_deterministic_given_the_seed(split, method: str) -> None:
    probs, labels, test_probs, _ = split
    first, again = (fit_conformal(method, 0.1, probs, labels, seed=3) for _ in range(2))
    assert first.state() == again.state()
    assert fit_conformal(method, 0.1, probs, labels, seed=4).state() != first.state()
    assert torch.equal(first.prediction_sets(test_probs), again.prediction_sets(test_probs))
    # One generator across a stream of batches = one call on the whole batch.
    whole = first.prediction_sets(test_probs, generator=torch.Generator().manual_seed(9))
    stream = torch.Generator().manual_seed(9)
    parts = [
        first.prediction_sets(test_probs[i : i + 7], generator=stream) for i in range(0, len(test_probs), 7)
    ]
    assert torch.equal(torch.cat(parts), whole)
    assert not torch.equal(
        first.prediction_sets(test_probs, generator=torch.Generator().manual_seed(8)), whole
    )


def test_seed_streams_do_not_overlap() -> None:
    """The test uniforms are not the validation uniforms of the same seed."""
    validation = uniforms(1000, stream_generator(0, CALIBRATION_STREAM))
    test = uniforms(1000, stream_generator(0, PREDICTION_STREAM))
    other_seed = uniforms(1000, stream_generator(1, CALIBRATION_STREAM))
    assert not torch.isin(test, validation).any() and not torch.isin(other_seed, validation).any()
    assert torch.equal(validation, uniforms(1000, stream_generator(0, CALIBRATION_STREAM)))
