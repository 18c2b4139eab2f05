"""Calibration metrics against hand-worked cases and a plain NumPy reference; temperature
scaling on synthetic logits with a known temperature; the figures."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from softcal.calibration.binning_calibrators import HistogramCalibrator
from softcal.calibration.metrics import (
    AdaptiveCalibrationError,
    ClasswiseCalibrationError,
    ExpectedCalibrationError,
    MaxCalibrationError,
    TopLabelBins,
    bin_index,
    calibration_metrics,
    class_bin_sums,
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


def test_class_bin_sums_by_hand_and_batch_by_batch():
    """The (class, bin) sums classwise ECE keeps and histogram binning fits on: one function."""
    probs = torch.tensor([[0.7, 0.3], [0.2, 0.8], [1.0, 0.0]])
    count, prob_sum, hit_sum = class_bin_sums(probs, torch.tensor([0, 0, 1]), n_bins=2)
    # class 0: p = .7 (bin 1, hit), .2 (bin 0, hit), 1.0 (bin 1, miss); class 1: .3, .8, 0.0
    assert count.tolist() == [1, 2, 2, 1] and hit_sum.tolist() == [1, 1, 1, 0]
    assert prob_sum.tolist() == pytest.approx([0.2, 1.7, 0.3, 0.8])
    assert count.dtype == prob_sum.dtype == hit_sum.dtype == torch.float64
    # accumulated in place over batches: the state of ClasswiseCalibrationError
    probs, labels = random_predictions(n=900, k=6)
    whole = class_bin_sums(probs, labels, 15)
    metric = ClasswiseCalibrationError(6, 15)
    running = tuple(torch.zeros(6 * 15, dtype=torch.float64) for _ in range(3))
    for chunk in range(0, 900, 200):
        metric.update(probs[chunk : chunk + 200], labels[chunk : chunk + 200])
        class_bin_sums(probs[chunk : chunk + 200], labels[chunk : chunk + 200], 15, into=running)
    for name, total, summed in zip(("count", "prob_sum", "hit_sum"), whole, running, strict=True):
        assert torch.equal(getattr(metric, name), summed), name
        assert torch.allclose(total, summed, rtol=0, atol=1e-12), name
    # histogram binning: a bin's value is its share of the class, an empty bin keeps its centre
    logits = torch.log(probs).double()
    histogram = HistogramCalibrator(6, 15).fit(logits, labels)
    count, _, hits = class_bin_sums(torch.softmax(logits, 1), labels, 15)  # what it was fitted on
    centres = (torch.arange(15, dtype=torch.float64) + 0.5) / 15
    shares = torch.where(count > 0, hits / count.clamp_min(1), centres.repeat(6))
    assert torch.allclose(histogram.bin_values, shares.view(6, 15), rtol=0, atol=1e-12)


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
