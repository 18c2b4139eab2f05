"""Calibration metrics against hand-worked cases and a plain NumPy reference; temperature
scaling on synthetic logits with a known temperature; the figures."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from softcal.calibration.metrics import (
    AdaptiveCalibrationError,
    ExpectedCalibrationError,
    MaxCalibrationError,
    TopLabelBins,
    bin_index,
    calibration_metrics,
)
from softcal.calibration.temperature import MAX_TEMPERATURE, fit_temperature

# ----------------------------------------------------------------------------- reference


def np_reference(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, float]:
    """Every metric written out the textbook way, one loop per definition."""
    n, k = probs.shape
    conf, pred = probs.max(1), probs.argmax(1)
    correct = (pred == labels).astype(float)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = mce = sq = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            gap = abs(correct[m].mean() - conf[m].mean())
            ece += m.sum() / n * gap
            sq += m.sum() / n * gap**2
            mce = max(mce, gap)
    order = np.argsort(conf, kind="stable")
    ada = sum(abs(correct[c].sum() - conf[c].sum()) for c in np.array_split(order, n_bins)) / n
    cw = 0.0
    for c in range(k):
        pc, hit = probs[:, c], (labels == c).astype(float)
        bc = np.minimum((pc * n_bins).astype(int), n_bins - 1)
        cw += sum(abs(hit[bc == b].sum() - pc[bc == b].sum()) for b in range(n_bins)) / n
    onehot = np.eye(k)[labels]
    return {
        "acc": correct.mean(), "ece": ece, "mce": mce, "rmsce": np.sqrt(sq),
        "adaptive_ece": ada, "classwise_ece": cw / k,
        "brier": ((probs - onehot) ** 2).sum(1).mean(),
        "nll": -np.log(probs[np.arange(n), labels]).mean(),
    }  # fmt: skip


def random_predictions(n: int = 2000, k: int = 7, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=gen) * 3
    labels = torch.randint(0, k, (n,), generator=gen)
    labels = torch.where(torch.rand(n, generator=gen) < 0.6, logits.argmax(1), labels)
    return torch.softmax(logits, 1), labels


@pytest.mark.parametrize("seed,k", [(0, 7), (1, 10), (2, 3)])
def test_every_metric_matches_numpy(seed, k):
    probs, labels = random_predictions(k=k, seed=seed)
    metrics = calibration_metrics(k, prefix="")
    for chunk in range(0, len(labels), 300):  # several updates, as in training
        metrics.update(probs[chunk : chunk + 300], labels[chunk : chunk + 300])
    ours = {key: float(v) for key, v in metrics.compute().items()}
    reference = np_reference(probs.double().numpy(), labels.numpy())
    for name, value in reference.items():
        assert ours[name] == pytest.approx(value, abs=1e-6), name


def test_all_correct_at_full_confidence_is_perfectly_calibrated():
    probs = torch.eye(4)[torch.tensor([0, 1, 2, 3, 1])]
    labels = torch.tensor([0, 1, 2, 3, 1])
    values = calibration_metrics(4, prefix="")(probs, labels)
    for name in ("ece", "mce", "rmsce", "adaptive_ece", "classwise_ece", "brier", "nll"):
        assert float(values[name]) == pytest.approx(0.0, abs=1e-7), name
    assert float(values["acc"]) == 1.0


def test_two_bin_case_by_hand():
    # Two classes, so every confidence is >= .5 and lands in bin [.5, 1] of 2 bins:
    # four predictions at 0.9 (3 correct) and two at 0.6 (none correct).
    p = torch.tensor([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 2)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    ece = ExpectedCalibrationError(n_bins=2)(p, y)
    # by hand: one non-empty bin, weight 1, |3/6 - (4*.9 + 2*.6)/6| = |.5 - .8| = .3
    assert float(ece) == pytest.approx(0.3, abs=1e-7)
    # 10 bins separate them: bin 9 (0.9): |.75-.9| = .15, weight 4/6; bin 6 (0.6): .6, weight 2/6
    ece10 = ExpectedCalibrationError(n_bins=10)(p, y)
    assert float(ece10) == pytest.approx(4 / 6 * 0.15 + 2 / 6 * 0.6, abs=1e-7)
    assert float(MaxCalibrationError(n_bins=10)(p, y)) == pytest.approx(0.6, abs=1e-7)


def test_confidence_of_exactly_one_falls_in_the_last_bin():
    assert bin_index(torch.tensor([0.0, 0.5, 0.9999, 1.0]), 15).tolist() == [0, 7, 14, 14]
    bins = TopLabelBins(n_bins=15)
    bins.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    state = bins.compute()
    assert state["count"][-1] == 1 and state["count"].sum() == 1


def test_empty_bins_count_zero():
    p = torch.tensor([[0.95, 0.05], [0.95, 0.05]])
    y = torch.tensor([0, 1])
    # only bin 14 is filled: |0.5 - 0.95| = 0.45, no contribution or NaN from empty bins
    assert float(ExpectedCalibrationError(15)(p, y)) == pytest.approx(0.45, abs=1e-7)
    assert float(MaxCalibrationError(15)(p, y)) == pytest.approx(0.45, abs=1e-7)


def test_state_sums_across_processes():
    """What multi-process sync does: states of two shards merged equal one pass over all."""
    probs, labels = random_predictions(n=1000, k=5)
    whole = calibration_metrics(5, prefix="")
    whole.update(probs, labels)
    shards = [calibration_metrics(5, prefix="") for _ in range(2)]
    shards[0].update(probs[::2], labels[::2])
    shards[1].update(probs[1::2], labels[1::2])
    for name, metric in shards[0].items(keep_base=True):
        metric.merge_state(shards[1][name])
    merged, expected = shards[0].compute(), whole.compute()
    for name in expected:
        assert float(merged[name]) == pytest.approx(float(expected[name]), abs=1e-6), name


def test_binned_state_is_constant_in_memory():
    metric = ExpectedCalibrationError(15)
    for _ in range(5):
        metric.update(*random_predictions(n=500))
    assert all(t.numel() == 15 for t in (metric.count, metric.confidence_sum, metric.correct_sum))
    adaptive = AdaptiveCalibrationError(15)  # documented exception: stores one value per sample
    adaptive.update(*random_predictions(n=500))
    assert sum(t.numel() for t in adaptive.confidence) == 500


# ----------------------------------------------------------------------------- temperature


@pytest.mark.parametrize("true_t", [0.5, 1.7, 3.0])
def test_temperature_scaling_recovers_a_known_temperature(true_t):
    gen = torch.Generator().manual_seed(1)
    n, k = 20000, 10
    clean = torch.randn(n, k, generator=gen) * 2.5
    # Labels drawn from softmax(clean): a model reporting clean * true_t has temperature true_t.
    labels = torch.multinomial(torch.softmax(clean, 1), 1, generator=gen).squeeze(1)
    fitted = fit_temperature(clean * true_t, labels)
    assert fitted == pytest.approx(true_t, rel=0.02)


def test_fitted_temperature_minimises_the_nll():
    """The fitted T beats its neighbours on the data it was fitted to."""
    gen = torch.Generator().manual_seed(3)
    clean = torch.randn(500, 6, generator=gen)
    labels = torch.multinomial(torch.softmax(clean, 1), 1, generator=gen).squeeze(1)
    logits = clean * 4
    t = fit_temperature(logits, labels)
    assert 1.5 < t < 10  # overconfident by about 4

    def nll(temperature: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits.double() / temperature, labels))

    assert nll(t) < nll(t * 1.05) and nll(t) < nll(t / 1.05)


def test_a_model_that_knows_nothing_is_clamped_to_the_upper_bound():
    # Labels independent of the logits: uniform predictions (T -> infinity) minimise the NLL.
    logits = torch.randn(2000, 5, generator=torch.Generator().manual_seed(0)) * 3
    labels = torch.arange(2000) % 5
    assert fit_temperature(logits, labels) == MAX_TEMPERATURE


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_give_no_temperature(bad):
    logits = torch.randn(100, 4)
    logits[7, 2] = bad
    assert fit_temperature(logits, torch.zeros(100, dtype=torch.long)) is None
    assert fit_temperature(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)) is None


# ----------------------------------------------------------------------------- figures


def test_figures_are_png_images_of_the_expected_size(tmp_path):
    from PIL import Image

    from softcal.calibration import figures

    probs, labels = random_predictions(n=800, k=4)
    bins = TopLabelBins(15)
    bins.update(probs, labels)
    state = bins.compute()
    confusion = torch.randint(0, 50, (4, 4))
    made = {
        "reliability.png": (figures.reliability_diagram(**state), (500, 600)),
        "histogram.png": (figures.confidence_histogram(**state), (500, 350)),
        "confusion.png": (figures.confusion_matrix_figure(confusion, list("abcd")), (400, 400)),
    }
    for name, (fig, size) in made.items():
        path = figures.save_png(fig, tmp_path / name)
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size == size, name
            assert len(set(img.convert("L").getdata())) > 10, f"{name} looks blank"
    array = figures.to_rgb_array(figures.reliability_diagram(**state))
    assert array.shape == (600, 500, 3) and array.dtype == np.uint8
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
