"""Edge cases with defined behaviour (one test each), the stored state, and the coverage
report against hand-counted values."""

from __future__ import annotations

import json
import math

import pytest
import torch

from softcal.conformal import METHODS, ConformalPredictor, coverage_report, fit_conformal
from softcal.conformal.scores import ranked_mass
from tests.conformal_data import miscalibrated_probs


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    probs, labels = miscalibrated_probs(60, seed=11)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    return probs[order], labels[order]


@pytest.mark.parametrize("method", METHODS)
def test_alpha_too_small_for_the_split_gives_full_sets(data, method: str) -> None:
    """alpha 0.01 with n = 50: k = ceil(51 * 0.99) = 51 > n, so q = +inf - every class in every
    set, coverage 1. The guarantee holds trivially; the largest score instead would cover
    only n/(n + 1) = 0.98 < 0.99 on average. The stored state writes the threshold as "inf"."""
    probs, labels = data
    predictor = fit_conformal(method, 0.01, probs[:50], labels[:50])
    assert torch.isinf(predictor.threshold).all()
    assert predictor.prediction_sets(probs[50:]).all()
    assert json.loads(json.dumps(predictor.state(), allow_nan=False))["threshold"] in ("inf", ["inf"] * 10)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "classwise_lac"])
def test_a_split_smaller_than_one_over_alpha(data, method: str) -> None:
    """alpha 0.1: n = 8 < 1/alpha - 1 gives q = +inf (full sets); n = 9, still below
    1/alpha = 10 (where MAPIE refuses), gives k = ceil(10 * 0.9) = 9 = n: the largest score.
    (classwise_lac per class: test_class_with_few_examples_is_always_included.)"""
    probs, labels = data
    eight = fit_conformal(method, 0.1, probs[:8], labels[:8])
    assert torch.isinf(eight.threshold) and eight.prediction_sets(probs[50:]).all()
    nine = fit_conformal(method, 0.1, probs[:9], labels[:9])  # raps: too small to tune, all 9 calibrate
    assert math.isfinite(float(nine.threshold)) and nine.n_calibration == 9
    if method in ("lac", "aps"):
        rows = torch.arange(9)
        scores = (
            1 - probs[rows, labels[:9]] if method == "lac" else ranked_mass(probs[:9])[1][rows, labels[:9]]
        )
        assert float(nine.threshold) == float(scores.max())


def test_class_with_few_examples_is_always_included(data) -> None:
    """classwise_lac: a class with fewer than ceil(1/alpha) - 1 validation examples (none
    at all, or 8 at alpha 0.1) gets q = +inf, so every set holds it; 9 give a finite one."""
    probs, labels = data
    keep = (labels != 3) & (labels != 5)
    fives = torch.nonzero(labels == 5)[:, 0]
    val = torch.cat([torch.nonzero(keep)[:, 0], fives[:8]])
    predictor = fit_conformal("classwise_lac", 0.1, probs[val], labels[val])
    infinite = torch.isinf(predictor.threshold)
    assert infinite.tolist() == [c in (3, 5) for c in range(10)]
    assert predictor.prediction_sets(probs)[:, [3, 5]].all()
    nine = fit_conformal(
        "classwise_lac", 0.1, probs[torch.cat([val, fives[8:9]])], labels[torch.cat([val, fives[8:9]])]
    )
    assert torch.isinf(nine.threshold).tolist() == [c == 3 for c in range(10)]


def test_ties_between_scores_keep_the_lower_bound() -> None:
    """Scores that tie across examples (discrete probabilities): the k-th smallest is still the
    threshold, and coverage is >= k/(n + 1) (here much more: half the scores equal q)."""
    probs = torch.tensor([[0.8, 0.2]] * 50 + [[0.6, 0.4]] * 50, dtype=torch.float64)
    labels = torch.zeros(100, dtype=torch.int64)
    predictor = fit_conformal("lac", 0.3, probs, labels)  # k = ceil(101 * 0.7) = 71: score 0.4
    assert float(predictor.threshold) == pytest.approx(0.4)
    report = coverage_report(predictor.prediction_sets(probs), labels)
    assert report["coverage"] == 1.0 >= 71 / 101


