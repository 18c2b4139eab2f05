"""Bad input to softcal.conformal: one line each, naming the fix (whole messages asserted;
docs/errors.md lists them and names these tests)."""

from __future__ import annotations

import pytest
import torch

from softcal.conformal import ConformalPredictor, coverage_report, fit_conformal, parse_alphas
from softcal.errors import SoftcalError

PROBS = torch.softmax(torch.randn(20, 4, generator=torch.Generator().manual_seed(0)), dim=1)
LABELS = torch.arange(20) % 4


def message(call) -> str:
    with pytest.raises(SoftcalError) as caught:
        call()
    text = str(caught.value)
    assert "\n" not in text, text
    return text


def test_alpha_messages() -> None:
    for alpha in (0.0, 1.0, 1.5, -0.1, float("nan"), True):
        assert message(lambda a=alpha: fit_conformal("lac", a, PROBS, LABELS)) == (
            f"conformal alpha {alpha!r} is outside (0, 1); give the miscoverage, e.g. 0.1 for 90% coverage"
        )
    assert message(lambda: fit_conformal("lac", "ten", PROBS, LABELS)) == (
        "conformal alpha 'ten' is not a number; give the miscoverage, e.g. 0.1 for 90% coverage"
    )


def test_parse_alphas_messages() -> None:
    assert parse_alphas("0.1,0.05,0.01") == [0.1, 0.05, 0.01]
    assert parse_alphas(" 0.2 , 1e-3") == [0.2, 0.001]
    assert message(lambda: parse_alphas("0.1,1.5")) == (
        "conformal alpha '1.5' is outside (0, 1); give the miscoverage, e.g. 0.1 for 90% coverage"
    )
    assert message(lambda: parse_alphas("0.1,,0.05")) == (
        "conformal alpha '' is not a number; give the miscoverage, e.g. 0.1 for 90% coverage"
    )
    assert message(lambda: parse_alphas("90%")) == (
        "conformal alpha '90%' is not a number; give the miscoverage, e.g. 0.1 for 90% coverage"
    )
    assert message(lambda: parse_alphas(" ")) == (
        "no conformal alpha in ' '; give one or more in (0, 1), comma-separated, e.g. 0.1,0.05"
    )


def test_method_and_parameter_messages() -> None:
    assert message(lambda: fit_conformal("thr", 0.1, PROBS, LABELS)) == (
        "unknown conformal method 'thr'; choose one of lac, aps, aps_randomized, raps, classwise_lac"
    )
    assert message(lambda: fit_conformal("lac", 0.1, PROBS, LABELS, k_reg=2)) == (
        "k_reg and lam belong to raps, not lac; leave them out"
    )
    assert message(lambda: fit_conformal("raps", 0.1, PROBS, LABELS, k_reg=-1)) == (
        "raps k_reg must be a whole number >= 0, got -1"
    )
    assert message(lambda: fit_conformal("raps", 0.1, PROBS, LABELS, lam=float("inf"))) == (
        "raps lam must be a finite number >= 0, got inf"
    )
    assert message(lambda: fit_conformal("aps_randomized", 0.1, PROBS, LABELS, seed=-3)) == (
        "conformal seed must be a whole number >= 0, got -3"
    )


def test_probability_messages() -> None:
    assert message(lambda: fit_conformal("lac", 0.1, PROBS[0], LABELS)) == (
        "conformal prediction needs probabilities of shape (N, K), got shape (4,);"
        " pass one row of class probabilities per example"
    )
    assert message(lambda: fit_conformal("lac", 0.1, PROBS[:0], LABELS[:0])) == (
        "conformal calibration needs at least one validation example; the validation split is empty"
    )
    logits = torch.log(PROBS)
    assert message(lambda: fit_conformal("lac", 0.1, logits, LABELS)) == (
        "conformal prediction needs probabilities (finite, in [0, 1], rows summing to 1); 20 of 20 rows"
        " are not - pass softmax(logits), not logits"
    )
    nan = PROBS.clone()
    nan[3, 1] = float("nan")
    assert message(lambda: fit_conformal("lac", 0.1, nan, LABELS)).startswith(
        "conformal prediction needs probabilities (finite, in [0, 1], rows summing to 1); 1 of 20 rows"
    )


def test_label_messages() -> None:
    assert message(lambda: fit_conformal("lac", 0.1, PROBS, LABELS[:19])) == (
        "conformal prediction needs one label per probability row, got labels of shape (19,) for 20 rows"
    )
    assert message(lambda: fit_conformal("lac", 0.1, PROBS, LABELS + 1)) == (
        "conformal labels run 1..4, expected 0..3 (one per probability column);"
        " the labels do not belong to these probabilities"
    )
    assert message(lambda: fit_conformal("lac", 0.1, PROBS, LABELS.float())) == (
        "conformal labels must be class indices (integers), got torch.float32"
    )


def test_predictor_messages() -> None:
    predictor = fit_conformal("lac", 0.1, PROBS, LABELS)
    assert message(lambda: predictor.prediction_sets(PROBS[:, :3].softmax(dim=1))) == (
        "this conformal predictor was fitted for 4 classes, got probabilities for 3;"
        " use the predictor fitted for this model"
    )
    assert message(lambda: ConformalPredictor.from_state({"method": "lac"})) == (
        "not a stored conformal predictor (expected the dict ConformalPredictor.state() returns,"
        " format softcal.conformal/1); refit it with fit_conformal"
    )
    state = predictor.state() | {"threshold": [0.5, 0.5]}
    assert message(lambda: ConformalPredictor.from_state(state)) == (
        "the lac conformal predictor needs a threshold of shape () for 4 classes, got (2,);"
        " refit it with fit_conformal"
    )
    assert message(lambda: ConformalPredictor.from_state(predictor.state() | {"num_classes": 0})) == (
        "a conformal predictor needs num_classes >= 1, got 0; refit it with fit_conformal"
    )
    raps = fit_conformal("raps", 0.1, PROBS, LABELS).state() | {"k_reg": None}
    assert message(lambda: ConformalPredictor.from_state(raps)) == (
        "the raps conformal predictor needs k_reg and lam; refit it with fit_conformal"
    )


def test_coverage_report_messages() -> None:
    sets = torch.ones(5, 3, dtype=torch.bool)
    for bad_sets, bad_labels, shown in [
        (sets, torch.zeros(4, dtype=torch.int64), "sets (5, 3) torch.bool and labels (4,) torch.int64"),
        (
            sets.int(),
            torch.zeros(5, dtype=torch.int64),
            "sets (5, 3) torch.int32 and labels (5,) torch.int64",
        ),
        (sets, torch.full((5,), 3), "sets (5, 3) torch.bool and labels (5,) torch.int64"),
        (sets[:0], torch.zeros(0, dtype=torch.int64), "sets (0, 3) torch.bool and labels (0,) torch.int64"),
    ]:
        assert message(lambda s=bad_sets, y=bad_labels: coverage_report(s, y)) == (
            "a coverage report needs a non-empty bool set matrix (N, K) and N labels in 0..K-1, got " + shown
        )
