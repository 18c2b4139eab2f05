"""evaluate --calibrators and selective prediction: numbers recomputed from the logits in numpy/sklearn.

The logits themselves (softcal.evaluation.context.EvaluationContext.logits) are first shown to be the
ones evaluate's test run scores; every table number is then recomputed here from them, with metric
formulas written in numpy - not with softcal.calibration.metrics, which the app uses.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from softcal.apps.evaluate import main
from softcal.calibration.calibrators import ALL_METHODS_FOR_COMPARISON
from softcal.errors import SoftcalError
from softcal.evaluation import calibrator_comparison
from softcal.evaluation.context import EvaluationContext
from softcal.evaluation.results import Confidences
from softcal.evaluation.selective_prediction import selective_outputs
from softcal.runs.load import load_run
from tests.figure_references import assert_curve, assert_reliability
from tests.test_calibrators_top_label import np_fit as np_top_label_fit
from tests.test_calibrators_top_label import np_top_label_beta

REPO = Path(__file__).resolve().parents[1]
BINS = 15
TINY32 = float(np.finfo(np.float32).tiny)


# ----------------------------------------------------------------------------- numpy references


def np_metrics(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict[str, float]:
    """accuracy, ECE, MCE, adaptive ECE, classwise ECE, NLL, Brier from their definitions."""
    n, k = probs.shape
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    index = np.clip((confidence * np.float32(bins)).astype(np.int64), 0, bins - 1)
    gaps = []
    ece = 0.0
    for b in range(bins):
        inside = index == b
        if inside.any():
            gap = abs(correct[inside].sum() - confidence[inside].astype(np.float64).sum())
            ece += gap / n
            gaps.append(gap / inside.sum())
    order = np.argsort(confidence, kind="stable")
    adaptive = sum(abs(correct[part].sum() - confidence[part].astype(np.float64).sum())
                   for part in np.array_split(order, min(bins, n))) / n  # fmt: skip
    classwise = []
    for c in range(k):
        p = probs[:, c]
        hits = (labels == c).astype(np.float64)
        cls_index = np.clip((p * np.float32(bins)).astype(np.int64), 0, bins - 1)
        total = sum(abs(hits[cls_index == b].sum() - p[cls_index == b].astype(np.float64).sum())
                    for b in range(bins))  # fmt: skip
        classwise.append(total / n)
    one_hot = np.eye(k)[labels]
    p_true = probs[np.arange(n), labels].astype(np.float64)
    return {
        "acc": correct.mean(), "ece": ece, "mce": max(gaps), "adaptive_ece": adaptive,
        "classwise_ece": float(np.mean(classwise)),
        "nll": float(-np.log(np.maximum(p_true, TINY32)).mean()),
        "brier": float(((probs.astype(np.float64) - one_hot) ** 2).sum(axis=1).mean()),
    }  # fmt: skip


def np_softmax(logits: np.ndarray, t: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / t
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_selective(confidence: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    """AURC and friends by their definitions. A group of tied confidences is kept in a random
    order: risk(k) inside it is its expectation, the group's errors counted pro rata."""
    n = len(confidence)
    risk = np.empty(n)
    kept_before, errors_before = 0, 0.0
    for value in sorted(set(confidence.tolist()), reverse=True):
        group = confidence == value
        size, errors = int(group.sum()), float((1.0 - correct[group]).sum())
        for j in range(1, size + 1):
            risk[kept_before + j - 1] = (errors_before + j * errors / size) / (kept_before + j)
        kept_before, errors_before = kept_before + size, errors_before + errors
    kept = np.arange(1, n + 1)
    n_correct = int(correct.sum())
    best = np.where(kept > n_correct, (kept - n_correct) / kept, 0.0).mean()
    report = {"aurc": risk.mean(), "e_aurc": risk.mean() - best}
    for c in (80, 90, 95):
        report[f"risk_at_{c}"] = risk[math.ceil(c / 100 * n) - 1]
    both = 0 < n_correct < n
    report["misclassification_auroc"] = roc_auc_score(correct, confidence) if both else math.nan
    return report


# ----------------------------------------------------------------------------- one evaluation


