"""softcal.conformal against MAPIE 1.x's SplitConformalClassifier (the test oracle; a dev
dependency, never imported by src/).

MAPIE sees the same probabilities through a prefit "classifier" whose predict_proba returns the
rows of a fixed matrix (X is the row index). Thresholds must agree to 1e-9 and sets exactly.

* **LAC**: MAPIE's ``"lac"`` as it is. Its threshold is ``np.quantile(scores,
  ceil((n + 1)(1 - alpha)) / n, method="lower")``, the ceil((n + 1)(1 - alpha))-th smallest
  score - the paper's definition and ours (quantile.py), so no convention is mirrored.
* **Non-randomised APS**: MAPIE's set rule ``include_last_label=True`` (the smallest prefix of
  the ranking reaching q, the crossing label included) is ours. But MAPIE's ``"aps"`` always
  randomises its *calibration* scores (M(y) - u p_y; MAPIE PR #98: "Randomness is always used
  to estimate the scores on the calibration set"), whatever include_last_label says. So:
  (1) with MAPIE's own APS class, its scores made non-random (its get_true_label_cumsum_proba,
  nothing else changed), thresholds and sets equal ours; (2) with plain MAPIE "aps", our
  include-last sets at MAPIE's threshold equal its sets, and its threshold is lower than ours
  (randomised scores are smaller).
* **Ties**: MAPIE ranks tied probabilities by *descending* class index (argsort, then flip) and
  then includes every class whose probability equals the last included one's; we rank ties by
  ascending index and include a prefix. ``test_tied_probabilities_differ_from_mapie_as_documented``
  pins that difference. MAPIE also compares with a tolerance of 1e-8; we compare exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from softcal.conformal import ConformalPredictor, fit_conformal

mapie_classification = pytest.importorskip("mapie.classification")
mapie_scores = pytest.importorskip("mapie.conformity_scores")

K, N_VAL, N_TEST = 10, 2000, 1000
ALPHAS = (0.1, 0.05, 0.01)


class FixedProbabilities(ClassifierMixin, BaseEstimator):
    """A fitted classifier whose predict_proba(X) is rows X[:, 0] of a fixed matrix."""

    def __init__(self, probs: np.ndarray | None = None) -> None:
        self.probs = probs

    def fit(self, X, y):  # noqa: N803 - scikit-learn's names
        return self

    def predict_proba(self, X):  # noqa: N803
        return self.probs[np.asarray(X)[:, 0].astype(int)]

    def predict(self, X):  # noqa: N803
        return self.predict_proba(X).argmax(axis=1)


def prefit(probs: np.ndarray) -> FixedProbabilities:
    estimator = FixedProbabilities(probs)
    estimator.classes_, estimator.n_features_in_ = np.arange(probs.shape[1]), 1
    return estimator


class NonRandomAPS(mapie_scores.APSConformityScore):
    """MAPIE's APS with its calibration scores left non-random: M(y), the cumulated mass
    through the true label, from MAPIE's own function."""

    def get_conformity_scores(self, y, y_pred, y_enc=None, **kwargs):
        scores, self.cutoff = self.get_true_label_cumsum_proba(y, y_pred, self.classes)
        return scores


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """Softmax of seeded logits of varying sharpness (float64), labels drawn from them."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(N_VAL + N_TEST, K)) * rng.uniform(0.5, 4.0, size=(N_VAL + N_TEST, 1))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    labels = (probs.cumsum(axis=1) < rng.uniform(size=(len(probs), 1))).sum(axis=1).clip(max=K - 1)
    return probs, labels


def mapie_fit(probs, labels, alpha, score, include_last_label=None, n_val=N_VAL):
    """(MAPIE's threshold, MAPIE's test sets (N_TEST, K) bool) from the first n_val rows."""
    rows = np.arange(len(probs))[:, None]
    model = mapie_classification.SplitConformalClassifier(
        prefit(probs), confidence_level=1 - alpha, conformity_score=score, prefit=True
    )
    model.conformalize(rows[:n_val], labels[:n_val])
    params = None if include_last_label is None else {"include_last_label": include_last_label}
    _, sets = model.predict_set(rows[n_val:], conformity_score_params=params)
    threshold = float(model._mapie_classifier.conformity_score_function_.quantiles_[0])
    return threshold, sets[:, :, 0]


def ours(method, probs, labels, alpha, n_val=N_VAL):
    predictor = fit_conformal(method, alpha, torch.tensor(probs[:n_val]), torch.tensor(labels[:n_val]))
    return predictor, predictor.prediction_sets(torch.tensor(probs[n_val:])).numpy()


# MAPIE warns when a small calibration split lacks some classes; irrelevant here.
pytestmark = pytest.mark.filterwarnings("ignore:.*conformalization dataset has less labels")


@pytest.fixture(scope="module")
def sharp() -> tuple[np.ndarray, np.ndarray]:
    """A 95 %-accurate model: at alpha 0.1 LAC's threshold is below 1 - (top probability) of
    its least confident rows, which get empty sets."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(N_VAL + N_TEST, K)) * 3.0
    labels = np.where(
        rng.uniform(size=len(logits)) < 0.95, logits.argmax(axis=1), rng.integers(0, K, len(logits))
    )
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True), labels


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("which", ["data", "sharp"])
def test_lac_equals_mapie(which: str, alpha: float, request) -> None:
    probs, labels = request.getfixturevalue(which)
    threshold, sets = mapie_fit(probs, labels, alpha, "lac")
    predictor, our_sets = ours("lac", probs, labels, alpha)
    assert float(predictor.threshold) == pytest.approx(threshold, abs=1e-9)
    np.testing.assert_array_equal(our_sets, sets)
    sizes = sets.sum(axis=1)
    assert len(np.unique(sizes)) >= 3
    if which == "sharp" and alpha == 0.1:
        assert (sizes == 0).sum() > 10  # empty sets, equal in both


