"""Selective prediction against NumPy references written here (Geifman et al.'s AURC as the mean
of the risks over coverage steps; every order of tied confidences enumerated), scikit-learn's
roc_auc_score, hand-worked closed forms and degenerate cases; the torchmetrics Metrics the test
stages log them with; the figure; both in a tiny Trainer run."""

from __future__ import annotations

import itertools
import math
import os
import re
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from softcal.errors import SoftcalError
from softcal.uncertainty.selective import (
    aurc,
    e_aurc,
    misclassification_auroc,
    optimal_aurc,
    optimal_aurc_limit,
    risk_at_coverage,
    risk_coverage_curve,
    selective_report,
)

# ----------------------------------------------------------------------------- references


def np_risks(conf: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Risk of the k most confident, k = 1..n, for one order (stable sort, most confident first)."""
    wrong = 1 - correct[np.argsort(-conf, kind="stable")]
    return np.cumsum(wrong) / np.arange(1, len(wrong) + 1)


def np_aurc(conf: np.ndarray, correct: np.ndarray) -> float:
    return float(np_risks(conf, correct).mean())


def np_over_tie_orders(conf: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """The mean of np_risks over every order of the predictions consistent with the confidences
    (each order of tied ones equally likely): what the ties rule promises."""
    runs = []
    for perm in itertools.permutations(range(len(conf))):
        perm = list(perm)
        if np.all(np.diff(conf[perm]) <= 0):
            runs.append(np.cumsum(1 - correct[perm]) / np.arange(1, len(conf) + 1))
    return np.mean(runs, axis=0)


def np_risks_tie_aware(conf: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """np_over_tie_orders for any n, by linearity: within a tied group of m predictions with w
    wrong, the first j kept of it hold j * w / m wrong ones on average over its orders."""
    risks, kept, wrong = np.empty(len(conf)), 0, 0.0
    for value in sorted(set(conf.tolist()), reverse=True):
        group = 1 - correct[conf == value]
        for j in range(1, len(group) + 1):
            risks[kept + j - 1] = (wrong + j * group.sum() / len(group)) / (kept + j)
        kept, wrong = kept + len(group), wrong + group.sum()
    return risks


def np_aurc_tie_aware(conf: np.ndarray, correct: np.ndarray) -> float:
    return float(np_risks_tie_aware(conf, correct).mean())


def np_optimal_aurc(n_correct: int, n: int) -> float:
    return np_aurc(np.arange(n, 0, -1.0), (np.arange(n) < n_correct).astype(float))


def random_case(n: int = 500, seed: int = 0, decimals: int | None = None):
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.1, 1.0, n)
    if decimals is not None:
        conf = np.round(conf, decimals)
    correct = (rng.uniform(0, 1, n) < conf).astype(float)  # confident ones more often right
    return conf, correct


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


TIED = (np.array([0.9, 0.9, 0.8, 0.8, 0.8, 0.5, 0.3, 0.3]), np.array([1, 0, 1, 1, 0, 0, 1, 0.0]))

# ----------------------------------------------------------------------------- AURC and E-AURC


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aurc_is_mean_risk_over_coverage_steps(seed):
    conf, correct = random_case(seed=seed)  # continuous: no ties
    assert aurc(t(conf), t(correct)) == pytest.approx(np_aurc(conf, correct), abs=1e-12)
    coverage, risk = risk_coverage_curve(t(conf), t(correct))
    assert coverage.dtype == risk.dtype == torch.float64
    np.testing.assert_allclose(coverage.numpy(), np.arange(1, 501) / 500)
    np.testing.assert_allclose(risk.numpy(), np_risks(conf, correct), atol=1e-12)


def test_ties_are_averaged_over_their_orders():
    conf, correct = TIED
    expected = np_over_tie_orders(conf, correct)
    assert aurc(t(conf), t(correct)) == pytest.approx(expected.mean(), abs=1e-12)
    for k in range(1, 9):
        assert risk_at_coverage(t(conf), t(correct), k / 8) == pytest.approx(expected[k - 1], abs=1e-12)
    # the curve: one point per distinct confidence, after the whole tied group
    coverage, risk = risk_coverage_curve(t(conf), t(correct))
    assert coverage.tolist() == pytest.approx([2 / 8, 5 / 8, 6 / 8, 1.0])
    assert risk.tolist() == pytest.approx([1 / 2, 2 / 5, 3 / 6, 4 / 8])
    # the curve's points lie where no group is cut, so they equal the averaged risks there
    assert risk.tolist() == pytest.approx(expected[[1, 4, 5, 7]].tolist())


@pytest.mark.parametrize("seed", range(4))
def test_tie_aware_reference_is_the_mean_over_tie_orders(seed):
    conf, correct = random_case(n=8, seed=seed, decimals=1)  # 8! orders, a few tied groups
    assert len(np.unique(conf)) < len(conf)
    np.testing.assert_allclose(np_risks_tie_aware(conf, correct), np_over_tie_orders(conf, correct),
                               atol=1e-12)  # fmt: skip
    np.testing.assert_allclose(np_risks_tie_aware(*TIED), np_over_tie_orders(*TIED), atol=1e-12)


@pytest.mark.parametrize("decimals", [2, 1])
def test_aurc_with_many_ties_against_the_tie_aware_reference(decimals):
    conf, correct = random_case(seed=9, decimals=decimals)  # 500 predictions in ~90 or ~10 groups
    assert len(np.unique(conf)) <= 91
    want = np_aurc_tie_aware(conf, correct)
    assert aurc(t(conf), t(correct)) == pytest.approx(want, abs=1e-12)
    for coverage in (0.8, 0.9, 0.95):
        kept = math.ceil(coverage * 500)
        assert risk_at_coverage(t(conf), t(correct), coverage) == pytest.approx(
            np_risks_tie_aware(conf, correct)[kept - 1], abs=1e-12)  # fmt: skip
    assert abs(np_aurc(conf, correct) - want) > 1e-4  # the ties matter: one fixed order differs


def test_constant_confidence_gives_the_error_rate():
    correct = np.array([1, 0, 1, 1, 1, 0, 1.0])
    assert aurc(torch.full((7,), 0.6), t(correct)) == pytest.approx(2 / 7)
    coverage, risk = risk_coverage_curve(torch.full((7,), 0.6), t(correct))
    assert coverage.tolist() == [1.0] and risk.tolist() == pytest.approx([2 / 7])


def test_closed_forms():
    # 2 right, 2 wrong. Perfect: risks 0, 0, 1/3, 1/2; worst: 1, 1, 2/3, 1/2.
    correct = t([1, 1, 0, 0])
    assert aurc(t([4, 3, 2, 1]), correct) == pytest.approx(5 / 24)
    assert aurc(t([1, 2, 3, 4]), correct) == pytest.approx(19 / 24)
    assert e_aurc(t([4, 3, 2, 1]), correct) == 0.0
    assert e_aurc(t([1, 2, 3, 4]), correct) == pytest.approx(19 / 24 - 5 / 24)
    assert optimal_aurc(2, 4) == pytest.approx(5 / 24)
    assert optimal_aurc_limit(0.5) == pytest.approx(0.5 + 0.5 * math.log(0.5))
    assert optimal_aurc_limit(0.0) == 1.0 and optimal_aurc_limit(1.0) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_e_aurc_against_numpy(seed):
    conf, correct = random_case(seed=seed, decimals=2)
    n_correct = int(correct.sum())
    optimum = np_optimal_aurc(n_correct, len(correct))
    assert optimal_aurc(n_correct, len(correct)) == pytest.approx(optimum, abs=1e-12)
    got = e_aurc(t(conf), t(correct))
    assert got > 0
    assert got == pytest.approx(aurc(t(conf), t(correct)) - optimum, abs=1e-12)
    # Perfect ranking of the same predictions: 0, and never negative.
    assert e_aurc(t(correct + conf / 10), t(correct)) == 0.0


def test_optimal_aurc_tends_to_the_closed_form():
    # finite-n optimum = (1 - a) + a ln a + about (1 - a) / (2n)
    for n, n_correct in [(10, 8), (1000, 910), (10000, 9912)]:
        a = n_correct / n
        gap = optimal_aurc(n_correct, n) - optimal_aurc_limit(a)
        assert 0 < gap == pytest.approx((1 - a) / (2 * n), rel=0.05)


# ----------------------------------------------------------------------------- risk at coverage


def test_risk_at_coverage_rounds_the_count_up():
    conf, correct = random_case(n=7, seed=3)
    risks = np_risks(conf, correct)
    for coverage, kept in [(0.8, 6), (0.5, 4), (1 / 7, 1), (0.01, 1), (1.0, 7), (6 / 7, 6)]:
        assert risk_at_coverage(t(conf), t(correct), coverage) == pytest.approx(risks[kept - 1])
    conf, correct = random_case(n=10, seed=4)
    assert risk_at_coverage(t(conf), t(correct), 0.9) == pytest.approx(np_risks(conf, correct)[8])


@pytest.mark.parametrize("coverage", [0.0, -0.1, 1.5, math.nan])
def test_risk_at_coverage_refuses_impossible_coverage(coverage):
    with pytest.raises(SoftcalError, match=re.escape("coverage must be in (0, 1], got")):
        risk_at_coverage(t([0.5]), t([1]), coverage)


# ----------------------------------------------------------------------------- misclassification AUROC


@pytest.mark.parametrize("decimals", [None, 1])
def test_misclassification_auroc_matches_sklearn(decimals):
    conf, correct = random_case(seed=5, decimals=decimals)  # decimals=1: heavy ties
    want = roc_auc_score(correct, conf)
    assert misclassification_auroc(t(conf), t(correct)) == pytest.approx(want, abs=1e-12)
    tied_conf, tied_correct = TIED
    assert misclassification_auroc(t(tied_conf), t(tied_correct)) == pytest.approx(
        roc_auc_score(tied_correct, tied_conf), abs=1e-12)  # fmt: skip


def test_misclassification_auroc_extremes():
    assert misclassification_auroc(t([0.9, 0.8, 0.2]), t([1, 1, 0])) == 1.0
    assert misclassification_auroc(t([0.1, 0.8, 0.9]), t([1, 1, 0])) == 0.0
    assert misclassification_auroc(t([0.5, 0.5, 0.5]), t([1, 1, 0])) == 0.5


# ----------------------------------------------------------------------------- degenerate cases


@pytest.mark.parametrize("all_correct", [True, False])
def test_all_correct_or_all_wrong(all_correct):
    conf = t(random_case(n=20, seed=6)[0])
    correct = torch.full((20,), float(all_correct))
    report = selective_report(conf, correct)
    risk = 0.0 if all_correct else 1.0
    assert {k: v for k, v in report.items() if k != "misclassification_auroc"} == {
        "aurc": risk, "e_aurc": 0.0, "risk_at_80": risk, "risk_at_90": risk, "risk_at_95": risk}  # fmt: skip
    assert math.isnan(report["misclassification_auroc"])  # nothing to separate


@pytest.mark.parametrize("right", [1, 0])
def test_single_prediction(right):
    report = selective_report(t([0.7]), t([right]))
    assert report["aurc"] == 1 - right and report["e_aurc"] == 0.0 and report["risk_at_80"] == 1 - right
    assert risk_coverage_curve(t([0.7]), t([right]))[0].tolist() == [1.0]


def test_report_is_the_single_functions():
    conf, correct = random_case(seed=7, decimals=2)
    report = selective_report(t(conf), torch.tensor(correct).bool())  # bool correctness works too
    assert list(report) == ["aurc", "e_aurc", "risk_at_80", "risk_at_90", "risk_at_95",
                            "misclassification_auroc"]  # fmt: skip
    assert report["aurc"] == aurc(t(conf), t(correct))
    assert report["e_aurc"] == e_aurc(t(conf), t(correct))
    assert report["risk_at_90"] == risk_at_coverage(t(conf), t(correct), 0.9)
    assert report["misclassification_auroc"] == misclassification_auroc(t(conf), t(correct))
    assert all(isinstance(v, float) for v in report.values())


def test_refuses_empty_mismatched_or_nan():
    with pytest.raises(
        SoftcalError, match="^selective prediction needs at least one prediction; the split is empty$"
    ):
        aurc(t([]), t([]))
    with pytest.raises(SoftcalError, match="needs one correctness per confidence, got 3 confidences and 2"):
        aurc(t([0.1, 0.2, 0.3]), t([1, 0]))
    with pytest.raises(
        SoftcalError, match="^selective prediction: a confidence is NaN or infinite; check the logits$"
    ):
        selective_report(t([0.1, math.nan]), t([1, 0]))


# ----------------------------------------------------------------------------- metrics


def softmax_case(n: int = 600, k: int = 5, seed: int = 0, ties: bool = False):
    """float32 probabilities and labels, wrong where the confidence is low more often; with
    ``ties`` the logits are on a coarse grid, so many confidences are exactly equal."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=gen) * 2
    if ties:
        logits = logits.round()
    keep = torch.rand(n, generator=gen) < 0.7  # drawn before the noise, as the order matters
    labels = torch.where(keep, logits.argmax(1), torch.randint(0, k, (n,), generator=gen))
    return torch.softmax(logits, 1), labels


@pytest.mark.parametrize("ties", [False, True])
def test_metrics_are_the_report_to_the_last_digit(ties):
    """Updated batch by batch, each metric is exactly the float64 number selective_report gives
    for the float32 (confidence, correct) pairs: what the callback logged before them."""
    from torchmetrics import MetricCollection

    from softcal.uncertainty.selective_metrics import selective_metrics

    probs, labels = softmax_case(ties=ties)
    collection = MetricCollection(selective_metrics(), compute_groups=True)
    for chunk in range(0, len(labels), 128):
        collection.update(probs[chunk : chunk + 128], labels[chunk : chunk + 128])
    values = collection.compute()
    confidence, predicted = probs.max(1)
    report = selective_report(confidence, predicted == labels)
    assert sorted(values) == sorted(report)
    for name, value in values.items():
        assert value.dtype == torch.float64 and value.item() == report[name], name
    if ties:
        assert len(confidence.unique()) < len(confidence) / 2


def test_selective_metrics_keep_one_state_with_adaptive_ece():
    """In a stage's collection the pairs are kept once, for adaptive ECE and the six metrics,
    and sharing them changes no number."""
    from softcal.calibration.metrics import calibration_metrics
    from softcal.uncertainty.selective_metrics import selective_metrics

    probs, labels = softmax_case(k=10)
    shared = calibration_metrics(10, "test/", 15, selective_metrics())
    # the same metrics, each updated on its own: no compute groups
    alone = dict(calibration_metrics(10, "test/", 15, selective_metrics()).items(keep_base=True))
    for chunk in range(0, len(labels), 200):
        shared.update(probs[chunk : chunk + 200], labels[chunk : chunk + 200])
        for metric in alone.values():
            metric.update(probs[chunk : chunk + 200], labels[chunk : chunk + 200])
    pairs = ["adaptive_ece", "aurc", "e_aurc", "misclassification_auroc", "risk_at_80", "risk_at_90",
             "risk_at_95"]  # fmt: skip
    assert sorted(pairs) in [sorted(group) for group in shared.compute_groups.values()]
    members = dict(shared.items(keep_base=True, copy_state=False))
    states = {id(members[name].confidence) for name in pairs} | {id(members[name].correct) for name in pairs}
    assert len(states) == 2 and sum(len(c) for c in members["aurc"].confidence) == len(labels)
    values = shared.compute()
    assert len(values) == len(alone) == 15
    for name, metric in alone.items():
        assert torch.equal(values[f"test/{name}"], metric.compute()), name


def test_pairs_add_up_across_processes():
    """What a multi-process sync does to the cat state: two shards merged give the numbers of
    the pairs of both (ties make the order within a shard not matter)."""
    from softcal.uncertainty.selective_metrics import selective_metrics

    probs, labels = softmax_case(n=400)
    whole = selective_metrics()
    shards = [selective_metrics(), selective_metrics()]
    for name, metric in whole.items():
        metric.update(probs, labels)
        shards[0][name].update(probs[:150], labels[:150])
        shards[1][name].update(probs[150:], labels[150:])
        shards[0][name].merge_state(shards[1][name])
        assert shards[0][name].compute().item() == metric.compute().item(), name


def test_undefined_values_are_left_out_and_other_nans_kept():
    from softcal.calibration.metrics import calibration_metrics
    from softcal.uncertainty.selective_metrics import (
        MisclassificationAUROC,
        TopLabelPairs,
        selective_metrics,
        without_undefined,
    )

    labels = torch.tensor([0, 1, 2, 1])
    probs = torch.nn.functional.one_hot(labels, 3).float() * 0.8 + 0.2 / 3  # every one right
    assert math.isnan(MisclassificationAUROC()(probs, labels).item())
    collection = calibration_metrics(3, "test/", 15, selective_metrics())
    collection.update(probs, labels)
    values = collection.compute()
    kept = without_undefined(values, collection)
    assert set(values) - set(kept) == {"test/misclassification_auroc"}
    assert kept["test/aurc"].item() == 0.0 and kept["test/e_aurc"].item() == 0.0
    broken = {**values, "test/nll": torch.tensor(math.nan)}  # a failure, not "no value": logged
    assert "test/nll" in without_undefined(broken, collection)
    # nothing seen: no value either, and the pairs themselves are empty
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*called before the ``update`` method.*")
        assert math.isnan(MisclassificationAUROC().compute().item())
        assert len(TopLabelPairs().compute()["confidence"]) == 0


# ----------------------------------------------------------------------------- figure


def test_tie_groups_sort_group_and_sum_at_group_ends():
    """The one sort-and-group step behind risk(k), average precision, FPR@TPR and AUROC ranks."""
    from softcal.uncertainty.ties import tie_groups

    scores = torch.tensor([0.2, 0.9, 0.2, 0.5, 0.9, 0.9])
    values = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    groups = tie_groups(scores)
    assert groups.order.tolist() == [1, 4, 5, 3, 0, 2]  # stable: tied ones keep their order
    assert groups.sizes.tolist() == [3, 1, 2] and groups.ends.tolist() == [3, 4, 6]
    assert groups.totals(values).tolist() == [50.0, 58.0, 63.0]
    rising = tie_groups(scores, descending=False)
    assert rising.order.tolist() == [0, 2, 3, 1, 4, 5] and rising.sizes.tolist() == [2, 1, 3]
    assert rising.totals(values).tolist() == [5.0, 13.0, 63.0]


def test_risk_coverage_figure():
    from softcal.calibration.figures import risk_coverage_figure, to_rgb_array

    conf, correct = random_case(seed=8)
    curves = {"raw": risk_coverage_curve(t(conf), t(correct)),
              "calibrated": risk_coverage_curve(t(conf**2), t(correct))}  # fmt: skip
    fig = risk_coverage_figure(curves, "Risk-coverage, test")
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    accuracy = correct.mean()
    assert labels == ["raw", "calibrated", f"optimal at accuracy {100 * accuracy:.2f}%"]  # one optimum
    optimum = ax.get_lines()[2].get_xydata()
    np.testing.assert_allclose(optimum[:, 1], 100 * np.maximum(0, 1 - accuracy / optimum[:, 0]))
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), 100 * np_risks(conf, correct))
    assert ax.get_title() == "Risk-coverage, test"
    assert to_rgb_array(fig).shape[2] == 3