@pytest.fixture(scope="module")
def logits(tiny_run: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    context = EvaluationContext(load_run(tiny_run, check_classes=True))
    return {split: context.logits(split) for split in ("val", "test")}


@pytest.fixture(scope="module")
def compared(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """evaluate --calibrators all, with every calibrator's fit and forward recorded."""
    out = tmp_path_factory.mktemp("calibrators")
    calls: dict[str, list] = {"fit": [], "forward": [], "calibrators": {}}
    real = calibrator_comparison.make_calibrator

    def spying(method: str, num_classes: int):
        calibrator = real(method, num_classes)
        fit, forward = calibrator.fit, calibrator.forward

        def recorded_fit(x, y):
            calls["fit"].append((method, x.clone(), y.clone()))
            return fit(x, y)

        def recorded_forward(x):
            calls["forward"].append((method, x.clone()))
            return forward(x)

        calibrator.fit, calibrator.forward = recorded_fit, recorded_forward
        calls["calibrators"][method] = calibrator
        return calibrator

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(calibrator_comparison, "make_calibrator", spying)
        (evaluation,) = main([str(tiny_run), "--calibrators", "all", "--out", str(out)])
    return out, calls, evaluation


@pytest.mark.slow
def test_split_logits_are_the_logits_evaluate_scores(tiny_run: Path, logits, compared):
    out, _, evaluation = compared
    saved = json.loads((out / "metrics.json").read_text())["metrics"]
    trained = json.loads((tiny_run / "results.json").read_text())
    test_logits, test_labels = logits["test"]
    assert len(test_labels) == 200 and len(logits["val"][1]) == 100  # the tiny run's splits
    for t, stage in ((1.0, "test"), (trained["temperature"], "test_calibrated")):
        ours = np_metrics(np_softmax(test_logits.numpy(), t).astype(np.float32), test_labels.numpy())
        for name in ("acc", "ece", "nll", "brier"):
            assert ours[name] == pytest.approx(saved[f"{stage}/{name}"], abs=1e-5), (stage, name)
            assert ours[name] == pytest.approx(trained["metrics"][f"{stage}/{name}"], abs=1e-5)


def test_validation_logits_are_a_forward_pass_over_held_out_training_images(tiny_run: Path, mnist_root: Path,
                                                                           logits):  # fmt: skip
    """The "val" logits the calibrators fit on are the model's own outputs on the validation
    images (one plain forward pass, outside any Trainer), and those images are training-file
    images that are neither trained on nor among the test images."""
    run = load_run(tiny_run)
    run.datamodule.setup("fit")
    run.datamodule.setup("test")
    images, labels = run.datamodule.splits["val"]
    with torch.no_grad():
        plain = run.model.cpu().eval()(run.datamodule.preprocess(images)).float()
    val_logits, val_labels = logits["val"]
    assert torch.equal(val_labels, labels) and len(labels) == 100
    np.testing.assert_allclose(val_logits.numpy(), plain.numpy(), rtol=1e-5, atol=1e-5)
    assert float(plain.std()) > 0.1  # not a constant output that would match anything
    # The images, read from the IDX files here (16-byte header, then 28x28 bytes per image).
    raw = mnist_root / "MNIST" / "raw"
    train_file = np.frombuffer((raw / "train-images-idx3-ubyte").read_bytes()[16:], np.uint8).reshape(-1, 784)
    test_file = np.frombuffer((raw / "t10k-images-idx3-ubyte").read_bytes()[16:], np.uint8).reshape(-1, 784)
    val_rows = {row.tobytes() for row in images.reshape(len(images), -1).numpy()}
    assert len(val_rows) == 100  # 100 distinct images
    assert val_rows <= {row.tobytes() for row in train_file}
    assert not val_rows & {row.tobytes() for row in test_file}
    trained_on = run.datamodule.splits["train"][0]
    assert not val_rows & {row.tobytes() for row in trained_on.reshape(len(trained_on), -1).numpy()}
    assert len(trained_on) + len(images) == len(train_file)


@pytest.mark.slow
def test_calibrators_are_fitted_on_validation_only(logits, compared):
    _, calls, _ = compared
    (val_logits, val_labels), (test_logits, _) = logits["val"], logits["test"]
    assert [m for m, *_ in calls["fit"]] == list(ALL_METHODS_FOR_COMPARISON)
    for method, x, y in calls["fit"]:
        assert torch.equal(x, val_logits) and torch.equal(y, val_labels), method
    # The test logits only ever go through the fitted calibrators.
    assert [m for m, _ in calls["forward"]] == list(ALL_METHODS_FOR_COMPARISON)
    for method, x in calls["forward"]:
        assert torch.equal(x, test_logits), method


@pytest.mark.slow
def test_calibrator_table_equals_a_numpy_recomputation(logits, compared):
    out, calls, evaluation = compared
    saved = json.loads((out / "calibrators.json").read_text())
    rows = {row["method"]: row for row in saved["methods"]}
    assert [row["method"] for row in saved["methods"]] == ["uncalibrated", *ALL_METHODS_FOR_COMPARISON]
    assert saved["fitted_on"] == {"split": "val", "num_samples": 100}
    assert saved["scored_on"] == {"split": "test", "num_samples": 200}
    test_logits, test_labels = logits["test"]
    expected = {"uncalibrated": np_softmax(test_logits.numpy()).astype(np.float32)}
    # The tiny run's test set is separated perfectly (accuracy 1, calibrated NLL 0): this checks
    # the table's metrics of the fitted maps' probabilities, and nothing about the fits. The fits
    # are checked against scipy/sklearn/numpy in test_compare_calibrators_on_miscalibrated_logits...
    for method, calibrator in calls["calibrators"].items():
        with torch.no_grad():
            expected[method] = calibrator(test_logits).numpy()
    for method, probs in expected.items():
        ours = np_metrics(probs, test_labels.numpy())
        for name, value in ours.items():
            assert rows[method]["metrics"][name] == pytest.approx(value, abs=1e-5), (method, name)
    # The first row is evaluate's own raw test metrics.
    for name in ("acc", "ece", "mce", "adaptive_ece", "classwise_ece", "nll", "brier"):
        expected = evaluation.metrics[f"test/{name}"]
        assert rows["uncalibrated"]["metrics"][name] == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
def test_calibrator_files_and_printed_table(compared, capsys):
    out, calls, _ = compared
    markdown = (out / "calibrators.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert table[0].split("|")[1:-1] == [" method ", " accuracy ", " ECE ", " MCE ", " adaptive ECE ",
                                         " classwise ECE ", " NLL ", " Brier "]  # fmt: skip
    assert [line.split("|")[1].strip() for line in table[2:]] == ["uncalibrated", *ALL_METHODS_FOR_COMPARISON]
    saved = json.loads((out / "calibrators.json").read_text())
    isotonic = next(r for r in saved["methods"] if r["method"] == "isotonic")
    row = next(line for line in table if line.startswith("| isotonic |")).split("|")
    assert row[3].strip() == f"{100 * isotonic['metrics']['ece']:.2f}%"  # the ECE column
    for method in ("uncalibrated", *ALL_METHODS_FOR_COMPARISON):
        with Image.open(out / "calibrators" / f"reliability_{method}.png") as image:
            assert image.format == "PNG" and min(image.size) >= 300


@pytest.mark.slow
def test_selective_json_equals_a_numpy_recomputation(tiny_run: Path, logits, compared):
    out, _, evaluation = compared
    saved = json.loads((out / "selective.json").read_text())
    for stage, prefix in (("raw", "test"), ("calibrated", "test_calibrated")):  # evaluate's metrics
        for name in ("aurc", "e_aurc", "risk_at_80", "risk_at_90", "risk_at_95"):
            assert saved[stage][name] == pytest.approx(evaluation.metrics[f"{prefix}/{name}"], abs=1e-9)
    assert saved["num_samples"] == 200 and saved["split"] == "test"
    test_logits, test_labels = logits["test"]
    t = json.loads((tiny_run / "results.json").read_text())["temperature"]
    for stage, temperature in (("raw", 1.0), ("calibrated", t)):
        probs = np_softmax(test_logits.numpy(), temperature).astype(np.float32)
        correct = (probs.argmax(axis=1) == test_labels.numpy()).astype(np.float64)
        for name, value in np_selective(probs.max(axis=1).astype(np.float64), correct).items():
            if math.isnan(value):  # every test image right (or wrong): nothing to separate
                assert saved[stage][name] is None, (stage, name)
            else:
                assert saved[stage][name] == pytest.approx(value, abs=1e-6), (stage, name)
    assert saved["calibrated"]["label"] == f"calibrated (T = {t:.3f})"
    with Image.open(out / "risk_coverage.png") as image:
        assert image.format == "PNG"


@pytest.mark.slow
def test_figure_data_in_the_json_files_equals_numpy(tiny_run: Path, logits, compared):
    """The reliability bins and risk-coverage points of training's results.json and evaluate's
    metrics.json, selective.json and calibrators.json: those of the test split's top-label
    probabilities, recomputed in numpy (the run's float32 probabilities, checked against a numpy
    softmax, are binned and ranked: a last-bit difference may move one across a bin edge)."""
    out, calls, _ = compared
    saved = {name: json.loads(path.read_text()) for name, path in (
        ("results", tiny_run / "results.json"), ("metrics", out / "metrics.json"),
        ("selective", out / "selective.json"), ("calibrators", out / "calibrators.json"))}  # fmt: skip
    test_logits, test_labels = logits["test"]
    calibration = EvaluationContext(load_run(tiny_run)).calibration
    labels = test_labels.numpy()
    for scaling, t in (("raw", 1.0), ("calibrated", saved["results"]["temperature"])):
        probs = calibration.probabilities(test_logits, calibrated=scaling == "calibrated").numpy()
        assert np.allclose(probs, np_softmax(test_logits.numpy(), t), atol=1e-6)
        for name in ("results", "metrics"):
            assert_reliability(saved[name]["reliability"]["test"][scaling], probs, labels, BINS)
        confidence, correct = probs.max(axis=1).astype(np.float64), probs.argmax(axis=1) == labels
        for name in ("results", "selective"):
            assert_curve(saved[name]["risk_coverage"]["test"][scaling], confidence, correct)
    methods = saved["calibrators"]["reliability"]["test"]
    assert set(methods) == {row["method"] for row in saved["calibrators"]["methods"]}
    scored = {"uncalibrated": lambda x: torch.softmax(x, dim=1), **calls["calibrators"]}
    for method, calibrator in scored.items():
        with torch.no_grad():
            assert_reliability(methods[method], calibrator(test_logits).float().numpy(), labels, BINS)


@pytest.mark.slow
def test_printed_tables(tiny_run: Path, tmp_path: Path, capsys):
    main([str(tiny_run), "--calibrators", "temperature,histogram", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    # The selective numbers are rows of evaluate's results table, the ones selective.json holds.
    selective = json.loads((tmp_path / "selective.json").read_text())
    aurc = next(line for line in printed.splitlines() if line.startswith("aurc ")).split()
    assert aurc[1:] == [f"{100 * selective[s]['aurc']:.3f}%" for s in ("raw", "calibrated")]
    lines = printed[printed.index("Post-hoc calibrators") :].splitlines()
    assert lines[1].split()[:3] == ["method", "accuracy", "ECE"]
    assert [line.split()[0] for line in lines[3:6]] == ["uncalibrated", "temperature", "histogram"]
    saved = json.loads((tmp_path / "calibrators.json").read_text())
    assert [r["method"] for r in saved["methods"]] == ["uncalibrated", "temperature", "histogram"]


@pytest.mark.parametrize("argv, message", [
    (["--calibrators", "bogus"], "--calibrators bogus: unknown method bogus; use all or a comma list of"),
    (["--calibrators", "all", "--split", "val"],
     "--calibrators fits on the validation split and scores on the test split; leave out --split val"),
])  # fmt: skip
def test_bad_calibrators_option_is_one_line(tiny_run: Path, argv: list[str], message: str):
    with pytest.raises(SoftcalError) as err:
        main([str(tiny_run), *argv])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    if argv[1] == "bogus":
        assert str(err.value) == (
            "--calibrators bogus: unknown method bogus; use all or a comma list of temperature, vector,"
            " matrix, histogram, isotonic, top_label_beta, matrix_unregularised"
        )


def _selective_outputs_of(run, logits: torch.Tensor, labels: torch.Tensor, out: Path) -> dict:
    """selective.json of made-up logits: the pairs CalibrationFigures keeps in a pass (the top
    probability, raw and by the run's calibration, and whether its class is the label) built here."""
    calibration = EvaluationContext(run).calibration
    pairs = {}
    for stage in ("raw", "calibrated"):
        confidence, predicted = calibration.probabilities(logits, calibrated=stage == "calibrated").max(dim=1)
        pairs[stage] = Confidences(confidence, predicted == labels)
    about = {"checkpoint": Path("x.ckpt"), "dataset": "MNIST", "split": "test"}
    files, record = selective_outputs(pairs, {"raw": "raw", "calibrated": "calibrated"}, about, out)
    assert files == [out / "selective.json", out / "risk_coverage.png"]
    assert json.loads((out / "selective.json").read_text()) == record
    return record


@pytest.mark.parametrize("case", ["all correct", "all wrong"])
def test_selective_outputs_of_degenerate_predictions(tiny_run: Path, tmp_path: Path, case: str):
    """Every prediction right (or wrong): AURC is 0 (or 1), E-AURC 0, and the misclassification
    AUROC - nothing to separate - is null in selective.json, not a NaN strict JSON cannot hold."""
    labels = torch.arange(40) % 10
    target = labels if case == "all correct" else (labels + 1) % 10
    logits = 8 * torch.nn.functional.one_hot(target, 10).float() + torch.linspace(0, 1, 40)[:, None]
    _selective_outputs_of(load_run(tiny_run), logits, labels, tmp_path)
    text = (tmp_path / "selective.json").read_text()
    assert "NaN" not in text
    saved = json.loads(text)
    for stage in ("raw", "calibrated"):
        risk = 0.0 if case == "all correct" else 1.0
        assert saved[stage]["aurc"] == pytest.approx(risk) and saved[stage]["e_aurc"] == pytest.approx(0.0)
        assert saved[stage]["risk_at_95"] == pytest.approx(risk)
        assert saved[stage]["misclassification_auroc"] is None
    assert (tmp_path / "risk_coverage.png").is_file()


def test_selective_outputs_with_errors_equal_numpy(tiny_run: Path, tmp_path: Path):
    """The tiny run gets every test image right; here logits with ~9% errors and tied
    confidences go through selective_outputs, their pairs made as a pass makes them."""
    generator = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 10, (300,), generator=generator)
    logits = (torch.randn((300, 10), generator=generator)
              + 3 * torch.nn.functional.one_hot(labels, 10)).round(decimals=1)  # fmt: skip
    logits[200:] = logits[100:200]  # tied confidences, right for some rows and wrong for others
    run = load_run(tiny_run)
    _selective_outputs_of(run, logits, labels, tmp_path)
    saved = json.loads((tmp_path / "selective.json").read_text())
    calibration = EvaluationContext(run).calibration
    for stage, t in (("raw", 1.0), ("calibrated", run.calibration.temperature)):
        # The reference ranks the very float32 probabilities the code ranks: rows whose
        # confidences tie in one softmax implementation need not tie in another (numpy's and
        # torch's exp round differently on some CPUs), and ties are what this test is about.
        probs = calibration.probabilities(logits, calibrated=stage == "calibrated").numpy()
        assert np.allclose(probs, np_softmax(logits.numpy(), t), atol=1e-6)  # the run's T, nothing else
        correct = (probs.argmax(axis=1) == labels.numpy()).astype(np.float64)
        assert 0.5 < correct.mean() < 0.95  # errors to rank
        for name, value in np_selective(probs.max(axis=1).astype(np.float64), correct).items():
            assert saved[stage][name] == pytest.approx(value, abs=1e-6), (stage, name)


# ----------------------------------------------------------------------------- seeded logits, no run
# The tiny run gets every test image right (ECE and NLL 0 after calibration), so its table cannot
# tell one calibrator from another. Here compare_calibrators runs on overconfident logits with
# ~25% errors, unequal class frequencies, rows repeated exactly and top logits tied within rows,
# and every row is checked against probabilities built in this file with scipy/numpy/sklearn.


def np_nll_and_grad(scores: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean NLL of softmax(scores) and its gradient with respect to the scores."""
    n = len(labels)
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    nll = float((log_norm - shifted[np.arange(n), labels]).mean())
    grad = np.exp(shifted - log_norm[:, None])
    grad[np.arange(n), labels] -= 1.0
    return nll, grad / n


def sp_temperature(z: np.ndarray, y: np.ndarray) -> float:
    from scipy.optimize import minimize_scalar

    fit = minimize_scalar(lambda log_t: np_nll_and_grad(z / np.exp(log_t), y)[0],
                          bounds=(math.log(1e-2), math.log(1e2)), method="bounded",
                          options={"xatol": 1e-10})  # fmt: skip
    return float(np.exp(fit.x))


def sp_affine(z: np.ndarray, y: np.ndarray, matrix: bool, lambda_od: float = 0.0,
              lambda_b: float = 0.0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(W or w, b) minimising mean NLL + lambda_od/(K(K-1)) sum_{i!=j} W_ij^2 + lambda_b/K sum b^2,
    by scipy BFGS from the identity (not from the code's 1/T start)."""
    from scipy.optimize import minimize

    k = z.shape[1]
    shape = (k, k) if matrix else (k,)
    off = 1.0 - np.eye(k)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-k].reshape(shape), theta[-k:]
        scores = (z @ w.T if matrix else z * w) + b
        loss, g = np_nll_and_grad(scores, y)
        grad_w = g.T @ z if matrix else (g * z).sum(axis=0)
        grad_b = g.sum(axis=0)
        if matrix:
            loss += lambda_od / (k * (k - 1)) * ((w * off) ** 2).sum()
            grad_w = grad_w + 2 * lambda_od / (k * (k - 1)) * w * off
        loss += lambda_b / k * (b**2).sum()
        return loss, np.concatenate([grad_w.ravel(), grad_b + 2 * lambda_b / k * b])

    start = np.concatenate([(np.eye(k) if matrix else np.ones(k)).ravel(), np.zeros(k)])
    fit = minimize(objective, start, jac=True, method="BFGS", options={"gtol": 1e-10, "maxiter": 20000})
    return fit.x[:-k].reshape(shape), fit.x[-k:]


def np_renormalise(mapped: np.ndarray, probs: np.ndarray) -> np.ndarray:
    total = mapped.sum(axis=1, keepdims=True)
    return np.where(total > 0, mapped / np.where(total > 0, total, 1.0), probs)


def np_histogram(p_val: np.ndarray, y: np.ndarray, p_test: np.ndarray, bins: int = BINS) -> np.ndarray:
    """One-vs-rest histogram binning: a bin's value is the fraction of validation rows in it
    labelled k; an empty bin keeps its centre; rows renormalised."""
    mapped = np.empty_like(p_test)
    for k in range(p_val.shape[1]):
        val_bin = np.minimum((p_val[:, k] * bins).astype(np.int64), bins - 1)
        test_bin = np.minimum((p_test[:, k] * bins).astype(np.int64), bins - 1)
        for j in range(bins):
            inside = val_bin == j
            value = (y[inside] == k).mean() if inside.any() else (j + 0.5) / bins
            mapped[test_bin == j, k] = value
    return np_renormalise(mapped, p_test)


def sk_isotonic(p_val: np.ndarray, y: np.ndarray, p_test: np.ndarray) -> np.ndarray:
    from sklearn.isotonic import IsotonicRegression

    mapped = np.stack([
        IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        .fit(p_val[:, k], (y == k).astype(np.float64)).predict(p_test[:, k])
        for k in range(p_val.shape[1])
    ], axis=1)  # fmt: skip
    return np_renormalise(mapped, p_test)


def miscalibrated(n: int, seed: int, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Overconfident float32 logits with errors, exact repeats and within-row ties."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(k, size=n, p=[0.35, 0.25, 0.2, 0.12, 0.08])
    logits = 3.0 * (rng.normal(size=(n, k)) + 1.8 * np.eye(k)[labels]) + np.linspace(0.5, -0.5, k)
    logits = np.round(logits, 1)  # many equal values across rows: ties in every binned quantity
    logits[n // 2 : n // 2 + n // 10] = logits[: n // 10]  # rows repeated exactly, labels may differ
    top = logits.argmax(axis=1)
    for i in range(0, n, 17):  # ties within a row: the runner-up raised to the top logit
        logits[i, (top[i] + 1) % k] = logits[i, top[i]]
    return torch.tensor(logits, dtype=torch.float32), torch.tensor(labels)


def expected_probabilities(val, test, fitted: dict) -> dict[str, np.ndarray]:
    """Every method's test probabilities, computed independently of softcal (the ODIR lambdas
    are the only thing taken from the code: its cross-validated choice)."""
    (zv, yv), (zt, _) = [(x.double().numpy(), y.numpy()) for x, y in (val, test)]
    p_val, p_test = np_softmax(zv), np_softmax(zt)
    w, b = sp_affine(zv, yv, matrix=False)
    expected = {"uncalibrated": np_softmax(zt), "temperature": np_softmax(zt, sp_temperature(zv, yv)),
                "vector": np_softmax(zt * w + b), "histogram": np_histogram(p_val, yv, p_test),
                "isotonic": sk_isotonic(p_val, yv, p_test)}  # fmt: skip
    lambdas = {"matrix": (fitted["matrix"].lambda_od, fitted["matrix"].lambda_b),
               "matrix_unregularised": (0.0, 0.0)}  # fmt: skip
    for method, (lambda_od, lambda_b) in lambdas.items():
        w, b = sp_affine(zv, yv, True, lambda_od, lambda_b)
        expected[method] = np_softmax(zt @ w.T + b)
    expected["top_label_beta"] = np_top_label_beta(zt, *np_top_label_fit(zv, yv))
    return expected


@pytest.mark.slow
def test_compare_calibrators_on_miscalibrated_logits_equals_independent_fits():
    from softcal.calibration.affine_fit import LAMBDA_GRID

    val, test = miscalibrated(400, seed=1), miscalibrated(300, seed=2)
    fitted: dict = {}
    real = calibrator_comparison.make_calibrator

    def keeping(method: str, num_classes: int):
        fitted[method] = real(method, num_classes)
        return fitted[method]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(calibrator_comparison, "make_calibrator", keeping)
        rows = calibrator_comparison.compare_calibrators(ALL_METHODS_FOR_COMPARISON, val, test)
    assert [row.method for row in rows] == ["uncalibrated", *ALL_METHODS_FOR_COMPARISON]
    assert fitted["matrix"].lambda_od in LAMBDA_GRID and fitted["matrix"].lambda_b in LAMBDA_GRID
    expected = expected_probabilities(val, test, fitted)
    labels = test[1].numpy()
    raw = np_metrics(expected["uncalibrated"].astype(np.float32), labels)
    assert 0.6 < raw["acc"] < 0.85 and raw["ece"] > 0.05  # errors, and miscalibrated
    for row in rows:
        probs = expected[row.method]
        if row.method != "uncalibrated":  # the fitted map itself, on the test logits
            with torch.no_grad():
                got = fitted[row.method](test[0]).double().numpy()
            np.testing.assert_allclose(got, probs, rtol=0, atol=2e-5, err_msg=row.method)
        ours = np_metrics(probs.astype(np.float32), labels)
        for name, value in ours.items():
            assert row.metrics[name] == pytest.approx(value, abs=1e-5), (row.method, name)
        # The reliability diagram's bins: counts and sums of the top label, per bin.
        confidence = probs.max(axis=1)
        index = np.minimum((confidence * BINS).astype(np.int64), BINS - 1)
        correct = (probs.argmax(axis=1) == labels).astype(np.float64)
        np.testing.assert_array_equal(row.bins["count"].numpy(), np.bincount(index, minlength=BINS))
        for key, values in (("confidence_sum", confidence), ("correct_sum", correct)):
            want = np.bincount(index, weights=values, minlength=BINS)
            np.testing.assert_allclose(row.bins[key].double().numpy(), want, atol=1e-4, err_msg=key)