@pytest.mark.parametrize("method", METHODS)
def test_a_single_class(method: str) -> None:
    """K = 1: every probability is 1. The general rules apply: lac, aps and classwise_lac put
    the class in every set; the randomised scores M - u p = 1 - u spread over (0, 1], so
    aps_randomized and raps leave it out of about alpha of the sets (exact coverage
    k/(n + 1), empty sets kept)."""
    probs, labels = torch.ones(100, 1, dtype=torch.float64), torch.zeros(100, dtype=torch.int64)
    predictor = fit_conformal(method, 0.1, probs, labels)
    sets = predictor.prediction_sets(torch.ones(2000, 1), generator=torch.Generator().manual_seed(1))
    report = coverage_report(sets, torch.zeros(2000, dtype=torch.int64))
    if method in ("aps_randomized", "raps"):
        # one calibration: coverage ~ Beta(91, 11) around 91/101, sd 0.03
        assert 0.8 < report["coverage"] < 0.99 and report["empty_rate"] == pytest.approx(
            1 - report["coverage"]
        )
    else:
        assert sets.all() and report["coverage"] == 1.0


def test_empty_sets_are_kept_and_reported() -> None:
    """LAC with q = 0.05 (confident validation rows): a test row whose largest probability is
    below 1 - q = 0.95 gets no class at all. The set stays empty and the report counts it."""
    probs = torch.tensor([[0.95, 0.05]] * 19 + [[0.97, 0.03]], dtype=torch.float64)
    predictor = fit_conformal("lac", 0.1, probs, torch.zeros(20, dtype=torch.int64))
    assert float(predictor.threshold) == pytest.approx(0.05)
    test = torch.tensor([[0.96, 0.04], [0.5, 0.5], [0.02, 0.98]], dtype=torch.float64)
    sets = predictor.prediction_sets(test)
    assert sets.tolist() == [[True, False], [False, False], [False, True]]
    report = coverage_report(sets, torch.tensor([0, 0, 1]))
    assert report["empty_rate"] == pytest.approx(1 / 3) and report["coverage"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("method", METHODS)
def test_state_round_trips_through_json(data, method: str) -> None:
    probs, labels = data
    predictor = fit_conformal(method, 0.05, probs[:400], labels[:400], seed=5)
    text = json.dumps(predictor.state(), allow_nan=False)
    loaded = ConformalPredictor.from_state(json.loads(text))
    assert loaded.state() == predictor.state()
    assert torch.equal(loaded.threshold, predictor.threshold) and loaded.threshold.dtype == torch.float64
    assert torch.equal(loaded.prediction_sets(probs[400:]), predictor.prediction_sets(probs[400:]))
    assert torch.equal(ConformalPredictor.from_state(predictor.state()).threshold, predictor.threshold)


def test_coverage_report_of_hand_counted_sets() -> None:
    sets = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 1], [1, 1, 1], [0, 0, 1]], dtype=torch.bool)
    labels = torch.tensor([0, 2, 1, 1, 2, 2])  # covered: rows 0, 3, 4, 5
    assert coverage_report(sets, labels) == {
        "n": 6,
        "coverage": 4 / 6,
        "mean_set_size": 9 / 6,
        "singleton_rate": 2 / 6,
        "empty_rate": 1 / 6,
        "coverage_by_set_size": {0: (1, 0.0), 1: (2, 1.0), 2: (2, 0.5), 3: (1, 1.0)},
        "worst_class": 1,
        "worst_class_coverage": 0.5,
        "per_class_coverage": {0: 1.0, 1: 0.5, 2: 2 / 3},
    }
    absent = coverage_report(sets[:2], torch.tensor([0, 0]))  # classes 1 and 2 absent: not listed
    assert absent["per_class_coverage"] == {0: 1.0} and absent["worst_class"] == 0