# ----------------------------------------------------------------------------- in a Trainer at test


def _counted(function, calls: list[int]):
    """``function``, appending 1 to ``calls`` at each call."""

    def counted(*args, **kwargs):
        calls.append(1)
        return function(*args, **kwargs)

    return counted


def _count_calls(obj, name: str) -> list[int]:
    """Wrap ``obj.name`` so each call appends 1 to the returned list."""
    calls: list[int] = []
    setattr(obj, name, _counted(getattr(obj, name), calls))
    return calls


@pytest.mark.slow
def test_test_stages_log_selective_metrics_and_the_figure_draws_the_curve(mnist_root, tmp_path):
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from softcal.calibration.callbacks import CalibrationFigures, FitCalibration
    from softcal.data import MNISTDataModule
    from softcal.model.module import Classifier

    dm = MNISTDataModule(root=str(mnist_root), val_size=100, batch_size=32, download=False)
    model = Classifier(num_classes=dm.num_classes, in_channels=dm.in_channels)
    figures = CalibrationFigures()
    logger = TensorBoardLogger(str(tmp_path), name="run")
    drawn = []
    logger.experiment.add_image = lambda tag, image, step, dataformats: drawn.append((tag, image.shape))
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=4, logger=logger,
                        enable_progress_bar=False, enable_checkpointing=False,
                        callbacks=[FitCalibration(), figures])  # fmt: skip
    trainer.fit(model, datamodule=dm)
    temperature = model.calibration.temperature
    assert temperature is not None and temperature != 1.0
    # Probabilities once per step: the calibrated ones by the step, nowhere else; the raw softmax
    # once (the figure reads what the step returned).
    calibrated_calls = _count_calls(model.calibration, "probabilities")
    steps = _count_calls(model, "test_step")
    softmaxes = []
    with pytest.MonkeyPatch.context() as patch:
        for where in (torch, torch.nn.functional):  # the raw one, temperature scaling's
            patch.setattr(where, "softmax", _counted(where.softmax, softmaxes))
        logged = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert len(steps) == trainer.num_test_batches[0] and len(calibrated_calls) == len(steps)
    assert len(softmaxes) == 2 * len(steps)  # one raw, one calibrated: six before

    # Independently: the test logits through the net, softmax in float64, at T = 1 and T.
    model.eval()
    with torch.no_grad():
        images, labels = dm.splits["test"]  # the test loader keeps this order
        logits = model(dm.preprocess(images)).double()
    for stage, t_ in (("test", 1.0), ("test_calibrated", temperature)):
        probs = torch.softmax(logits / t_, 1)
        conf, correct = probs.max(1).values.numpy(), (probs.argmax(1) == labels).numpy().astype(float)
        kept = figures.pairs[stage]  # what the curve is drawn from: the metrics' own pairs
        np.testing.assert_allclose(kept["confidence"].numpy(), conf, rtol=1e-4, atol=1e-6)
        assert np.array_equal(kept["correct"].numpy(), correct.astype(bool))
        report = selective_report(kept["confidence"], kept["correct"])
        for name, value in report.items():
            assert logged[f"{stage}/{name}"] == value, (stage, name)  # logged in float64
        # Ties or not (float32 confidences of 200 images may tie): the mean over tie orders.
        kept_conf = kept["confidence"].double().numpy()
        assert 0.2 < correct.mean() < 0.9 and report["aurc"] > 0.01, "not a degenerate run"
        assert report["aurc"] == pytest.approx(np_aurc_tie_aware(kept_conf, correct), abs=1e-12)
        for name, coverage in (("risk_at_80", 0.8), ("risk_at_90", 0.9), ("risk_at_95", 0.95)):
            want = np_risks_tie_aware(kept_conf, correct)[math.ceil(coverage * len(correct)) - 1]
            assert report[name] == pytest.approx(want, abs=1e-12), name
        assert report["misclassification_auroc"] == pytest.approx(
            roc_auc_score(correct, kept["confidence"].numpy()), abs=1e-12)  # fmt: skip
        # the pictures' bin sums and confusion counts come from the same probabilities
        assert int(figures.finished[stage]["count"].sum()) == 200
        assert int(figures.finished[stage]["correct_sum"].sum()) == int(correct.sum())
        assert int(figures.finished[stage]["confusion"].trace()) == int(correct.sum())
    assert "val/aurc" not in trainer.callback_metrics, "validation is scored without ranking"
    assert [tag for tag, _ in drawn if tag.startswith("test/risk")] == ["test/risk_coverage"]
    assert dict(drawn)["test/risk_coverage"][2] == 3  # an RGB image


