"""OOD scores against NumPy formulas written here, detection metrics against scikit-learn
(roc_auc_score, average_precision_score, roc_curve), on fixed inputs with ties and degenerate
cases; the score histogram figure."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from softcal.errors import SoftcalError
from softcal.uncertainty.ood import SCORES, detection_metrics, ood_scores


def np_logsumexp(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True)))[:, 0]


def np_scores(logits: np.ndarray, t: float) -> dict[str, np.ndarray]:
    z = logits / t
    probs = np.exp(z - np_logsumexp(z)[:, None])
    plogp = np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1)), 0.0)
    return {"msp": probs.max(1), "max_logit": logits.max(1), "energy": t * np_logsumexp(z),
            "entropy": plogp.sum(1)}  # fmt: skip


def sklearn_metrics(score_in: np.ndarray, score_out: np.ndarray) -> dict[str, float]:
    y = np.r_[np.ones(len(score_in)), np.zeros(len(score_out))]
    s = np.r_[score_in, score_out]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return {
        "auroc": roc_auc_score(y, s),
        "aupr_in": average_precision_score(y, s),
        "aupr_out": average_precision_score(1 - y, -s),
        "fpr_at_95_tpr": fpr[np.argmax(tpr >= 0.95)],  # first threshold keeping 95% of in
    }


def logits_sample(n: int = 300, k: int = 10, scale: float = 3.0, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


# ----------------------------------------------------------------------------- scores


@pytest.mark.parametrize("temperature", [None, 1.0, 0.5, 2.5])
def test_scores_match_numpy(temperature):
    logits = logits_sample()
    got = ood_scores(logits, temperature)
    want = np_scores(logits.numpy(), 1.0 if temperature is None else temperature)
    assert set(got) == set(SCORES)
    for name in SCORES:
        assert got[name].dtype == torch.float64 and got[name].shape == (300,)
        np.testing.assert_allclose(got[name].numpy(), want[name], rtol=1e-12, atol=1e-12)


def test_energy_is_logsumexp_and_max_logit_ignores_t():
    logits = logits_sample(seed=1).float()
    np.testing.assert_allclose(ood_scores(logits)["energy"].numpy(),
                               torch.logsumexp(logits.double(), 1).numpy(), rtol=1e-12)  # fmt: skip
    assert torch.equal(ood_scores(logits, 3.0)["max_logit"], ood_scores(logits)["max_logit"])


def test_scores_closed_form():
    # Two classes with logits (0, ln 3): p = (1/4, 3/4).
    logits = torch.tensor([[0.0, math.log(3)], [5.0, 5.0]], dtype=torch.float64)
    got = ood_scores(logits)
    assert got["msp"].tolist() == pytest.approx([0.75, 0.5])
    assert got["max_logit"].tolist() == pytest.approx([math.log(3), 5.0])
    assert got["energy"].tolist() == pytest.approx([math.log(4), 5.0 + math.log(2)])
    assert got["entropy"].tolist() == pytest.approx(
        [0.25 * math.log(0.25) + 0.75 * math.log(0.75), math.log(0.5)])  # fmt: skip


def test_scores_finite_for_extreme_logits():
    # A one-hot softmax: entropy 0 (0 ln 0 = 0), not NaN; energy stays exact.
    got = ood_scores(torch.tensor([[1000.0, -1000.0, 0.0]]))
    assert got["entropy"].item() == 0.0 and got["msp"].item() == 1.0
    assert got["energy"].item() == pytest.approx(1000.0)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_scores_refuse_bad_temperature(bad):
    with pytest.raises(SoftcalError, match="the temperature must be a positive number, got"):
        ood_scores(logits_sample(n=4), bad)


def test_scores_refuse_wrong_shape():
    with pytest.raises(SoftcalError, match=re.escape("OOD scores need logits of shape (N, classes), got")):
        ood_scores(torch.zeros(5))


# ----------------------------------------------------------------------------- detection metrics


def check_against_sklearn(score_in: np.ndarray, score_out: np.ndarray) -> dict[str, float]:
    got = detection_metrics(torch.tensor(score_in), torch.tensor(score_out))
    want = sklearn_metrics(score_in, score_out)
    assert set(got) == set(want)
    for name in want:
        assert got[name] == pytest.approx(want[name], abs=1e-12), name
    return got


def test_metrics_match_sklearn_with_ties():
    rng = np.random.default_rng(0)
    # Rounded to one decimal: many ties within and across the two sets.
    check_against_sklearn(np.round(rng.normal(1, 1, 300), 1), np.round(rng.normal(0, 1, 200), 1))


def test_metrics_match_sklearn_on_real_scores():
    inside, outside = ood_scores(logits_sample(scale=4)), ood_scores(logits_sample(scale=1, seed=2))
    for name in SCORES:
        check_against_sklearn(inside[name].numpy(), outside[name].numpy())


@pytest.mark.parametrize("n_in", [20, 40, 37])
def test_fpr_at_exactly_95_percent_tpr(n_in):
    # n_in = 20: 19 of 20 kept is exactly 95%; the threshold stops there, not one later.
    rng = np.random.default_rng(n_in)
    check_against_sklearn(rng.permutation(n_in).astype(float), rng.permutation(30) - 10.5)


def test_identical_scores_are_chance():
    got = check_against_sklearn(np.full(30, 0.7), np.full(10, 0.7))
    assert got["auroc"] == 0.5 and got["fpr_at_95_tpr"] == 1.0
    assert got["aupr_in"] == pytest.approx(0.75) and got["aupr_out"] == pytest.approx(0.25)


def test_perfectly_separated_and_reversed():
    got = check_against_sklearn(np.array([3.0, 4.0, 5.0]), np.array([0.0, 1.0, 2.0, 2.5]))
    assert got == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr_at_95_tpr": 0.0}
    got = check_against_sklearn(np.array([0.0, 1.0]), np.array([3.0, 4.0]))
    assert got["auroc"] == 0.0 and got["fpr_at_95_tpr"] == 1.0


def test_one_input_each():
    assert check_against_sklearn(np.array([1.0]), np.array([0.0]))["auroc"] == 1.0
    assert check_against_sklearn(np.array([0.0]), np.array([0.0]))["auroc"] == 0.5


def test_metrics_refuse_empty_or_nan():
    with pytest.raises(SoftcalError, match="OOD detection needs in-distribution and OOD inputs, got 3 and 0"):
        detection_metrics(torch.ones(3), torch.ones(0))
    with pytest.raises(SoftcalError, match="OOD detection: a score is NaN or infinite; check the logits"):
        detection_metrics(torch.tensor([1.0, math.nan]), torch.ones(2))


# ----------------------------------------------------------------------------- figure


def test_score_histogram_figure():
    from softcal.calibration.figures import score_histogram_figure, to_rgb_array

    inside, outside = ood_scores(logits_sample(scale=4)), ood_scores(logits_sample(scale=1, seed=2))
    fig = score_histogram_figure(inside["energy"], outside["energy"], "energy", "MNIST vs noise",
                                 labels=("MNIST", "noise"))  # fmt: skip
    ax = fig.axes[0]
    auroc = detection_metrics(inside["energy"], outside["energy"])["auroc"]
    assert f"AUROC {100 * auroc:.2f}%" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["MNIST (300)", "noise (300)"]
    # each histogram is normalised to its own count
    heights = [sum(p.get_height() for p in c) for c in ax.containers]
    assert heights == [pytest.approx(1.0), pytest.approx(1.0)]
    assert to_rgb_array(fig).shape[2] == 3
    # a single repeated value still draws (no zero-width bins)
    to_rgb_array(score_histogram_figure(torch.ones(3), torch.ones(2), "msp"))