@pytest.mark.parametrize("alpha", ALPHAS)
def test_non_randomised_aps_equals_mapie_include_last_label(data, alpha: float) -> None:
    probs, labels = data
    threshold, sets = mapie_fit(probs, labels, alpha, NonRandomAPS(), include_last_label=True)
    predictor, our_sets = ours("aps", probs, labels, alpha)
    assert float(predictor.threshold) == pytest.approx(threshold, abs=1e-9)
    np.testing.assert_array_equal(our_sets, sets)
    assert len(np.unique(sets.sum(axis=1))) >= 4


@pytest.mark.parametrize("alpha", ALPHAS)
def test_plain_mapie_aps_sets_are_our_include_last_rule_at_its_threshold(data, alpha: float) -> None:
    """Unmodified MAPIE "aps": same set rule, a lower threshold (its calibration scores are
    randomised, M(y) - u p_y)."""
    probs, labels = data
    threshold, sets = mapie_fit(probs, labels, alpha, "aps", include_last_label=True)
    at_mapie = ConformalPredictor("aps", alpha, torch.tensor(threshold), num_classes=K, n_calibration=N_VAL)
    np.testing.assert_array_equal(at_mapie.prediction_sets(torch.tensor(probs[N_VAL:])).numpy(), sets)
    predictor, _ = ours("aps", probs, labels, alpha)
    assert threshold < float(predictor.threshold)


def test_mapie_refuses_splits_we_answer_with_full_sets(data) -> None:
    """MAPIE refuses n < 1/alpha; we give q = +inf when k > n (n < 1/alpha - 1) and the k-th
    smallest otherwise - so at n = 9, alpha = 0.1 we have a finite threshold (the largest score)
    where MAPIE has none."""
    probs, labels = data
    with pytest.raises(ValueError, match="Number of samples of the score is too low"):
        mapie_fit(probs, labels, 0.1, "lac", n_val=9)
    predictor, _ = ours("lac", probs, labels, 0.1, n_val=9)
    assert float(predictor.threshold) == float(np.max(1 - probs[np.arange(9), labels[:9]]))


def test_tied_probabilities_differ_from_mapie_as_documented() -> None:
    """Calibration rows with 0.65 on their label (and 0.35 on another) give q = 0.65 in both. A
    test row [0.4, 0.3, 0.3]: our ranking is 0, 1, 2 (ties by ascending index), the prefix
    reaching 0.65 is {0, 1}; MAPIE ranks 0, 2, 1, stops at class 2 and adds every class as
    probable as it: {0, 1, 2}."""
    calibration = [np.roll([0.65, 0.35, 0.0], shift) for shift in range(3)] * 7  # labels 0, 1, 2
    probs = np.array([*calibration[:20], [0.4, 0.3, 0.3]])
    labels = np.array([i % 3 for i in range(20)] + [0])
    threshold, sets = mapie_fit(probs, labels, 0.1, NonRandomAPS(), include_last_label=True, n_val=20)
    predictor, our_sets = ours("aps", probs, labels, 0.1, n_val=20)
    assert threshold == pytest.approx(0.65) and float(predictor.threshold) == pytest.approx(0.65)
    assert sets.tolist() == [[True, True, True]]
    assert our_sets.tolist() == [[True, True, False]]


def test_mapie_float_rounding_of_k_is_one_order_statistic_higher_at_some_alphas(data) -> None:
    """MAPIE computes k = ceil((n + 1)(1 - alpha)) in floating point: at alpha 0.45, n = 99,
    100 * 0.55 is 55.000000000000007 there and k becomes 56. We compute k exactly (55); at
    alpha 0.1, 0.05, 0.01 the two agree for every n up to 5000."""
    probs, labels = data
    scores = np.sort(1 - probs[np.arange(99), labels[:99]])
    threshold, _ = mapie_fit(probs, labels, 0.45, "lac", n_val=99)
    predictor, _ = ours("lac", probs, labels, 0.45, n_val=99)
    assert threshold == scores[55] and float(predictor.threshold) == scores[54]