def test_without_logger_the_pairs_are_kept_and_nan_is_not_logged(mnist_root):
    import lightning as L

    from softcal.calibration.callbacks import CalibrationFigures
    from softcal.data import MNISTDataModule
    from softcal.model.module import Classifier

    class AlwaysRight(Classifier):  # every prediction right: AUROC has nothing to separate
        def test_step(self, batch, batch_idx):
            self.truth = batch[1]
            return super().test_step(batch, batch_idx)

        def forward(self, images):
            return torch.nn.functional.one_hot(self.truth, 10).float() * 5

    dm = MNISTDataModule(root=str(mnist_root), val_size=100, batch_size=64, download=False)
    figures = CalibrationFigures()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        callbacks=[figures])  # fmt: skip
    logged = trainer.test(AlwaysRight(num_classes=10, in_channels=1), datamodule=dm, verbose=False)[0]
    assert len(figures.pairs["test"]["confidence"]) == len(dm.splits["test"][1]) == 200
    assert logged["test/aurc"] == 0.0 and logged["test/e_aurc"] == 0.0
    assert "test/misclassification_auroc" not in logged  # NaN is left out, not logged
    assert "test_calibrated/misclassification_auroc" not in logged
    assert logged["test/nll"] >= 0  # the other metrics of the stage are logged as always
    kept = figures.pairs["test"]
    assert math.isnan(selective_report(kept["confidence"], kept["correct"])["misclassification_auroc"])
    # nothing fitted: no calibrated pictures, but both curves (the stages the metrics log)
    assert set(figures.finished) == {"test"} and set(figures.pairs) == {"test", "test_calibrated"}


def test_results_json_and_table_carry_the_selective_rows(tiny_run):
    import json

    from softcal.runs.results_table import format_results

    results = json.loads((tiny_run / "results.json").read_text())
    metrics = results["metrics"]
    for stage in ("test", "test_calibrated"):
        for name in ("aurc", "e_aurc", "risk_at_80", "risk_at_90", "risk_at_95"):
            assert 0.0 <= metrics[f"{stage}/{name}"] <= 1.0
    assert metrics["test/e_aurc"] <= metrics["test/aurc"]
    rows = {line.split()[0]: line.split()[1:] for line in
            format_results(metrics, f"T = {results['temperature']:.3f}", "t").splitlines()[3:]}  # fmt: skip
    percents = [f"{100 * metrics[f'{stage}/aurc']:.3f}%" for stage in ("test", "test_calibrated")]
    assert rows["aurc"] == percents
    names = list(rows)
    assert names.index("loss") < names.index("aurc") < names.index("risk_at_95")


#: Trains and tests a tiny model on 2 CPU processes (DDP, gloo) with the figures' callback;
#: rank 0 saves what was logged, the weights and the gathered per-image pairs. One training step:
#: the tiny set is learnt perfectly within 5 (AURC 0, AUROC NaN), which would check nothing.
DDP_SCRIPT = """
import sys
import lightning as L
import torch
from softcal.calibration.callbacks import CalibrationFigures, FitCalibration
from softcal.data import MNISTDataModule
from softcal.model.module import Classifier

L.seed_everything(0)
dm = MNISTDataModule(root=sys.argv[1], val_size=100, batch_size=32, eval_batch_size=30, download=False)
model = Classifier(num_classes=10, in_channels=1)
figures = CalibrationFigures()
trainer = L.Trainer(accelerator="cpu", strategy="ddp", devices=2, max_epochs=1, limit_train_batches=1,
                    logger=False, enable_progress_bar=False, enable_checkpointing=False,
                    enable_model_summary=False, callbacks=[FitCalibration(), figures])
trainer.fit(model, datamodule=dm)
logged = trainer.test(model, datamodule=dm, verbose=False)[0]
if trainer.is_global_zero:
    torch.save({"logged": logged, "weights": model.state_dict(), "pairs": figures.pairs},
               sys.argv[2])
"""


@pytest.mark.slow
def test_two_processes_log_what_one_computes(mnist_root, tmp_path):
    """Each of 2 DDP processes tests its own shard (every other image) of the 200 test images;
    the metrics' cat state gathers both (and so do the figure's pairs), so what is logged is
    the numbers of all 200 images, computed here in one process from the same weights."""
    import subprocess
    import sys

    from softcal.data import MNISTDataModule
    from softcal.model.module import Classifier
    from tests.conftest import REPO

    script = tmp_path / "ddp_selective.py"
    script.write_text(DDP_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(mnist_root), str(tmp_path / "out.pt")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = torch.load(tmp_path / "out.pt", weights_only=False)
    model = Classifier(num_classes=10, in_channels=1)
    model.load_state_dict(saved["weights"])
    model.eval()
    dm = MNISTDataModule(root=str(mnist_root), val_size=100, download=False)
    dm.setup("test")
    images, labels = dm.splits["test"]
    with torch.no_grad():
        logits = model(dm.preprocess(images)).double()
    temperature = model.calibration.temperature
    assert temperature is not None
    for stage, t_ in (("test", 1.0), ("test_calibrated", temperature)):
        probs = torch.softmax(logits / t_, 1)
        conf, correct = probs.max(1).values, probs.argmax(1) == labels
        gathered = saved["pairs"][stage]
        assert len(gathered["confidence"]) == 200, "every test image once, from both processes"
        np.testing.assert_allclose(np.sort(gathered["confidence"].numpy()), np.sort(conf.numpy()),
                                   rtol=1e-4, atol=1e-6)  # fmt: skip
        assert int(gathered["correct"].sum()) == int(correct.sum())
        assert 0.2 < correct.double().mean() < 0.9, "errors among confident ones: AURC measures something"
        # The gathered (confidence, correct) pairs exactly, ties averaged over their orders; and
        # the float64 confidences computed here, within float32 rounding.
        pairs = gathered["confidence"].double().numpy(), gathered["correct"].double().numpy()
        assert saved["logged"][f"{stage}/aurc"] == pytest.approx(np_aurc_tie_aware(*pairs), abs=1e-12)
        assert saved["logged"][f"{stage}/aurc"] == pytest.approx(
            np_aurc_tie_aware(conf.numpy(), correct.double().numpy()), rel=1e-4, abs=1e-6)  # fmt: skip
        for name, value in selective_report(conf, correct).items():
            assert saved["logged"][f"{stage}/{name}"] == pytest.approx(value, rel=1e-4, abs=1e-6), name
        assert saved["logged"][f"{stage}/misclassification_auroc"] == pytest.approx(
            roc_auc_score(correct.numpy(), conf.numpy()), rel=1e-4, abs=1e-6)  # fmt: skip
